"""Single-modality data on small generated sources: the container with one modality, .npz and
.mat files with one feature array, DeepHash-pytorch list files with JPEGs, the CIFAR-10 python
folder (and pickles that would run code), the named protocols, and `dchml features` on images
without text."""
import os
import pickle

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from dchml.data import (PROTOCOLS, DataError, default_protocol, from_arrays, load_dataset, load_recorded,
                        make_synthetic, protocol_topk, save_npz)
from dchml.data.fingerprint import data_fingerprint, row_hashes
from dchml.data.protocols import draw_split, get_protocol

from image_data import CIFAR_BATCHES, CIFAR_CLASSES, make_cifar_folder, make_list_folder, pixels


def _split_sizes(d):
    return len(d.query_idx), len(d.retrieval_idx), len(d.train_idx)


# --- the container --------------------------------------------------------------------------

def test_one_modality_container_and_synthetic():
    both = make_synthetic(n=300, n_labels=4, image_dim=6, text_dim=9, seed=1)
    image = make_synthetic(n=300, n_labels=4, image_dim=6, text_dim=9, seed=1, modalities=("image",))
    text = make_synthetic(n=300, n_labels=4, image_dim=6, text_dim=9, seed=1, modalities=("text",))
    assert image.modalities == ("image",) and image.has_image and not image.has_text
    assert text.modalities == ("text",) and text.image is None and not text.image_is_pixels
    assert both.modalities == ("image", "text")
    assert (image.image_dim, image.text_dim, text.image_dim, text.text_dim) == (6, None, None, 9)
    # the same items as the cross-modal set of the same seed, one modality left out
    for f in ("labels", "query_idx", "retrieval_idx", "train_idx"):
        assert torch.equal(getattr(image, f), getattr(both, f)) and torch.equal(getattr(text, f), getattr(both, f))
    assert torch.equal(image.image, both.image) and torch.equal(text.text, both.text)
    assert "text=none" in repr(image) and "image=none" in repr(text)
    # fingerprints and row hashes work with a modality absent, and tell the sets apart
    assert len({data_fingerprint(d)["content"] for d in (both, image, text)}) == 3
    assert row_hashes(image, [0, 1]).shape == (2,) and row_hashes(text, [0, 1]).shape == (2,)
    single = make_synthetic(n=300, n_labels=4, image_dim=6, seed=1, modalities=("image",), max_labels=1)
    assert torch.equal(single.labels.sum(1), torch.ones(300))
    with pytest.raises(DataError, match="modalities must be one or both"):
        make_synthetic(n=300, modalities=("audio",))


def test_container_rules_for_single_modality_and_the_relaxed_split():
    rng = np.random.default_rng(0)
    labels = np.eye(3)[rng.integers(3, size=20)]
    kw = dict(query_idx=np.arange(4), retrieval_idx=np.arange(4, 16), name="x")
    d = from_arrays(rng.random((20, 5)), None, labels, train_idx=np.arange(16, 20), **kw)  # training outside the database
    assert d.text is None and d.image.dtype == torch.float32 and d.n == 20
    with pytest.raises(DataError, match="x: needs an image or a text modality"):
        from_arrays(None, None, labels, train_idx=np.arange(16, 20), **kw)
    with pytest.raises(DataError, match="train_idx and query_idx overlap in 2 items .*never trained on"):
        from_arrays(None, rng.random((20, 5)), labels, train_idx=np.arange(2, 8), **kw)
    with pytest.raises(DataError, match="row counts disagree: text has 19, labels have 20"):
        from_arrays(None, rng.random((19, 5)), labels, train_idx=[16], **kw)
    with pytest.raises(DataError, match="class_names must be 3 strings"):
        from_arrays(None, rng.random((20, 5)), labels, train_idx=[16], class_names=["a"], **kw)


# --- dchml .npz and MATLAB files with one feature array --------------------------------------

def test_npz_with_one_modality_roundtrips(tmp_path):
    d = make_synthetic(n=200, n_labels=4, image_dim=6, seed=2, modalities=("image",))
    save_npz(d, tmp_path / "img.npz")
    with np.load(tmp_path / "img.npz") as z:
        assert "text" not in z.files
    back = load_dataset(str(tmp_path / "img.npz"))
    assert back.text is None and torch.equal(back.image, d.image) and torch.equal(back.train_idx, d.train_idx)
    # text only, class numbers instead of label rows, the split from the seed
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "txt.npz", text=rng.random((50, 7)), labels=rng.integers(1, 4, size=50))
    t = load_dataset(str(tmp_path / "txt.npz"))
    assert t.modalities == ("text",) and t.labels.shape == (50, 3) and torch.equal(t.labels.sum(1), torch.ones(50))
    np.savez(tmp_path / "none.npz", labels=np.eye(2)[[0, 1] * 5])
    with pytest.raises(DataError, match=r"none.npz: missing array\(s\) \['image or text'\]"):
        load_dataset(str(tmp_path / "none.npz"))


def test_mat_single_modality_all_layout(tmp_path):
    rng = np.random.default_rng(1)
    feats, classes = rng.random((40, 5)), rng.integers(1, 5, size=40)  # 1-based class numbers
    scipy.io.savemat(tmp_path / "feats.mat", {"X": feats, "Y": classes[None, :]})  # a MATLAB row vector
    d = load_dataset(str(tmp_path / "feats.mat"))
    assert d.modalities == ("image",) and d.labels.shape == (40, 4)
    assert torch.equal(d.labels.argmax(1), torch.from_numpy(classes - 1))
    # a v7.3 file whose only array is named as text: the text modality
    with h5py.File(tmp_path / "bow.mat", "w") as f:
        f["bow"], f["labels"] = (rng.random((40, 9)) < 0.3).T, np.eye(3)[rng.integers(3, size=40)].T
    assert load_dataset(str(tmp_path / "bow.mat")).modalities == ("text",)
    scipy.io.savemat(tmp_path / "nolab.mat", {"X": feats})
    with pytest.raises(DataError, match="no labels array found"):
        load_dataset(str(tmp_path / "nolab.mat"))
    scipy.io.savemat(tmp_path / "frac.mat", {"X": feats, "gnd": classes + 0.5})
    with pytest.raises(DataError, match="gnd holds class numbers, but item 1 has .*not an integer"):
        load_dataset(str(tmp_path / "frac.mat"))


def test_mat_train_test_layout(tmp_path):
    rng = np.random.default_rng(2)
    tr, te, db = rng.random((30, 4)), rng.random((10, 4)), rng.random((25, 4))
    ytr, yte, ydb = rng.integers(0, 3, 30), rng.integers(0, 3, 10), rng.integers(0, 3, 25)
    scipy.io.savemat(tmp_path / "sdh.mat", {"traindata": tr, "traingnd": ytr[:, None], "testdata": te,
                                            "testgnd": yte[:, None]})
    d = load_dataset(str(tmp_path / "sdh.mat"))
    assert _split_sizes(d) == (10, 30, 30) and torch.equal(d.retrieval_idx, d.train_idx)  # database = training set
    assert torch.allclose(d.image[d.query_idx], torch.from_numpy(te).float())
    assert torch.equal(d.labels[d.train_idx].argmax(1), torch.from_numpy(ytr))
    scipy.io.savemat(tmp_path / "db.mat", {"Xtrain": tr, "Ytrain": ytr, "Xtest": te, "Ytest": yte, "Xdb": db, "Ydb": ydb})
    e = load_dataset(str(tmp_path / "db.mat"))
    assert _split_sizes(e) == (10, 25, 30) and not set(e.train_idx.tolist()) & set(e.retrieval_idx.tolist())
    scipy.io.savemat(tmp_path / "bad.mat", {"traindata": tr, "traingnd": ytr, "testdata": te[:, :3], "testgnd": yte})
    with pytest.raises(DataError, match="subsets differ in feature or label width"):
        load_dataset(str(tmp_path / "bad.mat"))


# --- list files with JPEGs ---------------------------------------------------------------------

def test_list_files_load_stream_and_deduplicate(tmp_path):
    from PIL import Image

    folder = make_list_folder(tmp_path / "lists", images=tmp_path / "pics")
    first = (folder / "test.txt").read_text().splitlines()[0].split()
    _rewrite(folder / "test.txt", 1, f"{first[0]}\t" + "  ".join(first[1:]) + " \n")  # any whitespace separates
    with pytest.raises(DataError, match=r"test.txt: line 1: image file .*lists/img/0.jpg not found \(and 11 more"):
        load_dataset(str(folder), image_size=16)  # the images are elsewhere: name the root
    d = load_dataset(str(folder / "test.txt"), image_size=16, image_root=str(tmp_path / "pics"))
    assert d.modalities == ("image",) and d.n == 12 and _split_sizes(d) == (3, 9, 4)
    assert d.train_idx.tolist() == [3, 5, 8, 9] and d.protocol is None
    _, labels = pixels(12, 24, 0)
    assert torch.equal(d.labels, torch.from_numpy(labels).float())
    expect = np.asarray(Image.open(tmp_path / "pics/img/7.jpg").convert("RGB").resize((16, 16), Image.BILINEAR))
    assert torch.equal(d.image[7], torch.from_numpy(expect.transpose(2, 0, 1).copy()))
    assert d.source["image_root"] == str(tmp_path / "pics") and load_recorded(d.source).n == 12
    # a missing image: named with its list file and line, or dropped with skip_bad_images
    (tmp_path / "pics/img/6.jpg").unlink()
    with pytest.raises(DataError, match=r"database.txt: line 4: image file .*6.jpg not found"):
        load_dataset(str(folder), image_root=str(tmp_path / "pics"))
    kept = load_dataset(str(folder), image_root=str(tmp_path / "pics"), skip_bad_images=True, image_workers=0)
    assert kept.n == 11 and len(kept.image.skipped) == 1 and _split_sizes(kept) == (3, 8, 4)


def _rewrite(path, line, text):
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text
    path.write_text("".join(lines))


@pytest.mark.parametrize("change, match", [
    (lambda f: _rewrite(f / "train.txt", 2, "img/5.jpg 1 1 1 1\n"),
     r"train.txt: line 2: img/5.jpg is listed with labels 1 1 1 1, but database.txt line 3 gives"),
    (lambda f: _rewrite(f / "database.txt", 2, "img/4.jpg 0 1 0\n"), r"database.txt: line 2: 3 label values, expected 4"),
    (lambda f: _rewrite(f / "test.txt", 3, "img/2.jpg 0 x 1 0\n"), r"test.txt: line 3: label value 'x' is not an integer"),
    (lambda f: _rewrite(f / "test.txt", 1, "img/0.jpg 0 2 1 0\n"), r"test.txt: line 1: label values must be 0 or 1, got 2"),
    (lambda f: _rewrite(f / "test.txt", 2, "img/3.jpg 1 0 0 0\n"),
     r"test.txt: line 2: this query image is also on line 1 of database.txt"),
    (lambda f: _rewrite(f / "test.txt", 2, "img/1.jpg\n"), r"test.txt: line 2: no labels after the image path"),
    (lambda f: _rewrite(f / "test.txt", 2, "img/1.jpg 0 0 0 0\n"), r"test.txt: 1 rows have no label \(first: row 2\)"),
    (lambda f: (f / "train.txt").unlink(), r"missing list file\(s\) train.txt"),
])
def test_list_file_errors_name_the_file_and_line(tmp_path, change, match):
    folder = make_list_folder(tmp_path / "lists", n=10, size=8)
    change(folder)
    with pytest.raises(DataError, match=match) as e:
        load_dataset(str(folder), image_size=8)
    assert "\n" not in str(e.value)


def test_list_files_with_class_numbers_and_a_protocol(tmp_path):
    folder = make_list_folder(tmp_path / "lists", n=10, size=8)
    for name in ("test.txt", "database.txt", "train.txt"):  # one class number per line instead of a 0/1 row
        lines = (folder / name).read_text().splitlines()
        (folder / name).write_text("".join(f"{ln.split()[0]} {int(ln.split()[0][4:-4]) % 10}\n" for ln in lines))
    d = load_dataset(str(folder), image_size=8, protocol="CIFAR10-1")
    assert d.labels.shape == (10, 10) and d.labels[7].argmax() == 7 and _split_sizes(d) == (3, 7, 4)
    assert d.protocol == {"name": "cifar10-1", "topk": 54000}  # the lists keep their split
    with pytest.raises(DataError, match="protocol imagenet is for 100 classes; the data has 10 label columns"):
        load_dataset(str(folder), image_size=8, protocol="imagenet-100")


# --- the CIFAR-10 python folder ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """10 classes x 620 images: enough for cifar10-1 and cifar10, not for cifar10-2."""
    root = tmp_path_factory.mktemp("cifar")
    make_cifar_folder(root / "cifar-10-batches-py", per_class=620, seed=1)
    return root


def test_cifar_folder_loads_under_cifar10_1_by_default(cifar):
    assert default_protocol(str(cifar)) == default_protocol(str(cifar / "cifar-10-batches-py")) == "cifar10-1"
    d = load_dataset(str(cifar))
    assert d.modalities == ("image",) and d.image.shape == (6200, 3, 32, 32) and d.image.dtype == torch.uint8
    assert d.class_names == CIFAR_CLASSES and d.protocol == {"name": "cifar10-1", "topk": 54000}
    assert torch.equal(d.image[:, 0, 0, 0].long(), d.labels.argmax(1))  # pixels stay with their labels
    assert _split_sizes(d) == (1000, 5200, 5000) and set(d.train_idx.tolist()) <= set(d.retrieval_idx.tolist())
    assert d.labels[d.query_idx].sum(0).tolist() == [100.0] * 10 and d.labels[d.train_idx].sum(0).tolist() == [500.0] * 10
    again, other = load_dataset(str(cifar / "cifar-10-batches-py" / "test_batch")), load_dataset(str(cifar), seed=1)
    assert torch.equal(again.query_idx, d.query_idx) and not torch.equal(other.query_idx, d.query_idx)
    assert torch.equal(load_recorded(d.source).train_idx, d.train_idx) and d.source["protocol"] == "cifar10-1"
    c = load_dataset(str(cifar), protocol="cifar10")  # training items outside the database
    assert _split_sizes(c) == (1000, 200, 5000) and not set(c.train_idx.tolist()) & set(c.retrieval_idx.tolist())
    with pytest.raises(DataError, match=r"cifar10-2 needs 6000 items of each of 10 classes \(1000 queries \+ 5000 "
                                        r"training\); class 0 \(airplane\) has 620 \(every class falls short\)"):
        load_dataset(str(cifar), protocol="cifar10-2")
    with pytest.raises(DataError, match="protocol coco takes its split from list files"):
        load_dataset(str(cifar), protocol="coco")
    with pytest.raises(DataError, match="unknown protocol 'cifar100'"):
        load_dataset(str(cifar), protocol="cifar100")


def test_cifar_folder_too_small_for_its_protocol(tmp_path):
    folder = make_cifar_folder(tmp_path / "small", per_class=70, meta=False)
    with pytest.raises(DataError, match=r"^small: cifar10-1 needs 600 items of each of 10 classes \(100 queries \+ "
                                        r"500 training\); class 0 has 70 \(every class falls short\)$"):
        load_dataset(str(folder))
    (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:700])
    with pytest.raises(DataError, match=r"data_batch_2: truncated CIFAR-10 batch file"):
        load_dataset(str(folder))
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"missing batch file\(s\) data_batch_4"):
        load_dataset(str(folder), format="cifar")


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("evil", [_System, _Exec])
def test_a_batch_file_whose_pickle_would_run_code_is_refused_and_nothing_runs(tmp_path, evil, capsys):
    from dchml.app.cli import main

    folder = make_cifar_folder(tmp_path / "cifar-10-batches-py", per_class=6)
    marker = tmp_path / "MARKER"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"filenames": [evil(marker)]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path))
    message = str(e.value)
    assert message.startswith(str(folder / "data_batch_3") + ": refused: the pickle calls ") and "\n" not in message
    assert "nothing from it was run" in message and not marker.exists()
    capsys.readouterr()
    code = main(["features", "--data", str(tmp_path), "--image-weights", "random", "--out", str(tmp_path / "f.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "data_batch_3: refused" in err and not marker.exists()


def test_arrays_pickled_by_python3_load_and_object_arrays_are_refused(tmp_path):
    folder = make_cifar_folder(tmp_path / "c", per_class=6)
    batch = {"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2, 3]}  # str keys, protocol 5
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=5))
    from dchml.data.cifar import load_cifar_arrays

    arrays = load_cifar_arrays(folder)
    assert arrays["image"].shape == (60 - 10 + 3, 3, 32, 32)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3), object), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="test_batch: refused: the pickle asks for a dtype of Python objects"):
        load_cifar_arrays(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"test_batch: 'data' must be uint8 \(n, 3072\) pixels"):
        load_cifar_arrays(folder)


# --- protocols ------------------------------------------------------------------------------------

def test_protocols_by_name_and_on_the_command_line():
    from dchml.app.arguments import build_parser
    from dchml.data import FORMATS

    assert set(PROTOCOLS) == {"cifar10", "cifar10-1", "cifar10-2", "nus-wide", "coco", "imagenet"}
    assert [protocol_topk(n) for n in ("cifar10", "nuswide", "MS-COCO", "imagenet-100")] == [54000, 5000, 5000, 1000]
    assert default_protocol("synthetic") is None and default_protocol("missing/path") is None
    assert default_protocol("x", format="cifar") == "cifar10-1" and default_protocol("x", format="list") is None
    args = build_parser().parse_args(["train", "--data", "lists/", "--format", "list", "--protocol", "imagenet",
                                      "--image-root", "/pics", "--out", "o"])
    assert (args.format, args.protocol, args.image_root) == ("list", "imagenet", "/pics")
    assert {"list", "cifar"} <= set(FORMATS)
    assert build_parser().parse_args(["features", "--data", "c", "--format", "cifar", "--out", "f.npz"]).format == "cifar"


def test_nus_wide_draw_on_multi_label_features(tmp_path):
    rng = np.random.default_rng(3)
    n = 21 * 800
    labels = np.zeros((n, 21), dtype=np.float32)
    labels[np.arange(n), np.arange(n) % 21] = 1
    labels[rng.random(n) < 0.3, rng.integers(21)] = 1  # a second label on some items
    np.savez(tmp_path / "nus.npz", image=rng.random((n, 3)).astype(np.float32), labels=labels)
    d = load_dataset(str(tmp_path / "nus.npz"), protocol="nus-wide", seed=5)
    assert _split_sizes(d) == (2100, n - 2100, 10_500) and d.protocol["topk"] == 5000
    assert (d.labels[d.query_idx].sum(0) >= 100).all() and set(d.train_idx.tolist()) <= set(d.retrieval_idx.tolist())
    q, r, t = draw_split(get_protocol("nus-wide"), labels, 5, "x")
    assert torch.equal(q, d.query_idx) and torch.equal(t, d.train_idx)
    with pytest.raises(DataError, match="nus-wide is for 21 classes; the data has 20"):
        draw_split(get_protocol("nus-wide"), labels[:, :20], 0, "x")


# --- `dchml features` on images without text --------------------------------------------------------

def test_features_of_image_only_data(tmp_path):
    from dchml.method.features import extract_features

    folder = make_list_folder(tmp_path / "lists", n=10, size=8)
    data = load_dataset(str(folder), image_size=64, image_workers=0)
    summary = extract_features(data, str(tmp_path / "f.npz"), image_weights="random", batch_size=8)
    assert summary["text_dim"] is None and summary["image_dim"] == 4096
    with np.load(tmp_path / "f.npz") as z:
        assert "text" not in z.files and z["image"].shape == (10, 4096)
    back = load_dataset(str(tmp_path / "f.npz"))
    assert back.modalities == ("image",) and torch.equal(back.query_idx, data.query_idx)
    assert torch.equal(back.train_idx, data.train_idx) and back.encoders["image"]["backbone"] == "alexnet"
