"""How hard is the synthetic set? MAP@5000 (docs/spec.md §7) of simple reference hashers on
dchml.data.make_synthetic, so the set can be tuned to leave room between methods and code lengths.

  random   : sign of a random projection of each modality (unsupervised; cross-modal codes from
             unrelated projections, so I->T / T->I sit at chance)
  linear   : ridge regression of each modality onto label-informed target codes
             sign(labels @ G) with G random ±1 proxies (a linear "supervised hashing" baseline)
  mlp      : (--mlp) a one-hidden-layer MLP per modality (1024 ReLU units, dropout 0.3, tanh
             outputs, MSE to the same target codes, Adam 1e-3, 30 epochs): a nonlinear baseline
  oracle   : the target codes themselves (what a perfect regression onto them would give)
  chance   : mean fraction of relevant items in the database

Usage: PYTHONPATH=. python benchmarks/synthetic_difficulty.py [--bits 16 32 64] [--seed 0] [--mlp]
MAP here is a small float64 NumPy reference (stable argsort: ties by database index), used only
by this script; the library's metrics live in dchml.retrieval.metrics.
"""
import argparse
import time

import numpy as np
import torch

from dchml.data import make_synthetic


def map_at_k(qb, db, ql, dl, topk=5000):
    aps = []
    for i in range(len(qb)):
        dist = 0.5 * (qb.shape[1] - db @ qb[i])
        order = np.argsort(dist, kind="stable")[:topk]
        rel = (dl[order] @ ql[i] > 0).astype(np.float64)
        nk = rel.sum()
        aps.append(0.0 if nk == 0 else float((np.cumsum(rel) / np.arange(1, len(rel) + 1) * rel).sum() / nk))
    return float(np.mean(aps))


def sgn(x):
    return np.where(x > 0, 1.0, -1.0)


def ridge_codes(x_tr, target, x_all, lam=1.0):
    mu = x_tr.mean(0)
    a = x_tr - mu
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ target)
    return sgn((x_all - mu) @ w)


def mlp_codes(x_tr, target, x_all, seed, epochs=30):
    torch.manual_seed(seed)
    x_tr, target, x_all = (torch.as_tensor(a, dtype=torch.float32) for a in (x_tr, target, x_all))
    net = torch.nn.Sequential(torch.nn.Linear(x_tr.shape[1], 1024), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(1024, target.shape[1]), torch.nn.Tanh())
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for b in torch.randperm(len(x_tr)).split(128):
            loss = ((net(x_tr[b]) - target[b]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return sgn(net(x_all).double().numpy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mlp", action="store_true", help="also train the MLP baseline (about 30 s per code length)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    d = make_synthetic(seed=args.seed)
    print(f"{d}  (generated in {time.perf_counter() - t0:.1f} s)")
    img, txt, lab = (t.double().numpy() for t in (d.image, d.text, d.labels))
    q, r, tr = d.query_idx.numpy(), d.retrieval_idx.numpy(), d.train_idx.numpy()
    chance = float((lab[q] @ lab[r].T > 0).mean())
    print(f"chance (fraction of relevant database items): {chance:.3f}")
    rng = np.random.default_rng(123)
    print("| hasher | bits | I->T | T->I | I->I | T->T |")
    print("|---|---|---|---|---|---|")
    for bits in args.bits:
        g = sgn(rng.standard_normal((d.n_labels, bits)))
        target = sgn(lab @ g + 1e-3 * rng.standard_normal((d.n, bits)))
        codes = {
            "random": (sgn(img @ rng.standard_normal((img.shape[1], bits))),
                       sgn((txt - txt[tr].mean(0)) @ rng.standard_normal((txt.shape[1], bits)))),
            "linear": (ridge_codes(img[tr], target[tr], img), ridge_codes(txt[tr], target[tr], txt)),
        }
        if args.mlp:
            codes["mlp"] = (mlp_codes(img[tr], target[tr], img, 0), mlp_codes(txt[tr], target[tr], txt, 1))
        codes["oracle"] = (target, target)
        for name, (bi, bt) in codes.items():
            m = [map_at_k(bi[q], bt[r], lab[q], lab[r]), map_at_k(bt[q], bi[r], lab[q], lab[r]),
                 map_at_k(bi[q], bi[r], lab[q], lab[r]), map_at_k(bt[q], bt[r], lab[q], lab[r])]
            print(f"| {name} | {bits} | " + " | ".join(f"{v:.3f}" for v in m) + " |", flush=True)


if __name__ == "__main__":
    main()
