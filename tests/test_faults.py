"""Faults a user or an operator can cause, end to end through the `dchml` command: each case
checks the exit status, the one-line message, and that nothing that was there is lost."""
import errno
import json
import os
import re
import pickle
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

import dchml
import dchml.method.checkpoint
import dchml.io.atomic
from dchml.method.checkpoint import CheckpointError, load_checkpoint
from dchml.app.cli import main
from dchml.data import make_synthetic, save_npz
from dchml.io.run_dir import LOCK_NAME, OutputDirError, claim

from file_damage import flip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--bits", "16", "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--momentum", "0.9",
        "--eval-every", "1", "--proxy-steps", "100", "--topk", "100", "--quiet"]


def _tiny(seed=3):
    return make_synthetic(n=300, n_labels=5, image_dim=24, text_dim=40, n_query=60, n_train=150, seed=seed,
                          image_noise=0.5, label_noise=0.05, text_background=0.3)


def _save_without_split(data, path):
    """An .npz without index arrays: the split then comes from --seed."""
    np.savez(path, image=data.image.numpy(), text=data.text.numpy(), labels=data.labels.numpy())
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults-data")
    data = _tiny()
    perm = np.random.default_rng(1).permutation(data.n)
    shuffled = dchml.data.from_arrays(data.image[perm], data.text[perm], data.labels[perm], query_idx=data.query_idx,
                                      retrieval_idx=data.retrieval_idx, train_idx=data.train_idx, name="shuffled")
    return {"a": _save_without_split(data, folder / "a.npz"),
            "b": _save_without_split(_tiny(seed=4), folder / "b.npz"),  # same size, other items
            "shuffled": _save_without_split(shuffled, folder / "shuffled.npz")}


@pytest.fixture(scope="module")
def run(files, tmp_path_factory):
    """A finished run on a.npz, split seed 2."""
    out = str(tmp_path_factory.mktemp("faults-run") / "run")
    assert main(["train", "--data", files["a"], "--seed", "2", "--out", out] + TINY) == 0
    return out


def _error_line(capsys, code, expected_code=2):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("using the")]
    assert code == expected_code
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and ": error: " in err[0]
    return err[0]


def _snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _temp_files(folder):
    return [n for n in os.listdir(folder) if dchml.io.atomic.is_temp_file(n) or n.endswith(".tmp")]


# --- identity ------------------------------------------------------------------------------------


def test_eval_refuses_a_damaged_checkpoint_in_one_line(run, files, capsys, tmp_path):
    damaged = tmp_path / "checkpoint.pt"
    shutil.copy(os.path.join(run, "checkpoint.pt"), damaged)
    flip(damaged, "first KiB")
    line = _error_line(capsys, main(["eval", "--checkpoint", str(damaged), "--data", files["a"]]))
    assert line.startswith(f"dchml eval: error: checkpoint {damaged} is damaged (")


def test_resume_with_other_data_of_the_same_size_is_refused(run, files, capsys):
    before = _snapshot(run)
    code = main(["train", "--data", files["b"], "--out", run, "--resume", "--epochs", "3", "--quiet"])
    line = _error_line(capsys, code)
    assert "different data" in line and "a.npz" in line and "b.npz" in line
    assert _snapshot(run) == before  # the finished run is untouched
    # the same items in another order are other data too (row i is another item)
    code = main(["train", "--data", files["shuffled"], "--out", run, "--resume", "--epochs", "3", "--quiet"])
    assert "different data" in _error_line(capsys, code)
    assert _snapshot(run) == before


def test_checkpoint_and_metrics_carry_the_data_fingerprint(run, files):
    from dchml.data.fingerprint import data_fingerprint

    data = dchml.data.load_dataset(files["a"], seed=2)
    state = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert state["data"]["fingerprint"] == data_fingerprint(data)
    assert state["data"]["train_row_hashes"].shape == (data.train_idx.numel(),)
    source = state["data"]["source"]
    assert source["path"] == files["a"] and source["abspath"] == os.path.abspath(files["a"])
    assert source["format"] == "npz" and source["seed"] == 2 and source["drop_unlabeled"] is False
    with open(os.path.join(run, "metrics.json")) as f:
        assert json.load(f)["data"]["fingerprint"] == data_fingerprint(data)


def test_eval_on_an_overlapping_split_is_refused(run, files, capsys, tmp_path):
    ckpt = os.path.join(run, "checkpoint.pt")
    out = str(tmp_path / "scores.json")
    code = main(["eval", "--checkpoint", ckpt, "--data", files["a"], "--seed", "5", "--out", out])
    line = _error_line(capsys, code)
    assert "of the 50 queries" in line and "trained on" in line and "--seed 2" in line
    count = int(line.split("error: ")[1].split()[0])
    data5, data2 = dchml.data.load_dataset(files["a"], seed=5), dchml.data.load_dataset(files["a"], seed=2)
    assert count == int(torch.isin(data5.query_idx, data2.train_idx).sum()) > 0
    assert not os.path.exists(out)
    # a shuffled copy of the training file: caught by the items' content
    code = main(["eval", "--checkpoint", ckpt, "--data", files["shuffled"], "--seed", "2"])
    assert "matched by content" in _error_line(capsys, code)
    # search: the positions asked for are checked
    trained = [i for i, r in enumerate(data5.query_idx.tolist()) if r in set(data2.train_idx.tolist())]
    code = main(["search", "--checkpoint", ckpt, "--data", files["a"], "--seed", "5", "--query-modality", "image",
                 "--queries", str(trained[0])])
    assert "1 of the 1 queries asked for" in _error_line(capsys, code)
    # the split it was trained with is fine (its seed is the default)
    assert main(["eval", "--checkpoint", ckpt, "--data", files["a"]]) == 0
    # the same items with a split of the file's own: the message names both splits and the command
    data7 = dchml.data.load_dataset(files["a"], seed=7)
    own = str(tmp_path / "own.npz")
    np.savez(own, image=data7.image.numpy(), text=data7.text.numpy(), labels=data7.labels.numpy(),
             query_idx=data7.query_idx.numpy(), retrieval_idx=data7.retrieval_idx.numpy(),
             train_idx=data7.train_idx.numpy())
    line = _error_line(capsys, main(["eval", "--checkpoint", ckpt, "--data", own]))
    assert "own.npz (the file's own query/database/training split)" in line
    assert "with dchml's split drawn with seed 2" in line and "the same items split differently" in line
    command = line.split("evaluate on the split it was trained with: ")[1]
    assert command == f"dchml eval --checkpoint {ckpt} --data {os.path.abspath(files['a'])} --seed 2"
    assert main(command.split()[1:]) == 0


def test_eval_without_data_uses_the_recorded_data(run, files, capsys, tmp_path):
    ckpt = os.path.join(run, "checkpoint.pt")
    assert main(["eval", "--checkpoint", ckpt, "--topk", "100"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == f"using the checkpoint's data: {os.path.abspath(files['a'])} (npz, seed 2); " \
                                   "--data overrides"
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    assert f"I->T {metrics['i2t_map']:.4f}" in captured.out  # the training run's own score, not the synthetic set
    # the recorded file is gone: a clear error, never another data set
    moved = tmp_path / "a.npz"
    shutil.copy(files["a"], moved)
    copy_ckpt = tmp_path / "ck.pt"
    state = load_checkpoint(ckpt)
    state["data"]["source"] = dict(state["data"]["source"], path=str(tmp_path / "gone.npz"),
                                   abspath=str(tmp_path / "gone.npz"))
    dchml.method.checkpoint.save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, copy_ckpt)
    line = _error_line(capsys, main(["eval", "--checkpoint", str(copy_ckpt)]))
    assert "gone.npz" in line and "no longer exists; pass --data" in line
    assert main(["eval", "--checkpoint", str(copy_ckpt), "--data", str(moved)]) == 0


# --- one writer per folder --------------------------------------------------------------------------


def test_two_concurrent_runs_into_one_folder(files, tmp_path, capsys):
    out = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "dchml", "train", "--data", files["a"], "--out", out,
                              "--epochs", "150", "--eval-every", "150"] + TINY[:2] + TINY[6:8] + ["--quiet"],
                             env=env, stderr=subprocess.PIPE, text=True)
    try:
        lock = os.path.join(out, LOCK_NAME)
        deadline = time.monotonic() + 120
        # Wait for a folder that is both locked and not empty: a second run must be told that the
        # folder is in use, not that it is not empty or that there is nothing to resume.
        while not (os.path.isfile(lock) and open(lock).read().strip() == str(first.pid)
                   and os.path.isfile(os.path.join(out, "checkpoint.pt"))):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.02)
        for argv in (TINY, TINY + ["--force"], ["--resume", "--quiet"]):
            code = main(["train", "--data", files["a"], "--out", out] + argv)
            line = _error_line(capsys, code)
            assert f"is in use by another dchml run (pid {first.pid})" in line
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    with open(os.path.join(out, "metrics.json")) as f:
        assert len(json.load(f)["history"]) == 150  # the first run's results, complete
    assert load_checkpoint(os.path.join(out, "checkpoint.pt"))["epoch"] == 150
    assert not os.path.exists(os.path.join(out, LOCK_NAME))  # removed when the run ended


def test_lock_is_exclusive_in_one_process_and_released_by_a_crash(tmp_path):
    out = str(tmp_path / "run")
    with claim(out):
        with pytest.raises(OutputDirError, match="in use by another dchml run"):
            with claim(out):
                pass
    assert os.listdir(out) == []  # claim created it; still there because the run "succeeded"
    script = f"from dchml.io.run_dir import claim\nimport os\nheld = claim({out!r}, force=True)\nheld.__enter__()\nos.kill(os.getpid(), 9)\n"
    crashed = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT))
    assert crashed.returncode == -signal.SIGKILL and os.path.exists(os.path.join(out, LOCK_NAME))
    with claim(out):  # the kernel released the dead run's lock
        pass
    assert os.listdir(out) == []


# --- validation before work -----------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if data is loaded or PHNet starts."""
    import dchml.data.load
    import dchml.method.proxies

    def boom(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(dchml.data.load, "load_dataset", boom)
    monkeypatch.setattr(dchml.data, "load_dataset", boom)
    monkeypatch.setattr(dchml.method.proxies, "train_category_net", boom)


@pytest.mark.parametrize("argv, needle", [
    (["--bits", "100000"], "bits must be at most 65535"),
    (["--seed", str(2**64)], "seed must be below 2**64"),
    (["--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], "device"),
    (["--device", "bogus"], "device must be"),
])
def test_absurd_arguments_are_refused_before_any_work(argv, needle, tmp_path, capsys, no_work):
    out = tmp_path / "run"
    line = _error_line(capsys, main(["train", "--out", str(out)] + argv))
    assert needle in line
    assert not out.exists()  # no folder left behind


def test_memory_and_disk_estimates_refuse_before_phnet(files, tmp_path, capsys, monkeypatch):
    import dchml.method.preflight
    import dchml.method.proxies

    def boom(*args, **kwargs):
        raise AssertionError("PHNet started")

    monkeypatch.setattr(dchml.method.proxies, "train_category_net", boom)
    out = tmp_path / "run"
    monkeypatch.setattr(dchml.method.preflight, "_available_memory", lambda device: 50 << 20)
    line = _error_line(capsys, main(["train", "--data", files["a"], "--out", str(out), "--bits", "4096", "--quiet"]))
    assert "needs about" in line and "of memory" in line and "50.0 MiB available" in line
    assert not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(dchml.method.proxies, "train_category_net", boom)
    monkeypatch.setattr(dchml.method.preflight.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1 << 20))
    line = _error_line(capsys, main(["train", "--data", files["a"], "--out", str(out)] + TINY))
    assert "has 1.0 MiB free, the run needs about" in line and re.search(r"checkpoint\.pt about \d+\.\d MiB", line)
    assert not out.exists()


def test_checkpoint_size_estimate_is_close(run, files):
    from dchml.method.preflight import checkpoint_bytes
    from dchml.train import TrainConfig

    state = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    data = dchml.data.load_dataset(files["a"], seed=2)
    estimate = checkpoint_bytes(data, TrainConfig.from_dict(state["config"]))
    actual = os.path.getsize(os.path.join(run, "checkpoint.pt"))
    # the estimate counts the latest weights beside the kept ones (present when they differ)
    assert actual <= estimate <= (1.2 if "model_last" in state else 1.45) * actual


# --- failures while writing ---------------------------------------------------------------------


def _fail_second_checkpoint(monkeypatch, action):
    """Run `action(path)` instead of letting the 2nd checkpoint save through cleanly."""
    real = dchml.method.checkpoint.write_atomic
    calls = []

    def write_atomic(path, write):
        calls.append(path)
        if len(calls) == 2:
            return action(real, path, write)
        return real(path, write)

    monkeypatch.setattr(dchml.method.checkpoint, "write_atomic", write_atomic)


def _check_failed_run(capsys, code, out, reason):
    line = _error_line(capsys, code)
    assert line == f"dchml train: error: cannot write {os.path.join(out, 'checkpoint.pt')}: {reason}"
    assert load_checkpoint(os.path.join(out, "checkpoint.pt"))["epoch"] == 1  # the last good one
    assert _temp_files(out) == [] and not os.path.exists(os.path.join(out, LOCK_NAME))
    return line


@pytest.mark.parametrize("err, where", [(errno.ENOSPC, "write"), (errno.EROFS, "open"), (errno.EACCES, "open"),
                                        (errno.EIO, "fsync")])
def test_injected_write_errors(err, where, files, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")

    def inject(real, path, write):
        if where == "open":
            monkeypatch.setattr(dchml.io.atomic.tempfile, "mkstemp", _raise(err))
        elif where == "fsync":
            monkeypatch.setattr(dchml.io.atomic.os, "fsync", _raise(err))
        else:
            def partial(f):  # some bytes get through, then the disk is full while torch.save writes
                f.write(b"x" * 1000)
                f._f = _FullDisk(f._f, err)
                write(f)

            return real(path, partial)
        return real(path, write)

    _fail_second_checkpoint(monkeypatch, inject)
    code = main(["train", "--data", files["a"], "--out", out] + TINY)
    monkeypatch.undo()
    _check_failed_run(capsys, code, out, f"{os.strerror(err)} ({errno.errorcode[err]})")
    assert not os.path.exists(os.path.join(out, "metrics.json"))


class _FullDisk:
    def __init__(self, f, err):
        self._f, self._err = f, err

    def write(self, data):
        raise OSError(self._err, os.strerror(self._err))

    def __getattr__(self, name):
        return getattr(self._f, name)


def _raise(err):
    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))
    return fail


def test_output_folder_removed_during_the_run(files, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")

    def remove_then_write(real, path, write):
        shutil.rmtree(out)
        return real(path, write)

    _fail_second_checkpoint(monkeypatch, remove_then_write)
    line = _error_line(capsys, main(["train", "--data", files["a"], "--out", out] + TINY))
    assert line == f"dchml train: error: cannot write {os.path.join(out, 'checkpoint.pt')}: " \
                   "No such file or directory (ENOENT)"


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs (root only): a real full disk."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_on_a_real_tmpfs(files, tmpfs, capsys, monkeypatch):
    out = str(tmpfs / "run")

    def fill_then_write(real, path, write):
        free = shutil.disk_usage(tmpfs).free
        with open(tmpfs / "filler", "wb") as f:  # leave less than a checkpoint
            f.write(b"\0" * max(0, free - 200_000))
        return real(path, write)

    _fail_second_checkpoint(monkeypatch, fill_then_write)
    code = main(["train", "--data", files["a"], "--out", out] + TINY)
    _check_failed_run(capsys, code, out, "No space left on device (ENOSPC)")


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"root ignores file modes and a read-only mount failed: {made.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_output_folder_is_refused_before_any_work(read_only_dir, capsys, no_work):
    for out in (read_only_dir, read_only_dir / "run"):
        line = _error_line(capsys, main(["train", "--out", str(out)] + TINY))
        assert f"cannot write to {out}" in line and "not writable" in line
    assert os.listdir(read_only_dir) == []
    line = _error_line(capsys, main(["encode", "--checkpoint", "x.pt", "--modality", "text", "--input", "x.npy",
                                     "--out", str(read_only_dir / "codes.npy")]))
    assert "is not writable" in line


def test_killed_save_then_resume(files, tmp_path, capsys):
    out = str(tmp_path / "run")
    script = f"""
import os, signal, sys
import dchml.method.checkpoint
from dchml.app.cli import main
real, calls = dchml.method.checkpoint.write_atomic, []
def write_atomic(path, write):
    calls.append(path)
    if len(calls) == 2:  # the 2nd epoch's save dies half way
        def half(f):
            f.write(b"x" * 100_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, half)
    return real(path, write)
dchml.method.checkpoint.write_atomic = write_atomic
sys.exit(main({["train", "--data", files["a"], "--out", out] + TINY + ["--epochs", "3"]!r}))
"""
    killed = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert killed.returncode == -signal.SIGKILL
    leftovers = _temp_files(out)
    assert len(leftovers) == 1 and os.path.getsize(os.path.join(out, leftovers[0])) == 100_000
    assert load_checkpoint(os.path.join(out, "checkpoint.pt"))["epoch"] == 1
    assert main(["train", "--out", out, "--resume", "--epochs", "3", "--quiet"]) == 0
    assert "using the checkpoint's data" in capsys.readouterr().err
    assert _temp_files(out) == [] and not os.path.exists(os.path.join(out, LOCK_NAME))
    with open(os.path.join(out, "metrics.json")) as f:
        assert [r["epoch"] for r in json.load(f)["history"]] == [1, 2, 3]


def test_epoch_line_comes_after_its_checkpoint(tmp_path):
    from dchml.train import TrainConfig, train

    path = str(tmp_path / "ck.pt")
    seen = []

    def log(message):
        if message.startswith("dchml epoch "):
            seen.append((message.split(" epoch ")[1].split("/")[0], load_checkpoint(path)["epoch"]))

    cfg = TrainConfig(bits=16, epochs=2, batch_size=32, proxy_steps=50, topk=50, eval_every=1,
                      image_hidden=32, text_hidden=32, proxy_hidden=16)
    train(_tiny(), cfg, checkpoint_path=path, progress=False, log=log)
    assert seen == [("1", 1), ("2", 2)]


# --- file modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                        (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(umask, file_mode, dir_mode, files, tmp_path):
    out = tmp_path / "run"
    old = os.umask(umask)
    try:
        assert main(["train", "--data", files["a"], "--out", str(out)] + TINY) == 0
        assert main(["encode", "--checkpoint", str(out / "checkpoint.pt"), "--modality", "text",
                     "--input", _write_npy(tmp_path), "--out", str(tmp_path / "codes.npy")]) == 0
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == dir_mode
    names = sorted(os.listdir(out))
    assert names == ["checkpoint.pt", "metrics.json", "pr_curves.png", "precision_at_n.png", "report.md",
                     "training.png"]
    for path in [out / n for n in names] + [tmp_path / "codes.npy"]:
        assert (path.stat().st_mode & 0o777) == file_mode, path


def _write_npy(tmp_path):
    path = tmp_path / "text.npy"
    np.save(path, _tiny().text[:4].numpy())
    return str(path)


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    dchml.io.atomic.write_json({"a": 1}, path)

    def fail(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(dchml.io.atomic.OutputError, match=r"cannot write .*out.json: No space left on device \(ENOSPC\)"):
        dchml.io.atomic.write_atomic(path, fail)
    with pytest.raises(ZeroDivisionError):  # not an OS error: raised as is
        dchml.io.atomic.write_atomic(path, lambda f: 1 / 0)
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["out.json"]


# --- the smaller items ----------------------------------------------------------------------------


def test_no_label_error_names_the_command_line_flag(tmp_path, capsys):
    data = _tiny()
    labels = data.labels.numpy().copy()
    labels[7] = 0
    path = tmp_path / "unlabeled.npz"
    np.savez(path, image=data.image.numpy(), text=data.text.numpy(), labels=labels)
    line = _error_line(capsys, main(["train", "--data", str(path), "--out", str(tmp_path / "o")] + TINY))
    assert "--drop-unlabeled" in line and "drop_unlabeled=True" not in line
    assert not (tmp_path / "o").exists()
    with pytest.raises(dchml.data.DataError, match="drop_unlabeled=True"):  # the Python API names its own
        dchml.data.load_dataset(str(path))


@pytest.mark.parametrize("command, hint, not_hint", [
    ("demo", "--force", "--resume"), ("train", "dchml train --out", None)])
def test_interrupt_message_fits_the_command(command, hint, not_hint, files, tmp_path, capsys, monkeypatch):
    import dchml.app.experiment

    def interrupted(data, cfg, out_dir, **kwargs):
        os.makedirs(out_dir, exist_ok=True)
        dchml.io.atomic.write_bytes(os.path.join(out_dir, "checkpoint.pt"), b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(dchml.app.experiment, "run_experiment", interrupted)
    monkeypatch.setattr(dchml.data.load, "make_synthetic", lambda seed=0: _tiny())
    argv = [command, "--out", str(tmp_path / "o")] + TINY + (["--jobs", "1"] if command == "demo" else ["--data", files["a"]])
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and hint in err[0]
    assert not_hint is None or not_hint not in err[0]


@pytest.mark.parametrize("content", [os.urandom(4096), pickle.dumps({"format": "dchml-checkpoint", "version": 2})])
def test_foreign_checkpoint_gets_our_error(content, tmp_path, capsys):
    path = tmp_path / "ck.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a dchml checkpoint or is corrupt") as info:
        load_checkpoint(str(path))
    assert "weights_only" not in str(info.value)
    line = _error_line(capsys, main(["eval", "--checkpoint", str(path), "--data", "synthetic"]))
    assert "is not a dchml checkpoint or is corrupt" in line and "weights_only" not in line


def test_map_on_an_empty_database_raises():
    q, ql = torch.randn(3, 16), torch.ones(3, 2)
    with pytest.raises(ValueError, match="db_codes has no rows"):
        dchml.mean_average_precision(q, torch.randn(0, 16), ql, torch.ones(0, 2))
    with pytest.raises(ValueError, match="query_codes has no rows"):
        dchml.mean_average_precision(torch.randn(0, 16), q, torch.ones(0, 2), ql)


def test_negative_eta_is_refused_everywhere():
    from dchml.ops.autograd import MarginDynamicSoftmax
    from dchml.nn import MarginDynamicSoftmaxLoss, PartialSoftmaxLoss
    from dchml.train import TrainConfig

    codes, proxies = torch.randn(4, 8).tanh(), torch.ones(3, 8)
    labels = torch.zeros(4, 3)
    labels[:, 0] = 1
    for call in (lambda: dchml.margin_dynamic_softmax(codes, proxies, labels, eta=-0.3),
                 lambda: dchml.margin_dynamic_softmax(codes, proxies, labels, eta=-0.3, reduction="none"),
                 lambda: MarginDynamicSoftmax.apply(codes, proxies, labels, -0.3, 0.3, None),
                 lambda: MarginDynamicSoftmaxLoss(proxies, eta=-0.3),
                 lambda: TrainConfig(eta=-0.3)):
        with pytest.raises(ValueError, match="eta must be"):
            call()
    for call in (lambda: dchml.partial_softmax(codes, proxies, labels, gamma=-0.2),
                 lambda: PartialSoftmaxLoss(proxies, gamma=-0.2)):
        with pytest.raises(ValueError, match="gamma must be >= 0"):
            call()
    assert float(dchml.margin_dynamic_softmax(codes, proxies, labels, eta=0.3)) > 0


def test_search_prints_the_positions_asked_for_and_warns_about_k(run, files, capsys):
    ckpt = os.path.join(run, "checkpoint.pt")
    data = dchml.data.load_dataset(files["a"], seed=2)
    assert main(["search", "--checkpoint", ckpt, "--query-modality", "image", "--queries", "0,1", "-k", "1000"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    rows = data.query_idx[[0, 1]].tolist()
    assert [line.split(" -> ")[0] for line in lines] == [f"image query position {p} (row {r})"
                                                          for p, r in zip((0, 1), rows)]
    n_db = data.retrieval_idx.numel()
    assert all(len(line.split(" -> text rows: ")[1].split("  ")) == n_db for line in lines)
    warnings = [w for w in captured.err.strip().splitlines() if "warning" in w]
    assert warnings == [f"dchml search: warning: -k 1000 is more than the {n_db} items of the database; "
                        f"showing {n_db} per query"]
