"""Benchmark of the fused margin-dynamic-softmax loss (forward + backward) against (a) the lean
eager PyTorch composite (benchmarks/composite_loss.py: gbar once, one (n x c) logits matrix,
masked_fill, logsumexp) and (b) torch.compile of that composite, in one run.

Cases: L1 paper scale n=128, c in {21, 80, 255}, k=64, for each label dtype of --labels (what the
training loop passes is float32; both providers get the same dense labels); L2 extreme
classification n=4096, c=100000, k=128 (labels: 1-3 positives per row; the fused loss gets them as
a CSR tuple, the composite as the dense bool (n, c) matrix it needs).

Timing: time.perf_counter around one step (loss + backward; CUDA: with torch.cuda.synchronize
around it). The providers of a case are timed in interleaved rounds (A, B, C, A, B, C, ...:
benchmarks/harness.py) and the median of the round medians is reported, with the min and max of
all steps: on a machine shared with other jobs a busy spell then hits every provider alike.
Memory: CPU peak extra RSS of one step = VmHWM after the step minus VmRSS before it, with the
high-water mark reset first (echo 5 > /proc/self/clear_refs), measured in a fresh process per
provider (after one warm-up step) with glibc's mmap threshold fixed at 128 KiB, so that freed
large buffers leave the RSS and each step's own peak is seen; CUDA:
torch.cuda.max_memory_allocated during the step minus memory allocated before it.

Usage: python benchmarks/bench_loss.py [--device cpu|cuda] [--cases L1,L2] [--labels bool,float32]
         [--threads N] [--rounds 7] [--reps 200] [--note "..."] [--out DIR | --record]
--threads 1 keeps every provider on one core: on a machine shared with other jobs, a provider
that forks threads per operation (the eager composite) can wait a scheduler slice per fork.
Appends rows (benchmarks/harness.py schema) to <out>/loss_<device>.csv and writes <out>/loss.md
(cpu) or loss_<device>.md; <out> is a new folder under ./bench_out/ unless --out DIR is given, and
benchmarks/results/ only with --record.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import composite_loss  # noqa: E402
import harness  # noqa: E402

import dchml  # noqa: E402

PROVIDERS = ("dchml_fused", "eager_lean_composite", "torch_compile_composite")


def proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def fix_malloc_thresholds():
    """Make every large CPU allocation its own mmap, returned to the system when freed. glibc
    otherwise raises its mmap threshold after the first large free, the next steps' tile buffers
    come from the heap and stay resident, and a step's RSS delta reads 0 (measured: 0.0 MiB for a
    step that allocates ~80 MiB). Setting M_MMAP_THRESHOLD fixes the threshold."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 17)) and bool(libc.mallopt(m_trim_threshold, 1 << 17))


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_case(n, c, k, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = (torch.rand(n, k, generator=gen) * 2 - 1).to(device)
    proxies = (torch.randint(0, 2, (c, k), generator=gen, dtype=torch.int8) * 2 - 1).to(device)
    counts = torch.randint(1, 4, (n,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    indices = torch.cat([torch.randperm(c, generator=gen)[: int(m)].sort().values for m in counts])
    return codes, proxies, offsets.to(device), indices.to(device)


def dense_labels(n, c, offsets, indices, device):
    labels = torch.zeros(n, c, dtype=torch.bool, device=device)
    rows = torch.repeat_interleave(torch.arange(n, device=device), offsets.diff())
    labels[rows, indices] = True
    return labels


def cuda_peak(step):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def make_steps(n, c, k, label_dtype, device):
    """The three providers' steps (loss + backward) on one case, after checking they agree."""
    codes, proxies, offsets, indices = make_case(n, c, k, device)
    labels = dense_labels(n, c, offsets, indices, device).to(getattr(torch, label_dtype))
    proxies_f = proxies.float()
    x = codes.clone().requires_grad_(True)
    fused_labels = labels if c <= 1000 else (offsets, indices)  # the form a user of that scale holds
    compiled_fn = torch.compile(composite_loss.margin_dynamic_softmax)
    # correctness guard: the benchmark compares equal losses
    a = dchml.margin_dynamic_softmax(codes, proxies, fused_labels).item()
    b = composite_loss.margin_dynamic_softmax(codes, proxies_f, labels).item()
    assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (a, b)
    steps = {
        "dchml_fused": lambda: dchml.margin_dynamic_softmax(x, proxies, fused_labels).backward(),
        "eager_lean_composite": lambda: composite_loss.margin_dynamic_softmax(x, proxies_f, labels).backward(),
        "torch_compile_composite": lambda: compiled_fn(x, proxies_f, labels).backward(),
    }
    return x, steps


def cpu_peak_probe(n, c, k, label_dtype, provider):
    """Peak extra RSS of one step, in this (fresh) process: warm-up step, then the measured one."""
    fix_malloc_thresholds()
    _, steps = make_steps(n, c, k, label_dtype, torch.device("cpu"))
    steps[provider]()
    gc.collect()
    reset_peak_rss()
    base = proc_status("VmRSS")
    steps[provider]()
    return proc_status("VmHWM") - base


def cpu_peak(n, c, k, label_dtype, provider, threads):
    # a fresh process per provider, with glibc's thresholds fixed there only: fixing them in the
    # timing process would slow the composite's mid-size allocations (measured: eager at c = 255
    # went from 0.59 to 1.16 ms), and one provider's freed buffers would hide the next one's
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe",
                          f"{n},{c},{k},{label_dtype},{provider}", "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def run_case(name, n, c, k, label_dtype, device, rounds, reps, warmup):
    x, steps = make_steps(n, c, k, label_dtype, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    timings = harness.interleaved_medians(steps, rounds, reps, warmup, sync)
    eager_s = timings["eager_lean_composite"]["median_s"]
    results = []
    for provider, t in timings.items():
        peak = cuda_peak(steps[provider]) if device.type == "cuda" else None
        x.grad = None
        results.append(dict(case=f"mds {name} n={n} c={c} k={k} labels={label_dtype}", provider=provider,
                            shape=(n, c, k, label_dtype), speedup=eager_s / t["median_s"], peak=peak, **t))
        print(f"{name} c={c:>6} {label_dtype:>8} {provider:>24}: median {t['median_s'] * 1e3:9.3f} ms "
              f"[{t['min_s'] * 1e3:.3f}, {t['max_s'] * 1e3:.3f}]  {eager_s / t['median_s']:.2f}x", flush=True)
    return results


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{harness.cpu_name()}, {torch.get_num_threads()} torch threads"


def steps_per_round(args):
    """What --reps meant for the cases run (0: each case's default)."""
    if args.reps:
        return str(args.reps)
    cpu = args.device == "cpu"
    return f"{200 if cpu else 500} (L1) / {1 if cpu else 10} (L2, at most 3 rounds on the CPU)"


def write_results(results, args, prov):
    rows = []
    for r in results:
        for metric, value in (("median_s", r["median_s"]), ("min_s", r["min_s"]), ("max_s", r["max_s"]),
                              ("peak_extra_bytes", r["peak"]), ("speedup_vs_eager", r["speedup"])):
            rows.append(prov.row("loss", r["case"], r["provider"], metric, value))
    harness.append_rows(os.path.join(args.out, f"loss_{args.device}.csv"), rows)
    md = [f"# Fused loss benchmark ({args.device})", "", prov.markdown_header(), "",
          "Forward + backward of the margin-dynamic-softmax loss (reduction mean). Providers timed in "
          f"{args.rounds} interleaved rounds of {steps_per_round(args)} steps: median of the round medians, "
          "(min..max) of all steps; peak extra memory of one step (" +
          ("peak RSS delta, /proc" if args.device == "cpu" else "torch.cuda.max_memory_allocated delta") +
          "). Eager: the lean composite of benchmarks/composite_loss.py.", "",
          "| case | provider | median | min..max | peak extra | speed-up vs eager |", "|---|---|---|---|---|---|"]
    for r in results:
        md.append(f"| {r['case']} | {r['provider']} | {r['median_s'] * 1e3:.3f} ms | "
                  f"{r['min_s'] * 1e3:.3f}..{r['max_s'] * 1e3:.3f} ms | {r['peak'] / 2**20:.1f} MiB | "
                  f"{r['speedup']:.2f}x |")
    md_name = "loss.md" if args.device == "cpu" else f"loss_{args.device}.md"
    harness.atomic_write(os.path.join(args.out, md_name), "\n".join(md) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cases", default="L1,L2")
    ap.add_argument("--labels", default="bool,uint8,float32,int64", help="label dtypes of the L1 cases")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case")
    ap.add_argument("--reps", type=int, default=0, help="steps per provider and round (default: by case)")
    ap.add_argument("--note", default="", help="stored with every row (e.g. what else ran on the machine)")
    harness.add_output_options(ap)
    ap.add_argument("--memory-probe", default="", help=argparse.SUPPRESS)  # internal: "n,c,k,labels,provider"
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        n, c, k, label_dtype, provider = args.memory_probe.split(",")
        print(cpu_peak_probe(int(n), int(c), int(k), label_dtype, provider))
        return
    args.out = harness.output_folder(args, "bench_loss")
    device = torch.device(args.device)
    prov = harness.Provenance(describe_device(device), args.note)
    results = []
    cases = args.cases.split(",")
    cpu = device.type == "cpu"
    if "L1" in cases:
        for c in (21, 80, 255):
            for label_dtype in args.labels.split(","):
                results += run_case("L1", 128, c, 64, label_dtype, device, args.rounds,
                                    args.reps or (200 if cpu else 500), warmup=30)
    if "L2" in cases:
        results += run_case("L2", 4096, 100_000, 128, "bool", device, min(args.rounds, 3) if cpu else args.rounds,
                            args.reps or (1 if cpu else 10), warmup=1)
    for r in results:  # CPU memory last, so that no probe process runs beside a timing
        if r["peak"] is None:
            r["peak"] = cpu_peak(*r["shape"], r["provider"], torch.get_num_threads())
            print(f"{r['case']} {r['provider']:>24}: peak extra {r['peak'] / 2**20:9.1f} MiB", flush=True)
    write_results(results, args, prov)
    print(f"wrote {os.path.join(args.out, f'loss_{args.device}.csv')}")


if __name__ == "__main__":
    main()
