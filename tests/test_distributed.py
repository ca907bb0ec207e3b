"""dchml.distributed against the single-process ranker: 2 and 3 Gloo processes on 127.0.0.1.

Each world size is launched ONCE (module fixture): the test process opens the rendezvous store on
a free port, starts one `tests/dist_worker.py` per rank, and waits with a hard deadline (a hang
fails the test, it never blocks CI). The workers run every case (uneven and empty shards, 8/16/64
bits, topk 1/100/None, ties index/expected) and every bad-input scenario; here each rank's
results are compared with `dchml.mean_average_precision` / `dchml.hamming_topk` on the
concatenated database: EXACTLY equal (same per-query AP bits, same indices and distances).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import dchml
import dchml.distributed as dd

import dist_worker as W

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "dist_worker.py")
INIT_TIMEOUT_S = 30     # rendezvous and each collective
GROUP_TIMEOUT_S = 120   # the whole group, imports included (a hang fails here)
WORLDS = (2, 3)


def _launch(world: int, out_dir) -> list[dict]:
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=INIT_TIMEOUT_S))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # Gloo on the loopback interface only
    logs = [open(os.path.join(out_dir, f"rank{r}.log"), "w+") for r in range(world)]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "--rank", str(r), "--world-size", str(world),
             "--store-port", str(store.port), "--out", str(out_dir),
             "--timeout", str(INIT_TIMEOUT_S)],
            cwd=ROOT, env=env, stdout=logs[r], stderr=subprocess.STDOUT)
        for r in range(world)
    ]
    deadline = time.monotonic() + GROUP_TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        timed_out = [p for p in procs if p.poll() is None]
        for p in timed_out:
            p.kill()
            p.wait()

    def tails():
        text = []
        for r, log in enumerate(logs):
            log.seek(0)
            text.append(f"--- rank {r} (exit {procs[r].returncode}) ---\n{log.read()[-3000:]}")
            log.close()
        return "\n".join(text)

    if timed_out:
        pytest.fail(f"{world} Gloo workers did not finish within {GROUP_TIMEOUT_S} s\n{tails()}")
    if any(p.returncode != 0 for p in procs):
        pytest.fail(f"a worker of the {world}-process group failed\n{tails()}")
    for log in logs:
        log.close()
    # our own files, written by the workers above; weights_only keeps loading safe regardless
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world)]


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"world{w}")
def group_run(request, tmp_path_factory):
    world = request.param
    return world, _launch(world, tmp_path_factory.mktemp(f"gloo{world}"))


def _single_process_map(case):
    q, db, ql, dbl = W.make_data(case["bits"])
    return dchml.mean_average_precision(q, db, ql, dbl, topk=case["topk"], ties=case["ties"],
                                        return_per_query=True)


def test_map_equals_single_process_exactly(group_run):
    world, ranks = group_run
    mismatches = []
    for case in W.cases(world):
        ref_map, ref_ap = _single_process_map(case)
        assert ref_ap.abs().sum() > 0  # the data make AP non-trivial, so equality means something
        for r, out in enumerate(ranks):
            ap = out["results"][f"ap/{case['name']}"]
            got_map = float(out["results"][f"map/{case['name']}"][0])
            if not torch.equal(ap.cpu(), ref_ap.cpu().to(ap.dtype)) or ap.dtype != ref_ap.dtype:
                diff = (ap.double() - ref_ap.double()).abs().max().item()
                mismatches.append(f"{case['name']} rank {r}: per-query AP differs (max {diff:.3e})")
            if got_map != ref_map:
                mismatches.append(f"{case['name']} rank {r}: MAP {got_map!r} != {ref_map!r}")
    assert not mismatches, "\n".join(mismatches)


def test_topk_equals_single_process_exactly(group_run):
    world, ranks = group_run
    mismatches = []
    for s, sizes in enumerate(W.SHARDINGS[world]):
        for bits in W.BITS:
            q, db, _, _ = W.make_data(bits)
            for k in W.TOPK_KS:
                ref_d, ref_i = dchml.hamming_topk(dchml.pack_codes(q), dchml.pack_codes(db), k)
                name = f"w{world}-s{s}-b{bits}-k{k}"
                for r, out in enumerate(ranks):
                    d, i = out["results"][f"topk_d/{name}"], out["results"][f"topk_i/{name}"]
                    if d.dtype != torch.int32 or i.dtype != torch.int64:
                        mismatches.append(f"{name} rank {r}: dtypes {d.dtype}, {i.dtype}")
                    elif not (torch.equal(d, ref_d) and torch.equal(i, ref_i)):
                        mismatches.append(f"{name} rank {r}: top-k differs from single process")
    assert not mismatches, "\n".join(mismatches)


def test_heavy_ties_make_the_tie_order_matter(group_run):
    """Guard on the data: with 8-bit codes ties straddle the cut, so 'index' and 'expected'
    differ; equality of both with the single process therefore tests the tie handling."""
    world, ranks = group_run
    name = f"w{world}-s0-b8-k100"
    assert not torch.equal(ranks[0]["results"][f"ap/{name}-index"],
                           ranks[0]["results"][f"ap/{name}-expected"])


def _expected_errors(world: int) -> dict:
    last = world - 1
    failed = rf"rank {last} of {world} failed: .*"
    return {
        "code_length": {r: r"code length \(packed bytes\) differs across ranks" for r in range(world)},
        "code_length_local": {r: (failed if r != last else "") + "different code lengths"
                              for r in range(world)},
        "label_width": {r: "label columns differs across ranks" for r in range(world)},
        "topk_zero": {r: "topk must be a positive int or None, got 0" for r in range(world)},
        "ties_unknown": {r: "ties must be 'index' or 'expected', got 'random'" for r in range(world)},
        "label_rows_one_rank": {r: (failed if r != last else "") + "db_shard_labels"
                                for r in range(world)},
        "queries_differ": {r: r"query codes/labels \(fingerprint\) differ across ranks" for r in range(world)},
        "k_too_large": {r: rf"k must be in \[1, {W.N_DB}\] .*got {W.N_DB + 1}" for r in range(world)},
        "k_zero": {r: "k must be >= 1, got 0" for r in range(world)},
    }


def test_bad_input_raises_clearly_on_every_rank(group_run):
    world, ranks = group_run
    problems = []
    for scenario, per_rank in _expected_errors(world).items():
        for r, pattern in per_rank.items():
            got = ranks[r]["errors"][scenario]
            if not re.search(pattern, got):
                problems.append(f"{scenario} rank {r}: expected /{pattern}/, got {got!r}")
    assert not problems, "\n".join(problems)
    # and the group still worked afterwards (the ranks did not fall out of step)
    assert all(int(out["results"]["after_errors"][0]) == sum(range(world)) for out in ranks)


def test_without_process_group_is_a_clear_error():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    q, db, ql, dbl = W.make_data(8)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        dd.mean_average_precision(q, db, ql, dbl)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        dd.hamming_topk(q, db, 1)


# --- multi-process training: DDP against one process -----------------------------------------------
# Tolerance [stated in docs/distributed.md]: the runs differ only in the order of floating-point
# reductions (per-rank partial gradients summed by DDP instead of one batch sum), so after 3
# epochs parameters and stored outputs agree to 1e-5 absolute (observed: below 1e-6), the codes C
# and the evaluated MAP are identical.
TRAIN_ATOL = 1e-5


@pytest.fixture(scope="module")
def single_process_training():
    from dchml.train import train

    data, cfg = W.tiny_training_setup()
    return W.training_summary(train(data, cfg, progress=False, log=None))


def _compare_training(got: dict, ref: dict, what: str) -> None:
    params = [k for k in ref if k.startswith("param/")]
    assert params and set(params) == {k for k in got if k.startswith("param/")}
    worst = max((got[k].double() - ref[k].double()).abs().max().item() for k in params)
    assert worst <= TRAIN_ATOL, f"{what}: parameters differ by {worst:.3e}"
    for name in ("stored_image", "stored_text"):
        diff = (got[name] - ref[name]).abs().max().item()
        assert diff <= TRAIN_ATOL, f"{what}: {name} differs by {diff:.3e}"
    assert torch.equal(got["codes_c"], ref["codes_c"]), f"{what}: C differs"
    assert torch.allclose(got["history"], ref["history"], rtol=0, atol=TRAIN_ATOL), (
        f"{what}: history differs\n{got['history']}\n{ref['history']}")
    assert torch.allclose(got["test_map"], ref["test_map"], rtol=0, atol=TRAIN_ATOL), f"{what}: MAP differs"
    assert torch.equal(got["kept_epoch"], ref["kept_epoch"]), f"{what}: another epoch was kept"


def _summary_of_checkpoint(path: str) -> dict:
    from dchml.method.checkpoint import load_checkpoint, model_from_checkpoint
    from dchml.train import TrainResult

    state = load_checkpoint(path)
    result = TrainResult(model=model_from_checkpoint(state), history=state["history"], state=state,
                         selection=state["selection"]["summary"])
    return W.training_summary(result)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    from dchml.data import save_npz

    path = str(tmp_path_factory.mktemp("tiny") / "tiny.npz")
    save_npz(W.tiny_training_data(), path)
    return path


def test_cli_nproc_2_trains_like_one_process(single_process_training, tiny_npz, tmp_path):
    """`dchml train --nproc 2`: two spawned Gloo processes, rank 0 checkpoints, this process reports."""
    import json

    from dchml.app.cli import main

    out = str(tmp_path / "run")
    assert main(["train", "--data", tiny_npz, "--out", out, "--nproc", "2", "--quiet"] + W.train_cli_flags()) == 0
    _compare_training(_summary_of_checkpoint(os.path.join(out, "checkpoint.pt")), single_process_training,
                      "dchml train --nproc 2")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    ref_i2t, ref_t2i = single_process_training["test_map"].tolist()
    assert abs(metrics["i2t_map"] - ref_i2t) <= TRAIN_ATOL and abs(metrics["t2i_map"] - ref_t2i) <= TRAIN_ATOL
    assert os.path.isfile(os.path.join(out, "report.md"))
    # the training really moved, so the agreement above is not trivial
    assert single_process_training["history"][-1, 0] < single_process_training["history"][0, 0]


def _torchrun(nproc: int, args: list, cwd: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc-per-node={nproc}"] + args
    # its own session, so that on a timeout torchrun AND its workers are stopped (killpg)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=GROUP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {GROUP_TIMEOUT_S} s:\n{output[-3000:]}")
    assert proc.returncode == 0, f"torchrun failed:\n{output[-3000:]}"


def test_cli_under_torchrun_trains_like_one_process(single_process_training, tiny_npz, tmp_path):
    out = str(tmp_path / "run")
    _torchrun(2, ["-m", "dchml", "train", "--data", tiny_npz, "--out", out, "--quiet"] + W.train_cli_flags(), ROOT)
    _compare_training(_summary_of_checkpoint(os.path.join(out, "checkpoint.pt")), single_process_training,
                      "torchrun -m dchml train (2 processes)")
    assert os.path.isfile(os.path.join(out, "metrics.json")) and os.path.isfile(os.path.join(out, "report.md"))


def test_torchrun_training_with_resume_matches_one_process(single_process_training, tmp_path):
    _torchrun(3, [WORKER, "--mode", "torchrun-train", "--out", str(tmp_path)], ROOT)
    got = torch.load(str(tmp_path / "torchrun.pt"), weights_only=True)
    assert int(got.pop("world")[0]) == 3
    _compare_training(got, single_process_training, "torchrun, 3 processes, resumed after epoch 1")


def test_training_nproc_is_validated():
    import dchml.distributed.training as dt

    data, cfg = W.tiny_training_setup(epochs=1)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="nproc must be a positive integer"):
            dt.train(data, cfg, nproc=bad)


def test_a_workers_write_failure_is_one_line_naming_the_file(tmp_path, capsys):
    """Rank 0 cannot write its checkpoint: the caller gets the worker's own one-line reason (a
    ValueError the CLI prints as `error: ...`), not a RuntimeError wrapping a traceback."""
    import dchml.distributed.training as dt

    data, cfg = W.tiny_training_setup(epochs=1)
    target = tmp_path / "vanished" / "checkpoint.pt"
    with pytest.raises(dt.WorkerError, match=r"rank [01] of 2: .*cannot write .*vanished/checkpoint\.pt") as info:
        dt.train(data, cfg, nproc=2, checkpoint_path=str(target))
    message = str(info.value)
    assert "No such file or directory" in message and "rank 0" in message  # the cause and the rank that met it
    assert "Traceback" not in message and "\n" not in message
    assert not target.parent.exists()
