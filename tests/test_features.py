"""`dchml features` (frozen backbones -> a features .npz; chunked, resumable, atomic), training on
the written file, end-to-end training on streamed images, and encoding raw captions and image
files with what the checkpoint recorded."""
import json
import os

import numpy as np
import pytest
import torch

from dchml.method.checkpoint import load_checkpoint, model_from_checkpoint
from dchml.app.cli import main
from dchml.data import DataError, load_dataset
from dchml.data.vocab import Vocabulary
from dchml.method.encoding import encode
from dchml.method.features import FeaturesError, extract_features

from file_damage import flip
from image_data import corrupt, make_textlist

TINY = ["--bits", "16", "--epochs", "1", "--batch-size", "8", "--topk", "20", "--proxy-steps", "50", "--quiet"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_textlist(tmp_path_factory.mktemp("imgs") / "set", n=24, size=48)


def _data(folder, **kw):
    return load_dataset(str(folder), image_size=64, image_workers=0, n_query=4, n_train=10, **kw)


def _error_line(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_interrupted_extraction_resumes_to_the_same_file(folder, tmp_path):
    data = _data(folder)
    whole = tmp_path / "whole.npz"
    extract_features(data, whole, image_weights="random", chunk_rows=5)
    out = tmp_path / "f.npz"

    def stop_after_two(kind, i):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(data, out, image_weights="random", chunk_rows=5, on_chunk=stop_after_two)
    assert not out.exists() and sorted(p.name for p in (tmp_path / "f.npz.partial").iterdir()) == [
        "image_000000.npz", "image_000001.npz", "manifest.json"]
    computed = []
    summary = extract_features(data, out, image_weights="random", chunk_rows=5,
                               on_chunk=lambda kind, i: computed.append(i))
    assert computed == [2, 3, 4]  # only the missing chunks
    assert out.read_bytes() == whole.read_bytes() and not (tmp_path / "f.npz.partial").exists()
    assert summary["image_dim"] == 4096 and summary["n"] == 24
    # a partial extraction with other settings is never mixed in
    with pytest.raises(KeyboardInterrupt):
        extract_features(data, tmp_path / "g.npz", image_weights="random", chunk_rows=5, on_chunk=stop_after_two)
    with pytest.raises(FeaturesError, match=r"g.npz.partial holds an interrupted extraction with other settings "
                                            r"\(chunk_rows differ\)"):
        extract_features(data, tmp_path / "g.npz", image_weights="random", chunk_rows=6)


def test_damaged_chunk_and_features_file_are_refused_by_name(folder, tmp_path):
    data = _data(folder)
    out = tmp_path / "f.npz"

    def stop(kind, i):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(data, out, image_weights="random", chunk_rows=12, on_chunk=stop)
    chunk = tmp_path / "f.npz.partial" / "image_000000.npz"
    flip(chunk, "first KiB")
    with pytest.raises(FeaturesError, match=rf"^features chunk {chunk} is damaged \(checksum mismatch in "
                                            r"features.npy\); delete it and run the same command again"):
        extract_features(data, out, image_weights="random", chunk_rows=12)
    chunk.unlink()
    extract_features(data, out, image_weights="random", chunk_rows=12)  # computes that chunk anew
    assert load_dataset(str(out)).image.shape == (24, 4096)
    flip(out, "middle")
    with pytest.raises(DataError, match=rf"^data file {out} is damaged \(checksum mismatch in image.npy\)"):
        load_dataset(str(out))


def test_features_file_trains_and_encodes_raw_queries(folder, tmp_path, capsys):
    out = str(tmp_path / "feats.npz")
    assert main(["features", "--data", str(folder), "--image-weights", "random", "--image-size", "64",
                 "--chunk-rows", "10", "--workers", "2", "--quiet", "--out", out]) == 0
    assert "wrote 24 items (4096-d alexnet image features" in capsys.readouterr().out
    feats = load_dataset(out)
    data = _data(folder)
    assert feats.image.shape == (24, 4096) and feats.image.dtype == torch.float32
    assert feats.encoders["image"] == {"backbone": "alexnet", "weights": "random", "image_size": 64, "skipped": []}
    assert torch.equal(feats.text, load_dataset(str(folder), image_size=64).text)  # same split: same vocabulary
    run = str(tmp_path / "run")
    assert main(["train", "--data", out, "--out", run] + TINY) == 0
    state = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    vocab = Vocabulary.from_state(state["data"]["encoders"]["text"])
    model = model_from_checkpoint(state)
    # a sentence -> the vocabulary's row -> the text net's code
    queries = tmp_path / "q.txt"
    queries.write_text("A café in 東京, with a cat!\nzzz unknown words\n", encoding="utf-8")
    assert main(["encode", "--checkpoint", os.path.join(run, "checkpoint.pt"), "--modality", "text",
                 "--input", str(queries), "--out", str(tmp_path / "q.npy")]) == 0
    assert "1 of 2 captions contain no word" in capsys.readouterr().err
    expect = encode(model, vocab.transform(["A café in 東京, with a cat!", "zzz unknown words"]), "text")
    assert np.array_equal(np.load(tmp_path / "q.npy"), expect.numpy())
    # image files -> the recorded backbone -> the image net's code, as for the stored features
    assert main(["encode", "--checkpoint", os.path.join(run, "checkpoint.pt"), "--modality", "image",
                 "--input", str(folder / "images.txt"), "--out", str(tmp_path / "i.npy"), "--workers", "0"]) == 0
    assert np.array_equal(np.load(tmp_path / "i.npy"), encode(model, feats.image, "image").numpy())


def test_features_command_errors(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DCHML_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = str(tmp_path / "f.npz")
    line = _error_line(capsys, main(["features", "--data", str(folder), "--image-size", "64", "--out", out]))
    assert "no weights for the AlexNet backbone: pass --image-weights PATH, put them at" in line
    feats = tmp_path / "done.npz"
    feats.write_bytes(b"x")
    line = _error_line(capsys, main(["features", "--data", str(folder), "--image-weights", "random",
                                     "--out", str(feats)]))
    assert "already exists; pass --force" in line
    from dchml.data import make_synthetic, save_npz
    save_npz(make_synthetic(n=60, n_labels=3, image_dim=8, text_dim=6, n_query=10, n_train=20), tmp_path / "s.npz")
    line = _error_line(capsys, main(["features", "--data", str(tmp_path / "s.npz"), "--image-weights", "random",
                                     "--out", out]))
    assert "holds 8-d image features already" in line


def test_end_to_end_training_on_streamed_images(folder, tmp_path, capsys):
    run = str(tmp_path / "e2e")
    assert main(["train", "--data", str(folder), "--out", run, "--image-size", "64", "--image-weights", "random",
                 "--backbone-lr-scale", "0.1", "--augment", "--workers", "2", "--lr", "0.01"] + TINY) == 0
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["config"]["backbone_lr_scale"] == 0.1 and metrics["config"]["augment"] is True
    assert metrics["data"]["image"] == "pixels 3x64x64 streamed from files"
    assert "streamed from files" in open(os.path.join(run, "report.md")).read()
    state = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert [g["lr"] for g in state["optim_image"]["param_groups"]] == [pytest.approx(0.001), 0.01]
    model = model_from_checkpoint(state)
    assert main(["encode", "--checkpoint", os.path.join(run, "checkpoint.pt"), "--modality", "image",
                 "--input", str(folder / "images.txt"), "--out", str(tmp_path / "i.npy")]) == 0
    data = load_dataset(str(folder), image_size=64, stream_images=False)
    assert np.array_equal(np.load(tmp_path / "i.npy"), encode(model, data.image, "image").numpy())
    line = _error_line(capsys, main(["train", "--data", "synthetic", "--out", str(tmp_path / "x"),
                                     "--image-backbone", "resnet50"] + TINY))
    assert "image_backbone is only for pixel images; this data set has 512-d image features" in line


def test_a_corrupt_image_stops_training_with_its_name(tmp_path, capsys):
    folder = make_textlist(tmp_path / "set", n=12, size=32)
    corrupt(folder / "img" / "3.jpg")
    line = _error_line(capsys, main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--image-size",
                                     "64", "--image-weights", "random", "--workers", "0"] + TINY))
    assert "dchml train: error:" in line and "line 4: image file" in line and "3.jpg: cannot decode" in line
    assert "--skip-bad-images" in line


def test_mixed_precision_and_augment_are_checked_before_training(tmp_path, capsys):
    from dchml.distributed import training as distributed_train
    from dchml.data import make_synthetic
    from dchml.train import TrainConfig

    line = _error_line(capsys, main(["train", "--data", "synthetic", "--out", str(tmp_path / "r"),
                                     "--precision", "bf16"] + TINY))
    assert "precision 'bf16' needs a CUDA device" in line
    data = make_synthetic(n=60, n_labels=3, image_dim=8, text_dim=6, n_query=10, n_train=20)
    with pytest.raises(ValueError, match="single-process training only"):
        distributed_train.train(data, TrainConfig(epochs=1, augment=True), nproc=2)


def test_a_checkpoint_from_before_the_image_options_resumes(tmp_path):
    import torch

    from dchml.data import make_synthetic, save_npz

    data = str(tmp_path / "s.npz")
    save_npz(make_synthetic(n=80, n_labels=3, image_dim=8, text_dim=6, n_query=10, n_train=30), data)
    run = str(tmp_path / "run")
    assert main(["train", "--data", data, "--out", run] + TINY) == 0
    path = os.path.join(run, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    for key in ("image_backbone", "backbone_lr_scale", "precision", "augment"):
        del state["config"][key]  # as written before these options existed
    del state["model_spec"]["image_backbone"]
    torch.save(state, path)
    assert main(["train", "--data", data, "--out", run, "--resume", "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(path)["epoch"] == 2
