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
        "topk_zero": {r: "topk must be >= 1, got 0" for r in range(world)},
        "ties_unknown": {r: r"ties must be one of .*'random'" for r in range(world)},
        "label_rows_one_rank": {r: (failed if r != last else "") + "db_shard_labels"
                                for r in range(world)},
        "queries_differ": {r: r"query codes/labels \(fingerprint\) differs" for r in range(world)},
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
