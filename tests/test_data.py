"""Tests of dchml.data: the container's validation, the synthetic set, the split protocol and
every loader on small files generated in tmp_path (good files and bad ones)."""
import numpy as np
import pytest
import torch

from dchml.data import CrossModalData, DataError, default_split_sizes, make_synthetic, paper_split

SMALL = dict(n=600, n_labels=7, image_dim=32, text_dim=80, n_query=100, n_train=200)


@pytest.fixture(scope="module")
def small():
    return make_synthetic(**SMALL, seed=3)


# --- synthetic ---------------------------------------------------------------------------------

def test_synthetic_shapes_and_contract(small):
    d = small
    assert (d.n, d.n_labels, d.image_dim, d.text_dim) == (600, 7, 32, 80)
    assert not d.image_is_pixels
    assert d.image.dtype == d.text.dtype == d.labels.dtype == torch.float32
    assert len(d.query_idx) == 100 and len(d.retrieval_idx) == 500 and len(d.train_idx) == 200
    assert set(d.train_idx.tolist()) <= set(d.retrieval_idx.tolist())
    assert not set(d.query_idx.tolist()) & set(d.retrieval_idx.tolist())
    assert (d.labels.sum(1) >= 1).all() and set(d.labels.unique().tolist()) <= {0.0, 1.0}
    assert set(d.text.unique().tolist()) <= {0.0, 1.0}  # binary presence by default
    assert d.name == "synthetic"


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b, c = (make_synthetic(**SMALL, seed=s) for s in (1, 1, 2))
    for f in ("image", "text", "labels", "query_idx", "retrieval_idx", "train_idx"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.labels, c.labels) and not torch.equal(a.image, c.image)


def test_synthetic_does_not_touch_global_rng():
    torch.manual_seed(0); np.random.seed(0)
    expect_t, expect_n = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0); np.random.seed(0)
    make_synthetic(**SMALL, seed=5)
    assert torch.equal(torch.rand(3), expect_t) and np.array_equal(np.random.rand(3), expect_n)


def test_synthetic_default_shape_like_nus_wide():
    d = make_synthetic()
    assert (d.n, d.n_labels, d.text_dim) == (12_000, 21, 1000)
    assert (len(d.query_idx), len(d.retrieval_idx), len(d.train_idx)) == (2000, 10_000, 5000)
    per_item = d.labels.sum(1)
    assert per_item.min() >= 1 and 1.5 < per_item.mean() < 2.5 and (per_item >= 3).any()
    freq = d.labels.sum(0).sort(descending=True).values
    assert freq[0] > 5 * freq[-1]  # power-law label frequency
    # Co-occurrence: some label pairs co-occur far more often than independence predicts.
    p = d.labels.mean(0)
    joint = (d.labels.T @ d.labels) / d.n
    lift = joint / torch.outer(p, p)
    lift.fill_diagonal_(0)
    assert lift.max() > 3
    words = (d.text > 0).sum(1).float()
    assert 15 < words.mean() < 40 and d.text.mean() < 0.05  # sparse BoW


def test_synthetic_small_n_uses_the_split_rule():
    d = make_synthetic(n=300, n_labels=4, image_dim=8, text_dim=30)
    assert (len(d.query_idx), len(d.retrieval_idx), len(d.train_idx)) == (50, 250, 125)


def test_synthetic_text_counts_option():
    d = make_synthetic(**SMALL, seed=0, text_counts=True)
    assert d.text.max() > 1 and torch.equal(d.text, d.text.round())


def test_synthetic_features_carry_label_information():
    # A least-squares probe on the training set predicts query labels far above chance in both
    # modalities, but not perfectly (the set must stay hard).
    d = make_synthetic(n=3000, n_labels=7, image_dim=64, text_dim=200, n_query=500, n_train=1500, seed=0)
    for x in (d.image, d.text):
        xt = torch.cat([x[d.train_idx], torch.ones(len(d.train_idx), 1)], 1).double()
        w = torch.linalg.lstsq(xt, d.labels[d.train_idx].double(), driver="gelsd").solution
        xq = torch.cat([x[d.query_idx], torch.ones(len(d.query_idx), 1)], 1).double()
        pred = (xq @ w).argmax(1)
        hit = d.labels[d.query_idx, pred].mean().item()  # top-1 predicted label is a true label
        base = d.labels[d.query_idx].mean(0).max().item()  # always guessing the commonest label
        assert base + 0.15 < hit < 0.98, (hit, base)


@pytest.mark.parametrize("bad, match", [
    (dict(n=1), "n >= 2"), (dict(words_per_item=(5, 2)), "words_per_item"),
    (dict(text_background=1.5), "text_background"), (dict(n_query=600), "n_query"),
    (dict(n_train=10_000), "n_train"),
])
def test_synthetic_bad_arguments(bad, match):
    with pytest.raises(DataError, match=match):
        make_synthetic(**{**SMALL, **bad})


# --- splits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, expect", [
    (195_834, (5000, 10_000)), (122_218, (5000, 10_000)), (19_999, (2000, 10_000)),
    (20_015, (2000, 10_000)), (12_000, (2000, 10_000)), (600, (100, 500)), (2, (1, 1)),
])
def test_default_split_sizes_follow_the_paper(n, expect):
    assert default_split_sizes(n) == expect


def test_paper_split_is_deterministic_and_valid():
    q, r, t = paper_split(1000, seed=4)
    q2, r2, t2 = paper_split(1000, seed=4)
    assert torch.equal(q, q2) and torch.equal(r, r2) and torch.equal(t, t2)
    assert not torch.equal(q, paper_split(1000, seed=5)[0])
    assert torch.equal(torch.sort(torch.cat([q, r])).values, torch.arange(1000))
    assert set(t.tolist()) <= set(r.tolist()) and q.dtype == torch.int64


# --- the container's validation ----------------------------------------------------------------

def _fields(d):
    return dict(image=d.image, text=d.text, labels=d.labels, query_idx=d.query_idx,
                retrieval_idx=d.retrieval_idx, train_idx=d.train_idx, name="x.npz")


def _labels_not_binary(f):
    f["labels"] = f["labels"].clone(); f["labels"][3, 0] = 2.0


def _unlabeled_row(f):
    f["labels"] = f["labels"].clone(); f["labels"][5] = 0.0


def _nan_image(f):
    f["image"] = f["image"].clone(); f["image"][7, 1] = float("nan")


@pytest.mark.parametrize("mutate, match", [
    (lambda f: f.update(text=f["text"][:-1]), "row counts disagree"),
    (_labels_not_binary, "labels must be 0/1, found 2.0 at row 3"),
    (_unlabeled_row, "rows have no label .*row 5"),
    (_nan_image, "NaN or Inf .*row 7"),
    (lambda f: f.update(query_idx=torch.tensor([0, 600])), "out of range"),
    (lambda f: f.update(query_idx=f["retrieval_idx"][:3]), "overlap"),
    (lambda f: f.update(train_idx=f["query_idx"][:3]), "train_idx and query_idx overlap .*never trained on"),
    (lambda f: f.update(query_idx=f["query_idx"].to(torch.int32)), "int64"),
    (lambda f: f.update(image=f["image"][:, :, None]), "image must be"),
    (lambda f: f.update(labels=f["labels"].double()), "float32"),
])
def test_container_rejects_inconsistent_data(small, mutate, match):
    f = _fields(small)
    mutate(f)
    with pytest.raises(DataError, match=match) as e:
        CrossModalData(**f)
    assert str(e.value).startswith("x.npz:")  # the message names the source


# --- loaders: fixtures are small files written to tmp_path by the code below -------------------

import h5py  # noqa: E402
import scipy.io  # noqa: E402
import scipy.sparse  # noqa: E402

from dchml.data import load_dataset, save_npz  # noqa: E402

FIELDS = ("image", "text", "labels", "query_idx", "retrieval_idx", "train_idx")


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(n=60, n_labels=5, image_dim=8, text_dim=12, n_query=10, n_train=20, seed=7)


def _np(d):
    return {k: getattr(d, k).numpy().copy() for k in FIELDS}  # copies: tests mutate them


def _same(a, b):
    for k in FIELDS:
        assert torch.equal(getattr(a, k), getattr(b, k)), k


def _write_v73(path, variables, *, matlab_layout=True):
    """An HDF5 file laid out as MATLAB -v7.3 writes it: a 512-byte text header, then every array
    transposed (column-major); structs are groups."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            if isinstance(value, dict):
                g = f.create_group(name)
                for k, v in value.items():
                    g.create_dataset(k, data=np.asarray(v).T if matlab_layout else v)
            else:
                f.create_dataset(name, data=np.asarray(value).T if matlab_layout else value)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Nov 26 2026 HDF5 schema 1.00 .")


# npz

def test_npz_roundtrip_keeps_everything(tiny, tmp_path):
    p = tmp_path / "d.npz"
    save_npz(tiny, p)
    assert [q.name for q in tmp_path.iterdir()] == ["d.npz"]  # no temporary file left behind
    back = load_dataset(str(p))
    _same(tiny, back)
    assert back.name == "d.npz"
    _same(tiny, load_dataset(p, format="npz"))  # a pathlib.Path and an explicit format work too


def test_npz_pixels_and_split_from_seed(tmp_path):
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, size=(40, 3, 5, 4), dtype=np.uint8)
    labels = np.eye(4, dtype=np.float32)[rng.integers(4, size=40)]
    p = tmp_path / "pix.npz"
    np.savez(p, image=pix, text=rng.random((40, 6)), labels=labels)
    a, b = load_dataset(str(p), seed=1), load_dataset(str(p), seed=1)
    assert a.image_is_pixels and a.image_dim is None and a.image.dtype == torch.uint8
    assert torch.equal(a.image, torch.from_numpy(pix)) and a.text.dtype == torch.float32
    assert (len(a.query_idx), len(a.retrieval_idx), len(a.train_idx)) == (6, 34, 34)  # the rule
    _same(a, b)
    assert not torch.equal(a.query_idx, load_dataset(str(p), seed=2).query_idx)
    c = load_dataset(str(p), n_query=10, n_train=5)
    assert (len(c.query_idx), len(c.train_idx)) == (10, 5)


def test_npz_query_and_retrieval_only_draws_train(tiny, tmp_path):
    arr = _np(tiny)
    del arr["train_idx"]
    np.savez(tmp_path / "qr.npz", **arr)
    d = load_dataset(str(tmp_path / "qr.npz"), seed=3)
    assert torch.equal(d.query_idx, tiny.query_idx) and torch.equal(d.train_idx, tiny.retrieval_idx)


def _npz_case(tmp_path, tiny, mutate):
    arr = _np(tiny)
    mutate(arr)
    p = tmp_path / "bad.npz"
    np.savez(p, **arr)
    return p


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.update(text=a["text"][:-1]), "row counts disagree"),
    (lambda a: a["labels"].__setitem__((2, 1), 0.5), "labels must be 0/1, found 0.5 at row 2"),
    (lambda a: a["labels"].__setitem__(4, 0.0), "rows have no label"),
    (lambda a: a["image"].__setitem__((1, 1), np.nan), "NaN"),
    (lambda a: a.update(query_idx=a["retrieval_idx"][:2]), "overlap"),
    (lambda a: a.update(retrieval_idx=a["retrieval_idx"] + 100), "out of range"),
    (lambda a: a.update(extra=np.zeros(3)), r"unknown arrays \['extra'\]"),
    (lambda a: a.pop("labels"), r"missing array\(s\) \['labels'\]"),
    (lambda a: a.pop("query_idx"), "no index arrays, query_idx \\+ retrieval_idx, or all three"),
    (lambda a: a.update(text=np.array([{"a": 1}] * 60, dtype=object)), "unreadable .npz"),
    (lambda a: a.update(image=a["image"][:, :, None]), "image must be"),
])
def test_npz_bad_files(tiny, tmp_path, mutate, match):
    p = _npz_case(tmp_path, tiny, mutate)
    with pytest.raises(DataError, match=match) as e:
        load_dataset(str(p))
    assert "bad.npz" in str(e.value)


def test_npz_truncated_and_missing(tiny, tmp_path):
    p = tmp_path / "t.npz"
    save_npz(tiny, p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match="t.npz is damaged"):
        load_dataset(str(p))
    with pytest.raises(DataError, match="nope.npz: file not found"):
        load_dataset(str(tmp_path / "nope.npz"))


def test_drop_unlabeled_removes_rows_and_remaps_indices(tiny, tmp_path):
    arr = _np(tiny)
    q0 = int(arr["query_idx"][0])
    arr["labels"][q0] = 0.0  # an unlabeled query item
    np.savez(tmp_path / "u.npz", **arr)
    with pytest.raises(DataError, match="drop_unlabeled=True"):
        load_dataset(str(tmp_path / "u.npz"))
    d = load_dataset(str(tmp_path / "u.npz"), drop_unlabeled=True)
    assert d.n == 59 and len(d.query_idx) == 9
    keep = np.delete(np.arange(60), q0)
    # Every surviving index points at the same item as before.
    for k in ("query_idx", "retrieval_idx", "train_idx"):
        old = [i for i in arr[k] if i != q0]
        assert torch.equal(d.image[getattr(d, k)], torch.from_numpy(arr["image"][old]))
    assert torch.equal(d.image, torch.from_numpy(arr["image"][keep]))
    # Without a split in the file, unlabeled rows are dropped before the split is drawn.
    np.savez(tmp_path / "u2.npz", image=arr["image"], text=arr["text"], labels=arr["labels"])
    d2 = load_dataset(str(tmp_path / "u2.npz"), drop_unlabeled=True)
    assert d2.n == 59 and len(d2.query_idx) + len(d2.retrieval_idx) == 59


# MATLAB v5 and v7.3

def _all_layout(d, *, sparse_text=False, split=True):
    a = _np(d)
    v = {"IAll": a["image"], "YAll": scipy.sparse.csc_matrix(a["text"]) if sparse_text else a["text"],
         "LAll": a["labels"]}
    if split:
        v["param"] = {"indexQuery": a["query_idx"] + 1.0, "indexDatabase": a["retrieval_idx"] + 1.0,
                      "indexTrain": a["train_idx"] + 1.0}
    return v


@pytest.mark.parametrize("sparse_text", [False, True])
def test_mat_v5_all_layout_with_param_split(tiny, tmp_path, sparse_text):
    p = tmp_path / "nus.mat"
    scipy.io.savemat(p, _all_layout(tiny, sparse_text=sparse_text))
    d = load_dataset(str(p))
    _same(tiny, d)


def test_mat_v73_matlab_layout(tiny, tmp_path):
    p = tmp_path / "flickr.mat"
    _write_v73(p, _all_layout(tiny))
    with h5py.File(p, "r") as f:  # the fixture really is transposed, as MATLAB writes it
        assert f["IAll"].shape == (8, 60)
    _same(tiny, load_dataset(str(p)))


def test_mat_v73_written_by_python_is_oriented(tiny, tmp_path):
    p = tmp_path / "py.h5"
    _write_v73(p, _all_layout(tiny, split=False), matlab_layout=False)
    d = load_dataset(str(p), seed=0)
    assert torch.equal(d.image, tiny.image) and torch.equal(d.labels, tiny.labels)


def test_mat_v73_pixels_and_sparse_text(tmp_path):
    rng = np.random.default_rng(1)
    n, h, w = 12, 5, 7
    pix = rng.integers(0, 256, size=(n, 3, h, w)).astype(np.uint8)
    text = (rng.random((n, 9)) < 0.3).astype(np.float64)
    labels = np.eye(3)[rng.integers(3, size=n)]
    p = tmp_path / "pix.mat"
    # MATLAB keeps images as H x W x 3 x n; -v7.3 stores that transposed: (n, 3, W, H) in HDF5.
    _write_v73(p, {"images": pix.transpose(2, 3, 1, 0), "LAll": labels})
    csc = scipy.sparse.csc_matrix(text)
    with h5py.File(p, "a") as f:
        g = f.create_group("YAll")
        g.attrs["MATLAB_sparse"] = np.uint64(n)
        g.create_dataset("data", data=csc.data)
        g.create_dataset("ir", data=csc.indices.astype(np.uint64))
        g.create_dataset("jc", data=csc.indptr.astype(np.uint64))
    d = load_dataset(str(p))  # the pixel array is streamed: read item by item when used
    assert d.image.shape == (n, 3, h, w) and torch.equal(d.image.load(), torch.from_numpy(pix))
    assert torch.equal(load_dataset(str(p), stream_images=False).image, torch.from_numpy(pix))
    assert torch.equal(d.text, torch.from_numpy(text).float())


def test_mat_split_layout_matches_training_rows(tiny, tmp_path):
    a = _np(tiny)
    q, r = a["query_idx"], a["retrieval_idx"]
    tr = r[[0, 3, 5]]
    extra = dict(image=np.full((1, 8), 9.0), text=np.ones((1, 12)), labels=np.eye(5)[[2]])
    v = {"I_te": a["image"][q], "T_te": a["text"][q], "L_te": a["labels"][q],
         "I_db": a["image"][r], "T_db": a["text"][r], "L_db": a["labels"][r],
         "I_tr": np.concatenate([a["image"][tr], extra["image"]]),
         "T_tr": np.concatenate([a["text"][tr], extra["text"]]),
         "L_tr": np.concatenate([a["labels"][tr], extra["labels"]])}
    p = tmp_path / "raw_mir.mat"
    _write_v73(p, v)
    d = load_dataset(str(p))
    assert torch.equal(d.image[d.query_idx], tiny.image[tiny.query_idx])
    assert len(d.retrieval_idx) == len(r) + 1  # the training row absent from the database joins it
    assert torch.equal(d.image[d.train_idx[:3]], tiny.image[tr])
    assert torch.equal(d.image[d.train_idx[3]], torch.full((8,), 9.0))


def test_mat_folder_of_files(tiny, tmp_path):
    v = _all_layout(tiny)
    scipy.io.savemat(tmp_path / "mir-iall.mat", {"IAll": v["IAll"]})
    scipy.io.savemat(tmp_path / "mir-rest.mat", {k: v[k] for k in ("YAll", "LAll", "param")})
    _same(tiny, load_dataset(str(tmp_path)))
    scipy.io.savemat(tmp_path / "dup.mat", {"LAll": v["LAll"]})
    with pytest.raises(DataError, match="'LAll' appears in more than one"):
        load_dataset(str(tmp_path))


def test_mat_truncated_hdf5_file(tiny, tmp_path):
    p = tmp_path / "cut.mat"
    _write_v73(p, _all_layout(tiny))
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
    with pytest.raises(DataError, match=r"cut.mat: corrupt or truncated HDF5 \(MATLAB v7.3\) file"):
        load_dataset(str(p))


def test_mat_truncated_v5_file(tiny, tmp_path):
    p = tmp_path / "cut5.mat"
    scipy.io.savemat(p, _all_layout(tiny))
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match="cut5.mat: corrupt or truncated MATLAB v5 file"):
        load_dataset(str(p))


@pytest.mark.parametrize("change, match", [
    (lambda v: v.update(YAll=v["YAll"][:-2]), "row counts disagree"),
    (lambda v: v.update(LAll=v["LAll"] * 2), "labels must be 0/1"),
    (lambda v: v.pop("LAll"), "no labels array found; expected one of LAll"),
    (lambda v: v["param"].update(indexQuery=np.r_[0.0, v["param"]["indexQuery"][1:]]), "1-based in \\[1, 60\\]"),
    (lambda v: v.update(IAll=np.zeros((60, 2, 2))), "IAll \\(image\\) must be"),
])
def test_mat_bad_files(tiny, tmp_path, change, match):
    v = _all_layout(tiny)
    change(v)
    p = tmp_path / "bad.mat"
    scipy.io.savemat(p, v)
    with pytest.raises(DataError, match=match):
        load_dataset(str(p))


def test_not_a_mat_file(tmp_path):
    p = tmp_path / "x.mat"
    p.write_bytes(b"hello world, not matlab")
    with pytest.raises(DataError, match="not a MATLAB file"):
        load_dataset(str(p))


# text lists

def _write_textlist(folder, d, *, features="txt", images=False):
    folder.mkdir(exist_ok=True)
    a = _np(d)
    np.savetxt(folder / "labels.txt", a["labels"], fmt="%d")
    np.savetxt(folder / "texts.txt", a["text"], fmt="%d")
    if features == "txt":
        np.savetxt(folder / "features.txt", a["image"], fmt="%.9g")
    elif features == "npy":
        np.save(folder / "features.npy", a["image"])
    if images:
        (folder / "images.txt").write_text("".join(f"im{i}.jpg\n" for i in range(d.n)))
    np.savetxt(folder / "test_idx.txt", a["query_idx"] + 1, fmt="%d")
    np.savetxt(folder / "database_idx.txt", a["retrieval_idx"] + 1, fmt="%d")
    np.savetxt(folder / "train_idx.txt", a["train_idx"] + 1, fmt="%d")
    return folder


@pytest.mark.parametrize("features", ["txt", "npy"])
def test_textlist_folder(tiny, tmp_path, features):
    folder = _write_textlist(tmp_path / "nus", tiny, features=features, images=True)
    d = load_dataset(str(folder))
    _same(tiny, d)
    _same(tiny, load_dataset(str(folder / "labels.txt")))  # a file of the folder works too


def test_textlist_reads_images(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(2)
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    (folder / "images.txt").write_text("\n".join(names) + "\n")
    np.savetxt(folder / "labels.txt", np.eye(2)[[0, 1, 0, 1, 1, 0]], fmt="%d")
    np.savetxt(folder / "bow.txt", rng.integers(0, 2, (6, 5)), fmt="%d", delimiter=",")
    d = load_dataset(str(folder), image_size=4, n_query=2, n_train=2)
    assert d.image.shape == (6, 3, 4, 4) and d.image.dtype == torch.uint8
    expect = np.asarray(Image.open(folder / "3.png").convert("RGB").resize((4, 4), Image.BILINEAR))
    assert torch.equal(d.image[3], torch.from_numpy(expect.transpose(2, 0, 1).copy()))
    (folder / "images.txt").write_text("\n".join(names[:5] + ["missing.png"]) + "\n")
    with pytest.raises(DataError, match="line 6: image file .*missing.png not found"):
        load_dataset(str(folder), image_size=4)


def _drop_line(path):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))


@pytest.mark.parametrize("break_it, match", [
    (lambda f: _drop_line(f / "texts.txt"), "labels.txt has 60 rows, texts.txt has 59"),
    (lambda f: _drop_line(f / "features.txt"), "features.txt has 59"),
    (lambda f: (f / "labels.txt").write_text("1 0\n0 1 1\n"), "labels.txt: not a numeric table"),
    (lambda f: (f / "test_idx.txt").write_text("0\n1\n"), "test_idx.txt: indices must be 1-based"),
    (lambda f: (f / "test_idx.txt").write_text("a\n"), "test_idx.txt: indices must be integers"),
    (lambda f: (f / "test_idx.txt").write_text((f / "database_idx.txt").read_text()), "overlap"),
    (lambda f: (f / "texts.txt").unlink(), "missing file texts.txt or text.txt or bow.txt"),
    (lambda f: (f / "bow.txt").write_text("1\n"), "both texts.txt and bow.txt"),
    (lambda f: [(f / n).unlink() for n in ("features.txt", "images.txt")], "no image data"),
    (lambda f: (f / "images.txt").write_text("a.jpg\n"), "images.txt lists 1 images"),
])
def test_textlist_bad_folders(tiny, tmp_path, break_it, match):
    folder = _write_textlist(tmp_path / "bad", tiny, images=True)
    break_it(folder)
    with pytest.raises(DataError, match=match):
        load_dataset(str(folder))


# load_dataset itself

def test_load_dataset_arguments(tiny, tmp_path):
    with pytest.raises(DataError, match="format must be one of auto, mat, txt, npz, indexmat, list, cifar, got 'csv'"):
        load_dataset("synthetic", format="csv")
    with pytest.raises(DataError, match="missing.mat: file not found"):
        load_dataset(str(tmp_path / "missing.mat"))
    p = tmp_path / "split.npz"
    save_npz(tiny, p)
    with pytest.raises(DataError, match="defines its own query/database split"):
        load_dataset(str(p), n_query=5)
    # Format detection from the bytes when the suffix says nothing.
    q = tmp_path / "noext"
    q.write_bytes(p.read_bytes())
    _same(tiny, load_dataset(str(q)))
    r = tmp_path / "v73.bin"
    _write_v73(r, _all_layout(tiny))
    _same(tiny, load_dataset(str(r)))
    with pytest.raises(DataError, match="cannot tell the format"):
        (tmp_path / "junk.bin").write_bytes(b"\x00" * 10)
        load_dataset(str(tmp_path / "junk.bin"))


def test_load_dataset_synthetic_passes_seed_and_sizes():
    a = load_dataset("synthetic", seed=4, n_query=100, n_train=300)
    assert (len(a.query_idx), len(a.train_idx)) == (100, 300)
    b = make_synthetic(seed=4, n_query=100, n_train=300)
    _same(a, b)


def test_mat_v5_single_label_column_stays_2d(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "one.mat"
    scipy.io.savemat(p, {"XAll": rng.random((20, 4)), "tags": rng.random((20, 3)), "labels": np.ones((20, 1))})
    # read as one (20, 1) label column: the one class every item has, which is no retrieval task
    with pytest.raises(DataError, match=r"label column 0 is set for every item.*at least two classes"):
        load_dataset(str(p))
