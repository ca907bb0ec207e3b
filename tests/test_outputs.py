"""Runs whose outputs say what they are and repeat exactly: the thread count kept for a resume,
baselines that are a pure function of the data, split and seed, degenerate data refused or
warned about, a random-weights backbone recorded, refused runs leaving nothing behind, and the
disk check on a resume."""
import json
import os
import types

import numpy as np
import pytest
import torch

from dchml.app.cli import main
from dchml.data import DataError, from_arrays, make_synthetic, save_npz
from dchml.method.checkpoint import load_checkpoint

TINY = ["--bits", "16", "--epochs", "3", "--batch-size", "32", "--eval-every", "1", "--proxy-steps", "100",
        "--topk", "100", "--quiet"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    data = make_synthetic(n=300, n_labels=5, image_dim=24, text_dim=40, n_query=50, n_train=250, seed=3,
                          image_noise=0.5, label_noise=0.05, text_background=0.3)
    path = str(tmp_path_factory.mktemp("outputs") / "tiny.npz")
    save_npz(data, path)
    return path


class Stop(Exception):
    pass


def test_resume_keeps_the_runs_thread_count_and_continues_bit_for_bit(tiny_file, tmp_path, monkeypatch, capsys):
    import dchml.method.train as loop

    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    assert main(["train", "--data", tiny_file, "--out", whole, "--threads", "1"] + TINY) == 0
    original = loop.run_epochs

    def stop_after_one(*args, **kwargs):
        def stop(epoch, record):
            if epoch == 1:
                raise Stop
        return original(*args, **{**kwargs, "on_epoch_end": stop})

    monkeypatch.setattr(loop, "run_epochs", stop_after_one)
    with pytest.raises(Stop):
        main(["train", "--data", tiny_file, "--out", cut, "--threads", "1"] + TINY)
    monkeypatch.undo()
    assert load_checkpoint(os.path.join(cut, "checkpoint.pt"))["runtime"] == {"threads": 1, "processes": 1}
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the resume command has no --threads: the run's one thread comes back
    try:
        assert main(["train", "--out", cut, "--resume", "--epochs", "3", "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    a, b = load_checkpoint(os.path.join(whole, "checkpoint.pt")), load_checkpoint(os.path.join(cut, "checkpoint.pt"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    from dchml.method.train import runtime_differences

    lines = runtime_differences({"threads": 1, "processes": 2}, processes=1)
    assert any("--threads 1" in line for line in lines) == (torch.get_num_threads() != 1)
    assert any("2 process(es)" in line for line in lines)


def test_baselines_are_a_pure_function_of_data_split_and_seed(tiny_file, tmp_path):
    out = str(tmp_path / "run")
    assert main(["train", "--data", tiny_file, "--out", out] + TINY) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        first = json.load(f)
    # resuming a finished run evaluates again: the same numbers, baselines included
    assert main(["train", "--out", out, "--resume", "--quiet"]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        again = json.load(f)
    assert again["baselines"] == first["baselines"]
    assert again["baselines"]["linear"]["chosen_on"] == "validation slice"
    assert (again["i2t_map"], again["t2i_map"]) == (first["i2t_map"], first["t2i_map"])


def test_degenerate_data_is_refused_or_warned_about(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, t = rng.random((40, 5)), rng.random((40, 6))
    split = dict(query_idx=np.arange(10), retrieval_idx=np.arange(10, 40), train_idx=np.arange(10, 40))
    with pytest.raises(DataError, match="label column 0 is set for every item"):
        from_arrays(x, t, np.ones((40, 1)), name="one-class", **split)
    labels = np.zeros((40, 3))
    labels[:, 1] = 1
    labels[::2, 0] = 1
    with pytest.raises(DataError, match=r"label column 1 is set for every item.*not a retrieval task"):
        from_arrays(x, t, labels, name="shared", **split)
    with pytest.raises(DataError, match="image is complex-valued"):
        from_arrays(x + 1j, t, np.eye(3)[np.arange(40) % 3], name="complex", **split)
    same = str(tmp_path / "same.npz")
    np.savez(same, image=np.ones((300, 4), np.float32), text=np.tile(rng.random((1, 6)), (300, 1)).astype(np.float32),
             labels=np.eye(5, dtype=np.float32)[np.arange(300) % 5])
    assert main(["train", "--data", same, "--out", str(tmp_path / "same")] + TINY) == 0
    err = capsys.readouterr().err
    assert err.count("dchml train: warning:") == 1 and "image and text features are the same for every" in err


def test_a_random_weights_backbone_says_so_everywhere(tmp_path, capsys):
    from image_data import make_textlist

    folder = make_textlist(tmp_path / "photos", n=30, size=64)
    out = str(tmp_path / "run")
    flags = ["--bits", "8", "--epochs", "1", "--batch-size", "8", "--image-size", "64", "--proxy-steps", "50",
             "--topk", "10", "--quiet", "--workers", "0"]
    os.environ["DCHML_CACHE"] = str(tmp_path / "empty-cache")
    try:
        assert main(["train", "--data", str(folder), "--out", out] + flags) == 0
    finally:
        del os.environ["DCHML_CACHE"]
    assert "backbone starts from RANDOM weights" in capsys.readouterr().err  # also under --quiet
    record = load_checkpoint(os.path.join(out, "checkpoint.pt"))["backbone"]
    assert record["random"] is True and record["name"] == "alexnet" and "no weights file found" in record["why"]
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["backbone"] == record
    report = open(os.path.join(out, "report.md")).read()
    assert "AlexNet with **RANDOM weights**" in report
    assert "Not run here: image pixels" in report  # the linear hasher it mentions, and why it is absent
    weights = tmp_path / "alexnet.pth"
    from dchml.method.models import AlexNetBackbone

    torch.save(AlexNetBackbone().state_dict(), weights)
    out2 = str(tmp_path / "run2")
    assert main(["train", "--data", str(folder), "--out", out2, "--image-weights", str(weights)] + flags) == 0
    record = load_checkpoint(os.path.join(out2, "checkpoint.pt"))["backbone"]
    import hashlib

    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and record["random"] is False
    assert record["sha256"] in open(os.path.join(out2, "report.md")).read()


def test_a_refused_run_leaves_no_folder_it_made(tiny_file, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "run"
    assert main(["train", "--data", tiny_file, "--method", "psldh", "--eta", "1", "--out", str(out)] + TINY) == 2
    assert not (tmp_path / "a").exists()
    single = str(tmp_path / "img.npz")
    np.savez(single, image=np.random.default_rng(0).random((300, 4)).astype(np.float32),
             labels=np.eye(5, dtype=np.float32)[np.arange(300) % 5])
    assert main(["train", "--data", single, "--out", str(out)] + TINY) == 2  # refused after the folder is claimed
    assert "--method psldh" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_disk_check_counts_what_the_old_checkpoint_frees(tiny_file, tmp_path, monkeypatch):
    import dchml.method.preflight as preflight
    from dchml.data import load_dataset
    from dchml.train import TrainConfig

    data, cfg = load_dataset(tiny_file), TrainConfig(bits=16)
    size = preflight.checkpoint_bytes(data, cfg)
    need_fresh = 2 * size + preflight._OUTPUTS_BYTES  # the new checkpoint beside the previous one at a save
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=need_fresh - 1))
    with pytest.raises(preflight.ResourceError, match="free"):
        preflight.check_disk(data, [cfg], str(tmp_path))
    (tmp_path / "checkpoint.pt").write_bytes(b"x" * size)  # a resume: one copy is on the disk already
    preflight.check_disk(data, [cfg], str(tmp_path))
