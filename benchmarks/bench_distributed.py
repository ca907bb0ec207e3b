"""Benchmark of dchml.distributed: the ranker's W1 (MAP@5000, 5,000 queries x 1,000,000 codes,
64 bits) sharded over N Gloo processes on this machine, against one process.

Fairness on a machine with C cores: every configuration uses all C cores, as processes x threads
per process (OMP_NUM_THREADS and torch.set_num_threads, set in each fresh process before torch
loads). Configurations:
  single     dchml.mean_average_precision, 1 process x C threads (the baseline)
  dist-1     dchml.distributed with a 1-process group, C threads (the protocol's own overhead)
  dist-N     dchml.distributed, N processes x C/N threads, the database split evenly
Each configuration runs in fresh processes; the timed region is one full call (all ranks pass a
barrier first; the time is the slowest rank's). We also time the parts of a distributed call on
their own: the local top-K ranking of a shard and the collectives at the same sizes. Every
configuration's per-query AP must equal the single-process one exactly, or the run fails.

Data: the ranker's W1 generator, imported from benchmarks/bench_hamming.py (not copied), so both
benchmarks measure the same codes.

  flock /work/bench.lock python benchmarks/bench_distributed.py --record   # W1, into benchmarks/results/
  python benchmarks/bench_distributed.py --queries 500 --db 100000 --no-write   # quick look, print only
Results go to a new folder under ./bench_out/ unless --out DIR or --record (benchmarks/results/).

--train: Algorithm 1 instead (dchml.distributed.training, the default synthetic set), one process x
all cores against N processes x cores/N: seconds per epoch (median over the epochs that do not
evaluate) and how far the N-process run ends from the one-process run.
  flock /work/bench.lock python benchmarks/bench_distributed.py --train --epochs 4 --record
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import harness  # noqa: E402

DEVICE = f"{harness.cpu_name()}, no GPU"


# --- the parent: data, configurations, results ---------------------------------------------------


def make_data(args, folder: str) -> None:
    """W1 data from the ranker's generator, packed, saved as .npy for the workers to slice."""
    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    from bench_hamming import N_LABELS, make_data  # the ranker's W1 generator, not a copy

    # The ranker's W1 recipe (bench_hamming.w1): one generator seeded 0, label prototypes, then the
    # database and the queries drawn from it in that order; so with the defaults the codes are W1's.
    rng = np.random.default_rng(args.seed)
    protos = rng.integers(0, 2, (N_LABELS, args.bits), dtype=np.uint8)
    db, dbl = make_data(rng, args.db, args.bits, protos)
    q, ql = make_data(rng, args.queries, args.bits, protos)
    for name, array in (("q", q), ("db", db), ("ql", ql), ("dbl", dbl)):
        np.save(os.path.join(folder, f"{name}.npy"), array)


def launch(config: str, world: int, threads: int, args, folder: str) -> dict:
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=120))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", config, "--rank", str(r),
             "--world", str(world), "--threads", str(threads), "--store-port", str(store.port),
             "--data", folder, "--repeats", str(args.repeats), "--topk", str(args.topk),
             "--ties", args.ties],
            env=env, cwd=ROOT)
        for r in range(world)
    ]
    codes = [p.wait(timeout=3600) for p in procs]
    if any(codes):
        sys.exit(f"{config}: a worker failed (exit codes {codes})")
    with open(os.path.join(folder, f"{config}.json")) as f:
        return json.load(f)


def report(rows: list[dict], args, command: str, write: bool) -> None:
    prov = harness.Provenance(DEVICE)
    date, commit = prov.date, prov.commit
    shape = f"{args.queries}x{args.db}x{args.bits}"
    base = next(r for r in rows if r["config"] == "single")["median_s"]
    lines = [
        "# dchml.distributed: W1 sharded over Gloo processes",
        "",
        f"MAP@{args.topk} (ties={args.ties}), {args.queries} queries x {args.db} codes x {args.bits} bits; "
        f"device: {DEVICE}; date {date}; commit {commit}.",
        f"Command: `{command}`",
        "",
        "| configuration | processes x threads | median s | min-max s | vs single | local top-K s | collectives s | peak RSS / process MiB | MAP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    csv_rows = []
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['world']} x {r['threads']} | {r['median_s']:.3f} | "
            f"{r['min_s']:.3f}-{r['max_s']:.3f} | {base / r['median_s']:.2f}x | "
            f"{r.get('local_topk_s', float('nan')):.3f} | {r.get('comm_s', float('nan')):.4f} | "
            f"{r['peak_rss_mib']:.0f} | {r['map']:.6f} |")
        case, provider = f"map@{args.topk} {shape}", f"{r['config']} ({r['world']}x{r['threads']})"
        for metric in ("median_s", "min_s", "max_s", "local_topk_s", "comm_s", "peak_rss_mib", "map"):
            csv_rows.append(prov.row("distributed", case, provider, metric, r.get(metric, float("nan"))))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += ["", "Per-query AP of every configuration equals the single-process one exactly (checked in the run).",
              f"Load average at the end of the run (1/5/15 min): {load} (the 2 cores are shared with other jobs; "
              "timed runs hold /work/bench.lock, builds and tests of others do not).",
              f"Communication per query (dist-N): {rows[-1].get('bytes_per_query', 0):.0f} bytes sent by each rank "
              "(histograms all_gather + relevance bits all_reduce, Gloo ring)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        out_dir = harness.output_folder(args, "bench_distributed")
        harness.atomic_write(os.path.join(out_dir, "distributed.md"), text)
        harness.append_rows(os.path.join(out_dir, "distributed_cpu.csv"), csv_rows)
        print(f"wrote {out_dir}")


def parent(args) -> None:
    cores = args.cores or os.cpu_count() or 1
    command = "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="dchml-bench-dist-") as folder:
        t = time.perf_counter()
        make_data(args, folder)
        print(f"data: {time.perf_counter() - t:.1f} s", flush=True)
        configs = [("single", 1, cores), ("dist-1", 1, cores)]
        for n in args.procs:
            configs.append((f"dist-{n}", n, max(1, cores // n)))
        rows = []
        for name, world, threads in configs:
            print(f"running {name}: {world} process(es) x {threads} thread(s)", flush=True)
            rows.append(launch(name, world, threads, args, folder))
            print(json.dumps(rows[-1]), flush=True)
        ref = np.load(os.path.join(folder, "ap-single.npy"))
        for name, _, _ in configs[1:]:
            ap = np.load(os.path.join(folder, f"ap-{name}.npy"))
            if not np.array_equal(ap, ref):
                sys.exit(f"{name}: per-query AP differs from the single process "
                         f"(max {np.abs(ap - ref).max():.3e})")
    report(rows, args, command, not args.no_write)


# --- a worker: one process of one configuration --------------------------------------------------


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, ROOT)
    import dchml

    def load(name, rows=None):
        a = np.load(os.path.join(args.data, name), mmap_mode="r", allow_pickle=False)
        return torch.from_numpy(np.array(a if rows is None else a[rows[0]:rows[1]]))  # a copy

    q, ql = load("q.npy"), load("ql.npy")
    n = np.load(os.path.join(args.data, "db.npy"), mmap_mode="r").shape[0]
    bounds = [n * r // args.world for r in range(args.world + 1)]
    mine = (bounds[args.rank], bounds[args.rank + 1])
    db, dbl = load("db.npy", mine), load("dbl.npy", mine)
    topk = args.topk
    out = dict(config=args.worker, world=args.world, threads=args.threads)

    if args.worker == "single":
        def call():
            return dchml.mean_average_precision(q, db, ql, dbl, topk=topk, ties=args.ties,
                                                return_per_query=True)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            m, ap = call()
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        dchml.hamming_topk(q, db, topk)
        out["local_topk_s"] = time.perf_counter() - t
    else:
        import torch.distributed as dist
        import dchml.distributed as dd
        from dchml.distributed.evaluation import BLOCK_ELEMENTS

        store = dist.TCPStore("127.0.0.1", args.store_port, is_master=False,
                              timeout=datetime.timedelta(seconds=120))
        dist.init_process_group("gloo", store=store, rank=args.rank, world_size=args.world)

        def slowest(seconds: float) -> float:
            t = torch.tensor([seconds], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return float(t[0])

        times = []
        for _ in range(args.repeats):
            dist.barrier()
            t = time.perf_counter()
            m, ap = dd.mean_average_precision(q, db, ql, dbl, topk=topk, ties=args.ties,
                                              return_per_query=True)
            times.append(slowest(time.perf_counter() - t))
        # the parts on their own: local ranking of this shard, and collectives of the same sizes
        dist.barrier()
        t = time.perf_counter()
        dchml.hamming_topk(q, db, min(topk, len(db)))
        out["local_topk_s"] = slowest(time.perf_counter() - t)
        width = 8 * q.shape[1] + 1
        block = max(1, BLOCK_ELEMENTS // max(topk, width))
        dist.barrier()
        t = time.perf_counter()
        for lo in range(0, len(q), block):
            nb = min(block, len(q) - lo)
            hist = torch.zeros(nb, width, dtype=torch.int32)  # as dchml.distributed sends them
            dist.all_gather([torch.empty_like(hist) for _ in range(args.world)], hist)
            dist.all_reduce(torch.zeros(nb, (topk + 7) // 8, dtype=torch.uint8))
        out["comm_s"] = slowest(time.perf_counter() - t)
        # bytes each rank sends per query: all_gather ring (W-1 chunks of its own), all_reduce ring
        # (2 (W-1)/W of the buffer)
        w = args.world
        out["bytes_per_query"] = (w - 1) * width * 4 + 2 * (w - 1) / w * ((topk + 7) // 8)
        dist.destroy_process_group()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.rank == 0:
        out.update(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
                   map=float(m), peak_rss_mib=rss)
        np.save(os.path.join(args.data, f"ap-{args.worker}.npy"), ap.numpy())
        with open(os.path.join(args.data, f"{args.worker}.json"), "w") as f:
            json.dump(out, f)


# --- training scaling ------------------------------------------------------------------------------


def train_benchmark(args) -> None:
    import torch

    sys.path.insert(0, ROOT)
    import dchml.distributed.training as dt
    from dchml.data import make_synthetic
    from dchml.train import TrainConfig, evaluate, train

    cores = args.cores or os.cpu_count() or 1
    torch.set_num_threads(cores)
    data = make_synthetic(seed=args.seed)
    command = "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:])
    rows, results = [], {}
    for lr, momentum in ((1e-3, 0.0), (1e-2, 0.9)):  # the paper's SGD, and a faster SGD setting
        cfg = TrainConfig(bits=args.bits, epochs=args.epochs, eval_every=10**6, optimizer="sgd", lr=lr,
                          momentum=momentum, seed=args.seed)
        for nproc in [1] + args.procs + [f"1 (halves x{n})" for n in args.procs]:
            t = time.perf_counter()
            if nproc == 1:
                result = train(data, cfg, progress=False, log=None)
            elif isinstance(nproc, str):  # one process computing each batch in slices as DDP does
                result = _train_in_slices(data, cfg, int(nproc.split("x")[1].rstrip(")")))
            else:
                result = dt.train(data, cfg, nproc=nproc, progress=False, log=None)
            total = time.perf_counter() - t
            epochs = [r["seconds"] for r in result.history[:-1]] or [result.history[-1]["seconds"]]
            results[(lr, nproc)] = result
            ref = results[(lr, 1)]  # the 1-process run of this SGD setting
            sd, sd_ref = result.model.state_dict(), ref.model.state_dict()
            param = max((sd[k].double() - sd_ref[k].double()).abs().max().item() for k in sd)
            stored = max((result.state[k] - ref.state[k]).abs().max().item() for k in ("stored_image", "stored_text"))
            same_c = (result.state["codes_c"] == ref.state["codes_c"]).double().mean().item()
            rows.append(dict(lr=lr, momentum=momentum, nproc=nproc,
                             threads=cores if isinstance(nproc, str) else max(1, cores // nproc),
                             epoch_s=statistics.median(epochs), total_s=total, param=param, stored=stored,
                             same_c=same_c, **{k[:3]: v for k, v in evaluate(result.model, data).items()
                                               if k.endswith("_map")}))
            print(rows[-1], flush=True)
    prov = harness.Provenance(DEVICE)
    date = prov.date
    base = {r["lr"]: r["epoch_s"] for r in rows if r["nproc"] == 1}
    lines = [
        "# dchml.distributed.training: Algorithm 1 on N processes vs one",
        "",
        f"Synthetic set ({data.train_idx.numel()} training pairs, {data.n_labels} labels, {data.image_dim}-d image "
        f"features, {data.text_dim}-d text), {args.bits} bits, batch 128, {args.epochs} epochs; device: {DEVICE}; "
        f"date {date}; commit {prov.commit}.",
        f"Command: `{command}`",
        "",
        "| SGD | processes x threads | s / epoch | speed-up | max param diff | max stored-output diff | C equal | MAP I->T / T->I (last epoch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| lr {r['lr']:g}, momentum {r['momentum']:g} | {r['nproc']} x {r['threads']} | {r['epoch_s']:.2f} | "
                     f"{base[r['lr']] / r['epoch_s']:.2f}x | {r['param']:.1e} | {r['stored']:.1e} | "
                     f"{100 * r['same_c']:.2f}% | {r['i2t']:.4f} / {r['t2i']:.4f} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += ["", "Differences are against the 1-process run of the same row group (0 for itself). "
              "'1 (halves xN)': one process that computes each batch in the N slices the N ranks take and "
              "accumulates their scaled gradients: the arithmetic of the N-process run without any "
              "communication, to tell distribution effects from floating-point ones.",
              f"Load average at the end of the run (1/5/15 min): {load}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        out = harness.output_folder(args, "bench_distributed")
        harness.atomic_write(os.path.join(out, "distributed_train.md"), text)
        print(f"wrote {out}")


def _train_in_slices(data, cfg, slices: int):
    """dchml.train.train with each batch computed in `slices` contiguous slices (gradients of the
    slices accumulated, each weighted by its share of the batch): what the DDP run computes."""
    import dchml.train as single

    class SlicedPasses(single.SingleProcess):
        def run_pass(self, p):
            p.net.train()
            for step, start in enumerate(range(0, p.positions.numel(), p.batch_size)):
                batch = p.positions[start:start + p.batch_size]
                single.set_learning_rate(p.optimizer, p.lr_at(step))
                p.optimizer.zero_grad(set_to_none=True)
                outputs = []
                for pos in batch.tensor_split(slices):
                    if pos.numel():
                        out = p.net(p.inputs[p.rows[pos]].to(p.device))
                        loss, _ = p.loss(out, pos)
                        (loss * (pos.numel() / batch.numel())).backward()
                        outputs.append((pos, out.detach()))
                p.optimizer.step()
                for pos, out in outputs:
                    p.stored_self[pos] = out
            return {"loss": 0.0, "intra": 0.0, "inter": 0.0, "quant": 0.0}

    return single.train(data, cfg, progress=False, log=None, passes=SlicedPasses())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--db", type=int, default=1_000_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--topk", type=int, default=5000)
    p.add_argument("--ties", default="index", choices=("index", "expected"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--procs", type=int, nargs="+", default=[2], help="process counts to run")
    p.add_argument("--cores", type=int, default=0, help="cores to use in total (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; write no results")
    harness.add_output_options(p)
    p.add_argument("--train", action="store_true", help="benchmark multi-process training instead")
    p.add_argument("--epochs", type=int, default=4, help="--train: epochs per run")
    # internal: a worker process
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--store-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
    elif args.train:
        train_benchmark(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
