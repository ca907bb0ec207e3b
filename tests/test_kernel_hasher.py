"""The kernel hasher (dchml.method.kernel_hasher) and its wrapper in dchml.method.baselines: a
pure function of data, split and seed; nonlinear where the linear hasher cannot be; chosen on
the validation slice only."""
import numpy as np
import pytest
import torch

from dchml.data import make_synthetic
from dchml.method import kernel_hasher as kh
from dchml.method.baselines import kernel_hasher, linear_hasher
from dchml.method.models import CrossModalHashModel, sgn
from dchml.retrieval.metrics import mean_average_precision


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Small dense linear algebra: one thread avoids OpenMP spin-waiting on a busy CI machine."""


def _rings(n, seed):
    """Two labels by radius on a 2-d plane (plus noise dimensions): no linear map separates them."""
    g = np.random.default_rng(seed)
    radius = g.uniform(0, 2, n)
    angle = g.uniform(0, 2 * np.pi, n)
    x = np.c_[radius * np.cos(angle), radius * np.sin(angle), 0.1 * g.standard_normal((n, 3))]
    inner = radius < 1
    labels = np.c_[inner, ~inner].astype(np.float32)
    return torch.tensor(x, dtype=torch.float32), torch.from_numpy(labels)


def _targets(labels, bits=8):
    proxies = torch.tensor([[1.0] * bits, [-1.0] * bits], dtype=torch.float64)
    return labels.double() @ proxies / labels.double().sum(1, keepdim=True)


def test_kernel_hasher_separates_what_no_linear_map_can():
    x, labels = _rings(600, 0)
    vx, vl = _rings(200, 1)
    qx, ql = _rings(200, 2)
    hasher, chosen = kh.fit_kernel_hasher(x, _targets(labels), val_x=vx, val_labels=vl, fit_labels=labels,
                                          topk=100, n_anchors=100)
    codes = hasher.encode(qx)
    database = sgn(_targets(labels).float())
    kernel_map = float(mean_average_precision(codes, database, ql, labels, topk=100))
    linear = kh.Ridge(x, _targets(labels))
    linear_codes = sgn(linear.affine(1e-3)(qx).float())
    linear_map = float(mean_average_precision(linear_codes, database, ql, labels, topk=100))
    assert kernel_map > 0.95 > linear_map + 0.2
    assert chosen["anchors"] == 100 and chosen["validation_map"] > 0.95
    assert chosen["space"] in kh.SPACES and chosen["bandwidth_scale"] in kh.BANDWIDTH_SCALES
    assert chosen["ridge_strength"] in kh.RIDGE_STRENGTHS


def test_a_pure_function_of_data_split_and_seed():
    x, labels = _rings(300, 0)
    vx, vl = _rings(100, 1)
    fit = lambda seed: kh.fit_kernel_hasher(x, _targets(labels), val_x=vx, val_labels=vl,  # noqa: E731
                                            fit_labels=labels, topk=50, n_anchors=40, seed=seed)
    (a, ca), (b, cb), (c, _) = fit(0), fit(0), fit(1)
    assert torch.equal(a.anchors, b.anchors) and torch.equal(a.encode(vx), b.encode(vx)) and ca == cb
    assert not torch.equal(a.anchors, c.anchors)
    assert torch.equal(kh.sample_positions(300, 40, 5, 1), kh.sample_positions(300, 40, 5, 1))
    assert torch.equal(kh.sample_positions(10, 40, 5, 1), torch.arange(10))  # fewer items than anchors: all


def test_without_a_validation_slice_the_fixed_choice_is_used():
    x, labels = _rings(200, 0)
    hasher, chosen = kh.fit_kernel_hasher(x, _targets(labels), n_anchors=50)
    assert (chosen["space"], chosen["bandwidth_scale"], chosen["ridge_strength"]) == ("inputs",) + kh.FALLBACK
    assert chosen["validation_map"] is None and hasher.projection is None
    assert hasher.encode(x).shape == (200, 8)


def test_ridge_dual_form_equals_primal():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(30, 50, generator=g, dtype=torch.float64), torch.randn(30, 4, generator=g, dtype=torch.float64)
    dual = kh.Ridge(x, t)
    assert dual.dual
    primal_w = torch.linalg.solve(dual.xc.T @ dual.xc + 0.1 * dual.scale * torch.eye(50, dtype=torch.float64),
                                  dual.xc.T @ (t - t.mean(0)))
    torch.testing.assert_close(dual.weights(0.1), primal_w)


@pytest.fixture(scope="module")
def small_set():
    data = make_synthetic(n=400, n_labels=6, image_dim=20, text_dim=40, n_query=80, n_train=200, seed=1)
    model = CrossModalHashModel(16, data.n_labels, data.text_dim, data.image_dim)
    model.proxies.copy_(sgn(torch.randn(data.n_labels, 16, generator=torch.Generator().manual_seed(0))))
    return data, model


def test_wrapper_scores_both_directions_like_the_linear_hasher(small_set):
    data, model = small_set
    fit_idx, val_idx = data.train_idx[40:], data.train_idx[:40]
    result = kernel_hasher(model, data, fit_idx, val_idx, topk=100, seed=0)
    linear = linear_hasher(model, data, fit_idx, val_idx, topk=100)
    assert set(linear) - {"ridge_strength"} <= set(result)
    assert 0 < result["i2t_map"] <= 1 and 0 < result["t2i_map"] <= 1
    assert set(result["bandwidth"]) == {"image", "text"} and result["chosen_on"] == "validation slice"
    assert kernel_hasher(model, data, fit_idx, val_idx, topk=100, seed=0) == result  # deterministic
    fixed = kernel_hasher(model, data, data.train_idx, data.train_idx[:0], topk=100)
    assert fixed["chosen_on"] == "fixed (no validation slice)"
