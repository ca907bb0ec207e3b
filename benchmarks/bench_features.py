"""Images streamed from disk: `dchml features` against a plain torchvision ImageFolder + DataLoader
+ model loop, and peak memory against the number of images.

1. Throughput: `extract_features` (AlexNet, random weights, 224 x 224, dchml's loader) over
   --images generated 256 x 256 JPEGs, against torchvision's ImageFolder with Resize((224, 224)),
   ToTensor, Normalize, a DataLoader with the same workers and batch size, and torchvision's
   AlexNet (fc8 removed) in eval mode. The dchml time includes writing the .npz.
2. Peak RSS of `extract_features` for each --rss-images count (same settings).
3. Peak RSS of one epoch of end-to-end training (AlexNet on streamed images, --train-items
   training pairs, evaluation encoding every image) for each --rss-images count.

Each case runs in a fresh process, timed from loading the data to the last feature (model
construction included, for both pipelines). Peak memory is sampled every 50 ms as the sum of the
proportional set size (PSS: shared pages split between the processes sharing them, so forked
workers are not counted twice) of the process and its DataLoader workers, and as the footprint
(the process's RSS plus its workers' private pages: unlike PSS, it does not move when other jobs
on the machine load or unload the same libraries; see PeakMemory), next to the main process's own
peak RSS (ru_maxrss). The throughput runs alternate the two pipelines (each first in turn, after the
generated JPEGs are synced to disk and read once), and the summary prints the median images/s of
each and their ratio, and the main process's CPU seconds (less moved by other jobs on a shared
machine than the wall time). Results: rows appended to <out>/features_cpu.csv and a
Markdown table on stdout; <out> is a new folder under ./bench_out/ unless --out DIR is given, and
benchmarks/results/ only with --record.
Usage: PYTHONPATH=. python benchmarks/bench_features.py [--images 2000] [--rss-images 1000 4000] [--record]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import Provenance, add_output_options, append_rows, git_commit, output_folder  # noqa: E402


# --- data -------------------------------------------------------------------------------------------


def make_images(root: Path, n: int, size: int = 256, classes: int = 10) -> list[Path]:
    """n JPEGs in ImageFolder layout (root/class_k/img_i.jpg): smooth colour patterns plus noise,
    so that they decode like photos rather than like flat colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    paths = []
    for i in range(n):
        k = i % classes
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.01, 0.08, 3)
        img = np.stack([127 + 100 * np.sin(f[c] * (xx + (c + 1) * yy) + i) for c in range(3)], -1)
        img += rng.normal(0, 12, img.shape)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def make_textlist(folder: Path, paths, classes: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images.txt").write_text("\n".join(str(p) for p in paths) + "\n")
    labels = np.eye(classes, dtype=np.uint8)[[i % classes for i in range(len(paths))]]
    np.savetxt(folder / "labels.txt", labels, fmt="%d")
    words = ["cat", "dog", "sea", "sky", "tree", "car", "bird", "road", "snow", "city"]
    # Few distinct words: the text rows (dense n x d float32 by design) stay small, so the memory
    # measured is the image path's.
    (folder / "captions.txt").write_text("\n".join(f"a photo of a {words[i % classes]}!" for i in range(len(paths)))
                                         + "\n")
    return folder


# --- memory sampling --------------------------------------------------------------------------------


def _memory_kb(pid: int) -> dict:
    """Rss, Pss and Private (= Private_Clean + Private_Dirty) of a process, in kB (0 if gone)."""
    out = {"Rss": 0, "Pss": 0, "Private": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key] = int(rest.split()[0])
                elif key.startswith("Private_"):
                    out["Private"] += int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


class PeakMemory:
    """Samples, every 50 ms, the memory of this process and its descendants (DataLoader workers):
    - peak_total: the summed PSS (shared pages split between the processes sharing them). On a
      machine where other jobs load the same libraries (torch, ...), the split changes as they
      start and stop, so this one moves with the machine's other work;
    - peak_footprint: this process's RSS plus its descendants' private pages, independent of
      other processes (the workers' pages shared with this process are counted once, here)."""

    def __init__(self):
        self.peak_total = self.peak_footprint = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            pids, todo = [], [me]
            while todo:
                p = todo.pop()
                pids.append(p)
                todo += _children(p)
            memory = {p: _memory_kb(p) for p in pids}
            self.peak_total = max(self.peak_total, sum(m["Pss"] for m in memory.values()))
            footprint = memory[me]["Rss"] + sum(m["Private"] for p, m in memory.items() if p != me)
            self.peak_footprint = max(self.peak_footprint, footprint)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --- the cases (each in its own process) ------------------------------------------------------------


def case_dchml_features(args) -> dict:
    from dchml.data import load_dataset
    from dchml.method.features import extract_features

    t0 = time.perf_counter()
    data = load_dataset(args.folder, image_size=224, image_workers=args.workers)
    out = Path(args.tmp) / f"features_{os.getpid()}.npz"
    extract_features(data, out, image_weights="random", batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    out.unlink()
    return {"seconds": seconds, "n": data.n}


def case_imagefolder_loop(args) -> dict:
    import torch
    import torchvision
    from torchvision import transforms

    t0 = time.perf_counter()
    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dataset = torchvision.datasets.ImageFolder(args.folder, transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    torch.manual_seed(0)
    model = torchvision.models.alexnet()
    model.classifier = model.classifier[:-1]
    model.eval()
    parts = []
    with torch.inference_mode():
        for x, _ in loader:
            parts.append(model(x).numpy())
    features = np.concatenate(parts)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "n": int(features.shape[0])}


def case_train(args) -> dict:
    from dchml.data import load_dataset
    from dchml.train import TrainConfig, train

    n = sum(1 for _ in open(Path(args.folder) / "images.txt"))
    data = load_dataset(args.folder, image_size=224, image_workers=args.workers, n_query=min(100, n // 4),
                        n_train=args.train_items)
    cfg = TrainConfig(epochs=1, bits=16, batch_size=args.batch_size, image_size=224, image_weights="random",
                      proxy_steps=100, topk=100, lr=0.001)
    t0 = time.perf_counter()
    result = train(data, cfg, progress=False, log=None)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "n": data.n, "i2t_map": result.history[-1]["i2t_map"]}


CASES = {"dchml_features": case_dchml_features, "imagefolder_loop": case_imagefolder_loop, "train": case_train}


def run_child(args):
    import torch

    torch.set_num_threads(args.threads)
    if args.case == "imagefolder_loop":  # imported before the clocks, as dchml is
        import torchvision  # noqa: F401
    else:
        import dchml.data  # noqa: F401
        import dchml.method.features  # noqa: F401
    before = resource.getrusage(resource.RUSAGE_SELF)
    with PeakMemory() as sampler:
        result = CASES[args.case](args)
    after, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds: less moved by other jobs on the machine than the wall time (workers: those
    # the loader has joined by then, i.e. all of them)
    result["cpu_main_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["cpu_workers_s"] = workers.ru_utime + workers.ru_stime
    result["peak_pss_total_mb"] = sampler.peak_total / 1024
    result["peak_footprint_mb"] = sampler.peak_footprint / 1024
    result["peak_rss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def spawn(case: str, folder: Path, args, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--folder", str(folder), "--tmp", str(tmp),
           "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--train-items", str(args.train_items)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"case {case} failed:\n{out.stdout}\n{out.stderr}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"  {case} on {folder.name}: {result}", file=sys.stderr, flush=True)
    return result


# --- driver -----------------------------------------------------------------------------------------


def _device() -> str:
    model = platform.machine()
    try:
        info = open("/proc/cpuinfo").read()
        names = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")]
        model = (names[0] if names else model) + (" with AVX-512" if " avx512f" in info else "")
    except OSError:
        pass
    return f"{os.cpu_count()}-core {model}, CPU only"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=list(CASES))
    ap.add_argument("--folder")
    ap.add_argument("--tmp")
    ap.add_argument("--images", type=int, default=2000, help="images of the throughput comparison")
    ap.add_argument("--rss-images", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process (both pipelines)")
    ap.add_argument("--train-items", type=int, default=256, help="training pairs of the end-to-end epoch")
    ap.add_argument("--repeat", type=int, default=2, help="throughput runs per pipeline (alternating; 0: none)")
    add_output_options(ap)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    if args.case:
        return run_child(args)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    device, commit = _device(), git_commit()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dchml-bench-features-") as tmp:
        tmp = Path(tmp)
        n_max = max([args.images] + args.rss_images)
        t0 = time.perf_counter()
        paths = make_images(tmp / "throughput", args.images)
        extra = make_images(tmp / "extra", n_max - args.images) if n_max > args.images else []
        print(f"generated {n_max} JPEGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        os.sync()  # their write-back would otherwise land in the first timed run
        for path in paths + extra:  # and every run reads them from the page cache
            path.read_bytes()
        everything = paths + extra
        lists = {n: make_textlist(tmp / f"list_{n}", everything[:n]) for n in sorted({args.images, *args.rss_images})}

        def row(bench, provider, n, r):
            rows.append({"benchmark": bench, "provider": provider, "images": n, "workers": args.workers,
                         "batch_size": args.batch_size, "threads": args.threads, "image_size": 224,
                         "seconds": round(r["seconds"], 2), "images_per_s": round(r["n"] / r["seconds"], 1),
                         "peak_pss_total_mb": round(r["peak_pss_total_mb"], 1),
                         "peak_footprint_mb": round(r["peak_footprint_mb"], 1),
                         "peak_rss_main_mb": round(r["peak_rss_main_mb"], 1),
                         "cpu_main_s": round(r["cpu_main_s"], 2), "cpu_workers_s": round(r["cpu_workers_s"], 2),
                         "device": device, "date": date, "commit": commit})

        pipelines = [("dchml features", "dchml_features", lists[args.images]),
                     ("ImageFolder + DataLoader + model", "imagefolder_loop", tmp / "throughput")]
        for i in range(args.repeat):  # alternating, each first in turn: load from other jobs hits both alike
            for provider, case, folder in (pipelines if i % 2 == 0 else pipelines[::-1]):
                row("throughput", provider, args.images, spawn(case, folder, args, tmp))
        for n in args.rss_images:
            row("features peak RSS", "dchml features", n, spawn("dchml_features", lists[n], args, tmp))
        if not args.skip_train:
            for n in args.rss_images:
                row(f"train 1 epoch ({args.train_items} pairs) peak RSS", "dchml train (streamed)", n,
                    spawn("train", lists[n], args, tmp))

    # one results schema for every benchmark (benchmarks/harness.py): a row per metric
    provenance = Provenance(device, note="machine shared with other jobs")
    results = []
    for r in rows:
        case = (f"images={r['images']} workers={r['workers']} batch={r['batch_size']} threads={r['threads']} "
                f"size={r['image_size']}")
        for metric in ("seconds", "images_per_s", "cpu_main_s", "cpu_workers_s", "peak_pss_total_mb",
                       "peak_footprint_mb", "peak_rss_main_mb"):
            if r.get(metric) not in (None, ""):
                results.append(provenance.row("features_" + r["benchmark"], case, r["provider"], metric, r[metric]))
    csv_path = os.path.join(output_folder(args, "bench_features"), "features_cpu.csv")
    append_rows(csv_path, results)
    print(f"wrote {csv_path}")
    print(f"device: {device}; date: {date}; commit: {commit}; workers {args.workers}, batch {args.batch_size}, "
          f"{args.threads} torch thread(s) in the main process")
    print("| benchmark | provider | images | seconds | images/s | CPU s, main / workers | "
          "peak PSS, all processes (MB) | peak footprint (MB) | peak RSS, main (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['provider']} | {r['images']} | {r['seconds']} | {r['images_per_s']} | "
              f"{r['cpu_main_s']} / {r['cpu_workers_s']} | {r['peak_pss_total_mb']} | {r['peak_footprint_mb']} | "
              f"{r['peak_rss_main_mb']} |")
    medians, cpu = {}, {}
    for provider in ("dchml features", "ImageFolder + DataLoader + model"):
        runs = [r for r in rows if r["benchmark"] == "throughput" and r["provider"] == provider]
        if runs:
            medians[provider] = statistics.median(r["images_per_s"] for r in runs)
            cpu[provider] = statistics.median(r["cpu_main_s"] for r in runs)
            print(f"median throughput, {provider}: {medians[provider]:.1f} images/s; "
                  f"median main-process CPU {cpu[provider]:.1f} s")
    if len(medians) == 2:
        dchml_, loop = "dchml features", "ImageFolder + DataLoader + model"
        print(f"ratio dchml / plain loop: {medians[dchml_] / medians[loop]:.2f}x (images/s medians), "
              f"{cpu[loop] / cpu[dchml_]:.2f}x (main-process CPU medians)")
    grown = {n: r for r in rows if r["benchmark"] == "features peak RSS" for n in [r["images"]]}
    if len(grown) >= 2:
        lo, hi = min(grown), max(grown)
        print(f"memory growth {lo} -> {hi} images: " + ", ".join(
            f"{m} {grown[hi][m] - grown[lo][m]:+.1f} MB" for m in ("peak_pss_total_mb", "peak_footprint_mb",
                                                                 "peak_rss_main_mb")))


if __name__ == "__main__":
    main()
