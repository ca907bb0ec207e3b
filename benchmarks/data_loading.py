"""Load time of each dchml.data format for the default synthetic set (12,000 items, 512-d
features, 1000-d BoW, 21 labels): writes it in every format to a temporary folder, then times
load_dataset (median of --repeat runs). Usage: PYTHONPATH=. python benchmarks/data_loading.py"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import scipy.io

from dchml.data import load_dataset, make_synthetic, save_npz


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    d = make_synthetic()
    gen = time.perf_counter() - t0
    a = {k: getattr(d, k).numpy() for k in ("image", "text", "labels")}
    split = {"indexQuery": d.query_idx.numpy() + 1.0, "indexDatabase": d.retrieval_idx.numpy() + 1.0,
             "indexTrain": d.train_idx.numpy() + 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_npz(d, tmp / "d.npz")
        scipy.io.savemat(tmp / "v5.mat", {"IAll": a["image"], "YAll": a["text"], "LAll": a["labels"], "param": split})
        with h5py.File(tmp / "v73.mat", "w", userblock_size=512) as f:  # MATLAB's transposed layout
            for k, v in (("IAll", a["image"]), ("YAll", a["text"]), ("LAll", a["labels"])):
                f.create_dataset(k, data=v.T)
            g = f.create_group("param")
            for k, v in split.items():
                g.create_dataset(k, data=v[None, :])
        txt = tmp / "txt"
        txt.mkdir()
        np.savetxt(txt / "labels.txt", a["labels"], fmt="%d")
        np.savetxt(txt / "texts.txt", a["text"], fmt="%d")
        np.save(txt / "features.npy", a["image"])
        for name, key in (("test_idx.txt", "query_idx"), ("database_idx.txt", "retrieval_idx"), ("train_idx.txt", "train_idx")):
            np.savetxt(txt / name, getattr(d, key).numpy() + 1, fmt="%d")
        print(f"make_synthetic(): {gen:.2f} s")
        print("| format | file size (MB) | load_dataset median (s) |")
        print("|---|---|---|")
        for label, path in (("npz (compressed)", tmp / "d.npz"), ("MATLAB v5", tmp / "v5.mat"),
                            ("MATLAB v7.3 (HDF5)", tmp / "v73.mat"), ("text list + features.npy", txt)):
            size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                e = load_dataset(str(path))
                times.append(time.perf_counter() - t0)
                assert e.n == d.n
            print(f"| {label} | {size / 1e6:.1f} | {statistics.median(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
