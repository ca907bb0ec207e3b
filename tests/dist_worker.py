"""One rank of the Gloo process group that tests/test_distributed.py launches on 127.0.0.1.

The test process owns the rendezvous store (a TCPStore on a free port it chose); each worker
connects to it, runs every case of `cases(world)` and every bad-input scenario through
dchml.distributed, and saves what it got (tensors and error messages) to <out>/rank<r>.pt. The
test process compares those against the single-process results; nothing is judged here.

Also the shared test data: `make_data` and `cases` are imported by the test module.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

import torch

N_DB = 257          # global database size: odd, so shards are uneven
N_QUERY = 23
N_CLASSES = 5
BITS = (8, 13, 16, 64)  # 8/13/16: heavy ties (9/14/17 distinct distances); 64: light ties
TOPKS = (1, 100, None)
TIES = ("index", "expected")
# Shard sizes in rank order: uneven, and an EMPTY shard first, in the middle and last.
SHARDINGS = {2: ((100, 157), (257, 0)), 3: ((120, 0, 137), (0, 200, 57))}
TOPK_KS = (1, 100, N_DB)


def make_data(bits: int, seed: int = 0):
    """Queries and database with labels; codes correlated with labels (as trained codes are) so
    that AP is far from trivial, and a few queries without any label (AP 0 by definition)."""
    g = torch.Generator().manual_seed(1000 * bits + seed)
    n = N_QUERY + N_DB
    labels = (torch.rand(n, N_CLASSES, generator=g) < 0.3).to(torch.int64)
    labels[:3] = 0  # the first queries have no label: nothing is relevant to them
    centres = torch.randn(N_CLASSES, bits, generator=g)
    real = labels.to(torch.float32) @ centres + 1.2 * torch.randn(n, bits, generator=g)
    codes = torch.where(real > 0, 1.0, -1.0)
    return codes[:N_QUERY], codes[N_QUERY:], labels[:N_QUERY], labels[N_QUERY:]


def cases(world: int):
    """Every (sharding, bits, topk, ties) checked for this world size, with a readable name."""
    out = []
    for s, sizes in enumerate(SHARDINGS[world]):
        for bits in BITS:
            for topk in TOPKS:
                for ties in TIES:
                    out.append(dict(name=f"w{world}-s{s}-b{bits}-k{topk}-{ties}", sizes=sizes,
                                    bits=bits, topk=topk, ties=ties))
    return out


def shard(x: torch.Tensor, sizes, rank: int) -> torch.Tensor:
    start = sum(sizes[:rank])
    return x[start : start + sizes[rank]]


def as_input(codes: torch.Tensor, bits: int, rank: int):
    """The input forms meet across ranks: 64-bit codes packed (uint8); 8/16-bit codes as ±1
    floats, NumPy on odd ranks; 13-bit codes packed on rank 0 WITH junk in the 3 padding bits
    (the length then comes from the other ranks' unpacked codes, and the junk must be ignored)."""
    import dchml

    if bits == 64:
        return dchml.pack_codes(codes)
    if bits == 13 and rank == 0:  # queries too: equal to the other ranks' up to the junk
        packed = dchml.pack_codes(codes)
        junk = torch.randint(0, 8, (packed.shape[0],), generator=torch.Generator().manual_seed(7))
        packed[:, 1] |= (junk << 5).to(torch.uint8)
        return packed
    return codes.numpy() if rank % 2 else codes


def run_cases(rank: int, world: int) -> dict:
    import dchml.distributed as dd

    results = {}
    for case in cases(world):
        q, db, ql, dbl = make_data(case["bits"])
        sizes = case["sizes"]
        m, ap = dd.mean_average_precision(
            as_input(q, case["bits"], rank), as_input(shard(db, sizes, rank), case["bits"], rank),
            ql, shard(dbl, sizes, rank), topk=case["topk"], ties=case["ties"],
            return_per_query=True)
        results[f"map/{case['name']}"] = torch.tensor([m], dtype=torch.float64)
        results[f"ap/{case['name']}"] = ap
    for s, sizes in enumerate(SHARDINGS[world]):
        for bits in BITS:
            q, db, _, _ = make_data(bits)
            for k in TOPK_KS:
                d, i = dd.hamming_topk(as_input(q, bits, rank), as_input(shard(db, sizes, rank), bits, rank), k)
                results[f"topk_d/w{world}-s{s}-b{bits}-k{k}"] = d
                results[f"topk_i/w{world}-s{s}-b{bits}-k{k}"] = i
    return results


def bad_input_scenarios(rank: int, world: int):
    """name -> zero-argument call; each must raise on EVERY rank (never hang)."""
    import dchml.distributed as dd

    q, db, ql, dbl = make_data(16)
    sizes = SHARDINGS[world][0]
    mine, mine_l = shard(db, sizes, rank), shard(dbl, sizes, rank)
    last = world - 1

    def widen(labels):
        return torch.cat([labels, torch.zeros(len(labels), 1, dtype=labels.dtype)], 1)

    return {
        # rank `last` holds 8-bit codes (queries and shard), the others 16-bit ones
        "code_length": lambda: dd.mean_average_precision(
            q[:, :8] if rank == last else q, mine[:, :8] if rank == last else mine, ql, mine_l),
        # on rank `last` only, the queries are shorter than the shard's codes: a local error
        "code_length_local": lambda: dd.hamming_topk(q[:, :8] if rank == last else q, mine, 1),
        # rank `last` has one more label column (queries and shard) than the others
        "label_width": lambda: dd.mean_average_precision(
            q, mine, widen(ql) if rank == last else ql, widen(mine_l) if rank == last else mine_l),
        "topk_zero": lambda: dd.mean_average_precision(q, mine, ql, mine_l, topk=0),
        "ties_unknown": lambda: dd.mean_average_precision(q, mine, ql, mine_l, ties="random"),
        # only rank `last` gets labels that do not match its codes: a local error
        "label_rows_one_rank": lambda: dd.mean_average_precision(
            q, mine, ql, mine_l[:-1] if rank == last else mine_l),
        # rank `last` evaluates other queries than the others
        "queries_differ": lambda: dd.mean_average_precision(
            -q if rank == last else q, mine, ql, mine_l),
        "k_too_large": lambda: dd.hamming_topk(q, mine, N_DB + 1),
        "k_zero": lambda: dd.hamming_topk(q, mine, 0),
    }


def run_bad_inputs(rank: int, world: int) -> dict:
    errors = {}
    for name, call in bad_input_scenarios(rank, world).items():
        try:
            call()
            errors[name] = "no error"
        except Exception as exc:  # noqa: BLE001  (recorded for the test to judge)
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors


# --- multi-process training (Algorithm 1 with DDP) ------------------------------------------------


TRAIN_FLAGS = dict(bits=16, epochs=3, batch_size=32, eval_every=1, topk=100, proxy_steps=200, lr=1e-3,
                   patience=0)


def tiny_training_data():
    from dchml.data import make_synthetic

    return make_synthetic(n=600, n_labels=6, image_dim=32, text_dim=64, n_query=100, n_train=214, seed=1)


def tiny_training_setup(epochs: int = 3):
    """Tiny synthetic data and a config that trains in seconds. 214 training items, 21 of them the
    validation slice: 193 training pairs in batches of 32: the last batch holds ONE pair, so with 2 ranks one rank has an empty slice of it; with 3
    ranks the batches of 32 split unevenly (11/11/10)."""
    from dchml.train import TrainConfig

    return tiny_training_data(), TrainConfig(**dict(TRAIN_FLAGS, epochs=epochs))


def train_cli_flags(epochs: int = 3) -> list:
    """The command-line flags giving tiny_training_setup's config."""
    flags = dict(TRAIN_FLAGS, epochs=epochs)
    return [part for key, value in flags.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def training_summary(result) -> dict:
    """What the tests compare between runs: parameters, stored outputs, C, and the history."""
    keys = ("objective", "loss_image", "loss_text", "val_i2t_map", "val_t2i_map")
    out = {f"param/{k}": v.detach().cpu() for k, v in result.model.state_dict().items()}
    for name in ("stored_image", "stored_text", "codes_c"):
        out[name] = result.state[name].cpu()
    out["history"] = torch.tensor([[float(r[k]) for k in keys] for r in result.history], dtype=torch.float64)
    from dchml.train import evaluate

    scores = evaluate(result.model, tiny_training_data(), topk=TRAIN_FLAGS["topk"])
    out["test_map"] = torch.tensor([scores["i2t_map"], scores["t2i_map"]], dtype=torch.float64)
    out["kept_epoch"] = torch.tensor([int(result.selection.get("kept_epoch", 0)) if result.selection else 0])
    return out


def run_torchrun_training(out_dir: str) -> int:
    """Under torchrun: 1 epoch with a checkpoint, then resume it to the full run (each call joins the
    group torchrun describes); rank 0 saves the summary."""
    import dataclasses

    import dchml.distributed.training as dt

    data, cfg = tiny_training_setup()
    path = os.path.join(out_dir, "torchrun-checkpoint.pt")
    dt.train(data, dataclasses.replace(cfg, epochs=1), checkpoint_path=path, progress=False, log=None)
    result = dt.train(data, cfg, checkpoint_path=path, resume=True, progress=False, log=None)
    if dt.is_main_process():
        summary = training_summary(result)
        summary["world"] = torch.tensor([int(os.environ["WORLD_SIZE"])])
        tmp = os.path.join(out_dir, "torchrun.pt.tmp")
        torch.save(summary, tmp)
        os.replace(tmp, os.path.join(out_dir, "torchrun.pt"))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("eval", "torchrun-train"), default="eval")
    parser.add_argument("--rank", type=int)
    parser.add_argument("--world-size", type=int)
    parser.add_argument("--store-port", type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # several ranks share a small CI machine
    if args.mode == "torchrun-train":
        return run_torchrun_training(args.out)

    import torch.distributed as dist

    timeout = timedelta(seconds=args.timeout)
    store = dist.TCPStore("127.0.0.1", args.store_port, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=args.rank, world_size=args.world_size,
                            timeout=timeout)
    try:
        results = run_cases(args.rank, args.world_size)
        errors = run_bad_inputs(args.rank, args.world_size)
        # the group must still work after all those errors: one last collective
        after = torch.tensor([args.rank])
        dist.all_reduce(after)
        results["after_errors"] = after
    finally:
        dist.destroy_process_group()
    tmp = os.path.join(args.out, f"rank{args.rank}.pt.tmp")
    torch.save({"results": results, "errors": errors}, tmp)
    os.replace(tmp, os.path.join(args.out, f"rank{args.rank}.pt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
