"""Benchmark of the Hamming ranker: MAP@5000 over synthetic label-correlated codes.

W1 (CPU): 5,000 queries x 1,000,000 database codes, 64 bits, 21 labels (1-3 per item):
  (a) dchml.mean_average_precision (fused);
  (b) faiss-cpu IndexBinaryFlat.search(k=5000), best of its heap and counting modes, plus NumPy AP
      over its result;
  (c) the NumPy reference (stable argsort of 0.5 * (k - B Q^T)) on a sample of queries,
      extrapolated to all queries.
Scaling: dchml alone at bits 64/128/256 and databases of 100k/1M/10M (10M with fewer queries).
W2 (--device cuda): 5,000 x 10,000,000 x 64 bits, dchml on the GPU against a plain-PyTorch
  baseline (±1 matrix product in chunks, torch.topk, AP).

Appends rows (benchmarks/harness.py schema: median_s and max_minus_min_s per case and provider)
to <out>/hamming_<device>.csv and writes a summary to <out>/hamming.md; <out> is a new folder
under ./bench_out/ unless --out DIR is given, and benchmarks/results/ only with --record.
Run timings under `flock /work/bench.lock` on shared machines. DCHML_HAMMING_STATS=1 makes the
engine print where its time goes (thread-seconds per phase).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import harness  # noqa: E402

import dchml  # noqa: E402

N_LABELS = 21


def make_data(rng, n, bits, protos):
    """Codes correlated with labels as trained codes are: the first label's prototype code with
    25% of bits flipped; 1-3 labels per item."""
    labels = np.zeros((n, N_LABELS), dtype=np.uint8)
    first = rng.integers(0, N_LABELS, n)
    labels[np.arange(n), first] = 1
    for _ in range(2):
        extra = rng.integers(0, N_LABELS, n)
        use = rng.random(n) < 0.4
        labels[np.arange(n)[use], extra[use]] = 1
    packed = np.empty((n, bits // 8), dtype=np.uint8)
    for s in range(0, n, 1 << 18):
        e = min(n, s + (1 << 18))
        noise = rng.random((e - s, bits)) < 0.25
        packed[s:e] = np.packbits(protos[first[s:e]] ^ noise, axis=1, bitorder="little")
    return packed, labels


def ap_numpy(order, qlab, dlab):
    """AP@K per query from a ranked index matrix (docs/spec.md §7)."""
    out = np.zeros(len(order))
    for i in range(len(order)):
        rel = (dlab[order[i]] @ qlab[i]) > 0
        hits = np.cumsum(rel)
        if hits[-1]:
            out[i] = np.sum(rel * hits / np.arange(1, len(rel) + 1)) / hits[-1]
    return out


def timed(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return result, statistics.median(times), (max(times) - min(times)) if len(times) > 1 else 0.0


def peak_rss_during(fn):
    """(result, extra peak RSS in bytes over the RSS before the call); resets the kernel's
    high-water mark through /proc/self/clear_refs."""
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return fn(), float("nan")
    before = status("VmRSS")
    result = fn()
    return result, status("VmHWM") - before


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{harness.cpu_name()}, {dchml.ops.hamming_isa()}"


class Recorder:
    def __init__(self, device, note=""):
        self.rows = []
        self.prov = harness.Provenance(device_name(device), note)
        self.device = self.prov.device

    def add(self, kernel, provider, shape, median_s, spread, note=""):
        case = f"{kernel} {shape}"
        self.rows += [self.prov.row("hamming", case, provider, "median_s", median_s, note),
                      self.prov.row("hamming", case, provider, "max_minus_min_s", spread, note)]
        print(f"  {kernel:10s} {provider:28s} {shape:28s} {median_s:9.3f} s  (spread {spread:.3f}) {note}", flush=True)

    def write_csv(self, path):
        harness.append_rows(path, self.rows)


def w1(rec, args, lines):
    rng = np.random.default_rng(0)
    bits, ndb, nq, topk = 64, args.ndb, args.nq, 5000
    protos = rng.integers(0, 2, (N_LABELS, bits), dtype=np.uint8)
    db, dlab = make_data(rng, ndb, bits, protos)
    q, qlab = make_data(rng, nq, bits, protos)
    shape = f"{nq}x{ndb}x{bits}b k={topk}"
    print(f"W1 {shape}", flush=True)

    # (a) dchml
    qt, dt_ = torch.from_numpy(q), torch.from_numpy(db)
    # Peak memory of the first call (includes one-off library and thread-pool start-up) and of a
    # warm call (what each evaluation costs).
    (mean_a, ap_a), extra_first = peak_rss_during(
        lambda: dchml.mean_average_precision(qt, dt_, qlab, dlab, topk=topk, return_per_query=True))
    _, extra = peak_rss_during(lambda: dchml.mean_average_precision(qt, dt_, qlab, dlab, topk=topk))
    _, med_a, spr_a = timed(lambda: dchml.mean_average_precision(qt, dt_, qlab, dlab, topk=topk), args.repeat)
    rec.add("map@5000", "dchml", shape, med_a, spr_a, f"MAP={mean_a:.6f}")
    os.environ["DCHML_HAMMING_STATS"] = "1"
    dchml.mean_average_precision(qt, dt_, qlab, dlab, topk=topk)  # prints the phase breakdown
    del os.environ["DCHML_HAMMING_STATS"]
    budget = 2 * db.nbytes + ap_a.numel() * 8
    lines.append(f"- (a) dchml: {med_a:.3f} s median of {args.repeat} (spread {spr_a:.3f} s), MAP {mean_a:.6f}; "
                 f"peak extra RSS {extra / 2**20:.1f} MiB warm, {extra_first / 2**20:.1f} MiB on the first call (budget 2 x packed db + outputs = {budget / 2**20:.1f} MiB)")

    # (b) faiss
    med_b = float("nan")
    try:
        import faiss
        index = faiss.IndexBinaryFlat(bits)
        index.add(db)
        best = None
        for use_heap in (True, False):
            index.use_heap = use_heap
            (fd, fi), t, _ = timed(lambda: index.search(q, topk), 1)
            rec.add("knn@5000", f"faiss IndexBinaryFlat heap={use_heap}", shape, t, 0.0)
            if best is None or t < best[0]:
                best = (t, fi)
        t_ap = time.perf_counter()
        ap_b = ap_numpy(best[1], qlab, dlab)
        t_ap = time.perf_counter() - t_ap
        med_b = best[0] + t_ap
        rec.add("map@5000", "faiss best + numpy AP", shape, med_b, 0.0, f"MAP={ap_b.mean():.6f}")
        lines.append(f"- (b) faiss-cpu IndexBinaryFlat.search(k=5000) best mode {best[0]:.3f} s + NumPy AP "
                     f"{t_ap:.3f} s = {med_b:.3f} s, MAP {ap_b.mean():.6f} (faiss orders ties at the cut its own way); "
                     f"dchml speed-up {med_b / med_a:.1f}x")
    except ImportError:
        lines.append("- (b) faiss-cpu not installed: skipped")

    # (c) NumPy reference on a sample, extrapolated
    sample = np.linspace(0, nq - 1, args.ref_queries).astype(int)
    qpm = 2.0 * np.unpackbits(q[sample], axis=1, bitorder="little").astype(np.float32) - 1
    t = time.perf_counter()
    ap_c = np.zeros(len(sample))
    for s in range(len(sample)):
        dpm_scores = 0.5 * (bits - _pm1_db(db) @ qpm[s])
        order = np.argsort(dpm_scores, kind="stable")[:topk]
        ap_c[s] = ap_numpy(order[None], qlab[sample[s]][None], dlab)[0]
    per_query = (time.perf_counter() - t) / len(sample)
    t_c = per_query * nq
    same = np.abs(ap_c - ap_a.numpy()[sample]).max()
    rec.add("map@5000", "numpy stable argsort (extrap.)", shape, t_c, 0.0,
            f"{len(sample)} queries, {per_query * 1e3:.1f} ms/query")
    lines.append(f"- (c) NumPy stable-argsort reference: {per_query * 1e3:.1f} ms/query on {len(sample)} queries, "
                 f"extrapolated {t_c:.1f} s; max |AP(a) - AP(c)| on those queries = {same:.2e}; "
                 f"dchml speed-up {t_c / med_a:.0f}x")


_PM1 = {}


def _pm1_db(db):
    key = id(db)
    if key not in _PM1:
        _PM1.clear()
        _PM1[key] = 2.0 * np.unpackbits(db, axis=1, bitorder="little").astype(np.float32) - 1
    return _PM1[key]


def scaling(rec, args, lines):
    print("scaling", flush=True)
    lines.append("")
    lines.append("| bits | database | queries | dchml MAP@5000 s (median) | per query ms |")
    lines.append("|---|---|---|---|---|")
    for bits in (64, 128, 256):
        for ndb in (100_000, 1_000_000, 10_000_000):
            if args.quick and ndb > 1_000_000:
                continue
            nq = 500 if ndb == 10_000_000 else 1000
            rng = np.random.default_rng(bits + ndb)
            protos = rng.integers(0, 2, (N_LABELS, bits), dtype=np.uint8)
            db, dlab = make_data(rng, ndb, bits, protos)
            q, qlab = make_data(rng, nq, bits, protos)
            qt, dt_ = torch.from_numpy(q), torch.from_numpy(db)
            _, med, spr = timed(lambda: dchml.mean_average_precision(qt, dt_, qlab, dlab, topk=5000),
                                1 if ndb == 10_000_000 else args.repeat)
            rec.add("map@5000", "dchml", f"{nq}x{ndb}x{bits}b k=5000", med, spr)
            lines.append(f"| {bits} | {ndb:,} | {nq} | {med:.3f} | {med / nq * 1e3:.3f} |")
            del db, dlab, dt_


def w2(rec, args, lines):
    bits, ndb, nq, topk = 64, args.ndb, args.nq, 5000
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 2, (N_LABELS, bits), dtype=np.uint8)
    db, dlab = make_data(rng, ndb, bits, protos)
    q, qlab = make_data(rng, nq, bits, protos)
    shape = f"{nq}x{ndb}x{bits}b k={topk}"
    qt, dt_ = torch.from_numpy(q).cuda(), torch.from_numpy(db).cuda()
    qlt, dlt = torch.from_numpy(qlab).cuda(), torch.from_numpy(dlab).cuda()

    def run_dchml():
        m = dchml.mean_average_precision(qt, dt_, qlt, dlt, topk=topk)
        torch.cuda.synchronize()
        return m

    run_dchml()
    m_a, med_a, spr_a = timed(run_dchml, args.repeat)
    rec.add("map@5000", "dchml cuda", shape, med_a, spr_a, f"MAP={m_a:.6f}")

    dpm = (dchml.unpack_codes(dt_, bits)).half()
    qpm = (dchml.unpack_codes(qt, bits)).half()
    qlf, dlf = qlt.half(), dlt.half()

    def baseline():
        aps = []
        for s in range(0, nq, 500):
            inner = qpm[s:s + 500] @ dpm.T  # (500, ndb): larger inner product = smaller distance
            top = torch.topk(inner.float(), topk, dim=1).indices
            rel = ((qlf[s:s + 500, None, :] * dlf[top]).sum(-1) > 0).double()
            hits = rel.cumsum(1)
            ranks = torch.arange(1, topk + 1, device="cuda", dtype=torch.float64)
            tot = rel.sum(1)
            aps.append(torch.where(tot > 0, (rel * hits / ranks).sum(1) / tot.clamp_min(1), 0.0))
        torch.cuda.synchronize()
        return float(torch.cat(aps).mean())

    baseline()
    m_b, med_b, spr_b = timed(baseline, args.repeat)
    rec.add("map@5000", "pytorch matmul+topk", shape, med_b, spr_b, f"MAP={m_b:.6f} (unstable ties)")
    lines.append(f"- W2 {shape} on {rec.device}: dchml {med_a * 1e3:.1f} ms (MAP {m_a:.6f}), plain PyTorch "
                 f"{med_b * 1e3:.1f} ms (MAP {m_b:.6f}); speed-up {med_b / med_a:.1f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--nq", type=int, default=5000)
    p.add_argument("--ndb", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ref-queries", type=int, default=20, help="queries timed for the NumPy reference")
    p.add_argument("--quick", action="store_true", help="skip the 10M-code scaling runs")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--note", default="", help="stored with every row (e.g. what else ran on the machine)")
    harness.add_output_options(p)
    args = p.parse_args()
    out = harness.output_folder(args, "bench_hamming")
    rec = Recorder(args.device, args.note)
    lines = [f"## Hamming ranker benchmark ({args.device})", "", rec.prov.markdown_header(),
             f"torch {torch.__version__}; OpenMP threads {torch.get_num_threads()}.", ""]
    if args.device == "cuda":
        if not (torch.cuda.is_available() and dchml.cuda_built()):
            sys.exit("--device cuda needs a GPU and a CUDA build of dchml")
        args.ndb = args.ndb or 10_000_000
        w2(rec, args, lines)
    else:
        args.ndb = args.ndb or 1_000_000
        w1(rec, args, lines)
        if not args.no_scaling:
            scaling(rec, args, lines)
    rec.write_csv(os.path.join(out, f"hamming_{args.device}.csv"))
    md = os.path.join(out, "hamming.md" if args.device == "cpu" else "hamming_cuda.md")
    harness.atomic_write(md, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
