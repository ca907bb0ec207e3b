"""Benchmark of the fused margin-dynamic-softmax loss (forward + backward) against (a) the eager
PyTorch composite (benchmarks/composite_loss.py: an (n x c) logits matrix and a masked
log-sum-exp, what users write today) and (b) torch.compile of that composite, in one run.

Cases (issue 3): L1 paper scale n=128, c in {21, 80, 255}, k=64; L2 extreme classification
n=4096, c=100000, k=128 (labels: 1-3 positives per row; the fused loss gets them as a CSR tuple,
the composite as the dense (n, c) matrix it needs).

Timing: CPU time.perf_counter around one step (loss + backward), median and spread (min, max)
over --reps steps after warm-up; CUDA: the same with torch.cuda.synchronize around the step.
Memory: CPU peak extra RSS of one step = VmHWM after the step minus VmRSS before it, with the
high-water mark reset first (echo 5 > /proc/self/clear_refs), measured in a fresh process per
provider (after one warm-up step) with glibc's mmap threshold fixed at 128 KiB, so that freed
large buffers leave the RSS and each step's own peak is seen; CUDA:
torch.cuda.max_memory_allocated during the step minus memory allocated before it.

Usage: python benchmarks/bench_loss.py [--device cpu|cuda] [--cases L1,L2] [--out benchmarks/results]
Appends rows to <out>/loss_<device>.csv and writes <out>/loss.md (cpu) or loss_<device>.md (atomic writes).
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import io
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import composite_loss  # noqa: E402
import dchml  # noqa: E402

FIELDS = ["kernel", "provider", "shape", "device", "date", "commit", "median_s", "spread", "peak_extra_bytes", "ratio_vs_eager"]


def proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def fix_malloc_thresholds():
    """Make every large CPU allocation its own mmap, returned to the system when freed. glibc
    otherwise raises its mmap threshold after the first large free, the next steps' tile buffers
    come from the heap and stay resident, and a step's RSS delta reads 0 (seen in an earlier run:
    0.0 MiB for a step that allocates ~80 MiB). Setting M_MMAP_THRESHOLD fixes the threshold."""
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


def measure(step, reps, warmup, device):
    """(median s, min s, max s, peak extra bytes): timed steps back to back, then one step on its
    own for the memory high-water mark (its reset and the gc pass stay out of the timings)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    gc.collect()
    if device.type != "cuda":
        return statistics.median(times), min(times), max(times), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return statistics.median(times), min(times), max(times), peak


def make_steps(n, c, k, device):
    """The three providers' steps (loss + backward) on one case, after checking they agree."""
    codes, proxies, offsets, indices = make_case(n, c, k, device)
    labels = dense_labels(n, c, offsets, indices, device)
    proxies_f = proxies.float()
    x = codes.clone().requires_grad_(True)
    fused_labels = labels if c <= 1000 else (offsets, indices)  # the form a user of that scale holds
    compiled_fn = torch.compile(composite_loss.margin_dynamic_softmax)
    # correctness guard: the benchmark compares equal losses
    a = dchml.margin_dynamic_softmax(codes, proxies, fused_labels).item()
    b = composite_loss.margin_dynamic_softmax(codes, proxies_f, labels).item()
    assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (a, b)
    return x, {
        "dchml_fused": lambda: dchml.margin_dynamic_softmax(x, proxies, fused_labels).backward(),
        "eager_composite": lambda: composite_loss.margin_dynamic_softmax(x, proxies_f, labels).backward(),
        "torch_compile_composite": lambda: compiled_fn(x, proxies_f, labels).backward(),
    }


def cpu_peak_probe(n, c, k, provider):
    """Peak extra RSS of one step, in this (fresh) process: warm-up step, then the measured one."""
    fix_malloc_thresholds()
    _, steps = make_steps(n, c, k, torch.device("cpu"))
    steps[provider]()
    gc.collect()
    reset_peak_rss()
    base = proc_status("VmRSS")
    steps[provider]()
    return proc_status("VmHWM") - base


def cpu_peak(n, c, k, provider):
    # a fresh process per provider, with glibc's thresholds fixed there only: fixing them in the
    # timing process would slow the composite's mid-size allocations (measured: eager at c = 255
    # went from 0.59 to 1.16 ms), and one provider's freed buffers would hide the next one's
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", f"{n},{c},{k},{provider}"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def run_case(name, n, c, k, device, reps, warmup, kernel="mds"):
    x, steps = make_steps(n, c, k, device)
    rows = []
    for provider, step in steps.items():
        med, lo, hi, peak = measure(step, reps, warmup, device)
        rows.append(dict(kernel=kernel, provider=provider, shape=f"{name} n={n} c={c} k={k}", median_s=med,
                         spread=f"{lo:.6g}..{hi:.6g}", peak_extra_bytes=peak, case=(n, c, k)))
        print(f"{name} c={c:>6} {provider:>24}: median {med * 1e3:9.3f} ms  [{lo * 1e3:.3f}, {hi * 1e3:.3f}]"
              + ("" if peak is None else f"  peak extra {peak / 2**20:9.1f} MiB"), flush=True)
        x.grad = None
    eager_s = rows[1]["median_s"]
    for r in rows:
        r["ratio_vs_eager"] = f"{eager_s / r['median_s']:.2f}"
    return rows


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/cpuinfo") as f:
        avx512 = " avx512f" in f.read()
    return f"{model}, {os.cpu_count()} cores{' with AVX-512' if avx512 else ''}, {torch.get_num_threads()} torch threads"


def atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cases", default="L1,L2")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--memory-probe", default="", help=argparse.SUPPRESS)  # internal: "n,c,k,provider"
    args = ap.parse_args()
    if args.memory_probe:
        n, c, k, provider = args.memory_probe.split(",")
        print(cpu_peak_probe(int(n), int(c), int(k), provider))
        return
    device = torch.device(args.device)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip() or "unknown"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    dev_name = describe_device(device)
    rows = []
    cases = args.cases.split(",")
    if "L1" in cases:
        for c in (21, 80, 255):
            rows += run_case("L1", 128, c, 64, device, reps=300 if device.type == "cpu" else 1000, warmup=30)
    if "L2" in cases:
        rows += run_case("L2", 4096, 100_000, 128, device, reps=3 if device.type == "cpu" else 20, warmup=1)
    for r in rows:  # CPU memory last, so that no probe process runs beside a timing
        if r["peak_extra_bytes"] is None:
            r["peak_extra_bytes"] = cpu_peak(*r["case"], r["provider"])
            print(f"{r['shape']} {r['provider']:>24}: peak extra {r['peak_extra_bytes'] / 2**20:9.1f} MiB", flush=True)
        r.update(device=dev_name, date=date, commit=commit)
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, f"loss_{args.device}.csv")
    old = open(csv_path).read() if os.path.exists(csv_path) else ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS)
    if not old:
        w.writeheader()
    for r in rows:
        w.writerow({f: (f"{r[f]:.6g}" if f == "median_s" else r[f]) for f in FIELDS})
    atomic_write(csv_path, old + buf.getvalue())
    md = [f"# Fused loss benchmark ({args.device})", "",
          f"Device: {dev_name}; {platform.python_version()}, torch {torch.__version__}; {date}; commit {commit}.",
          f"Command: `python benchmarks/bench_loss.py --device {args.device} --cases {args.cases}`", "",
          "Forward + backward of the margin-dynamic-softmax loss (reduction mean). Median over repeated steps, "
          "(min..max) in brackets; peak extra memory of one step (" +
          ("peak RSS delta, /proc" if device.type == "cpu" else "torch.cuda.max_memory_allocated delta") + ").", "",
          "| case | provider | median | spread | peak extra | speed-up vs eager |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['shape']} | {r['provider']} | {r['median_s'] * 1e3:.3f} ms | {r['spread']} s | "
                  f"{r['peak_extra_bytes'] / 2**20:.1f} MiB | {r['ratio_vs_eager']}x |")
    md_name = "loss.md" if args.device == "cpu" else f"loss_{args.device}.md"
    atomic_write(os.path.join(args.out, md_name), "\n".join(md) + "\n")
    print(f"wrote {csv_path}")


if __name__ == "__main__":
    main()
