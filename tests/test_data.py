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
    (20_015, (2000, 10_000)), (12_000, (2000, 5000)), (600, (100, 250)), (2, (1, 1)),
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
    (lambda f: f.update(train_idx=f["query_idx"][:3]), "subset of retrieval_idx"),
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
