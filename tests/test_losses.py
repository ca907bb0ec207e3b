"""dchml.margin_dynamic_softmax / dchml.partial_softmax and their operators, against the float64
reference written from docs/spec.md (tests/loss_reference.py)."""
import warnings

import numpy as np
import pytest
import torch

import dchml
from dchml import MarginDynamicSoftmax, margin_dynamic_softmax, partial_softmax

from loss_reference import mds_grad_rows, mds_rows, partial_softmax_rows

ETA, MU, GAMMA, SIGMA = 0.3, 0.3, 0.2, 0.2


def make_inputs(n, c, k, *, single_label=False, dtype=torch.float64, device="cpu", seed=0, no_negative_row=True):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, k, generator=gen, dtype=torch.float64) * 2 - 1  # tanh range
    other = torch.rand(n, k, generator=gen, dtype=torch.float64) * 2 - 1
    proxies = (torch.randint(0, 2, (c, k), generator=gen) * 2 - 1).to(torch.float64)
    if single_label:
        labels = torch.zeros(n, c, dtype=torch.bool)
        labels[torch.arange(n), torch.randint(0, c, (n,), generator=gen)] = True
    else:
        labels = torch.rand(n, c, generator=gen) < 0.3
        labels[torch.arange(n), torch.randint(0, c, (n,), generator=gen)] = True
    if no_negative_row and n > 1:
        labels[-1] = True  # a row with no negatives: loss 0 for eq. 13
    to = dict(dtype=dtype, device=device)
    return codes.to(**to), other.to(**to), proxies.to(**to), labels.to(device)


SHAPES = [(c, k) for c in (1, 2, 21, 255, 1000) for k in (1, 7, 64, 65, 1024)]


def rows_for(c, k):
    return 3 if c * k > 100_000 else 6


@pytest.mark.parametrize("c,k", SHAPES)
@pytest.mark.parametrize("with_other", [False, True])
def test_mds_rows_and_grads_match_reference(device, c, k, with_other):
    n = rows_for(c, k)
    codes, other, proxies, labels = make_inputs(n, c, k, single_label=(c * k) % 2 == 0, device=device, seed=c + k)
    codes.requires_grad_(True)
    other.requires_grad_(with_other)
    o = other if with_other else None
    rows = margin_dynamic_softmax(codes, proxies, labels, eta=ETA, mu=MU, other=o, reduction="none")
    ref = mds_rows(codes.detach().cpu(), proxies.cpu(), labels.cpu(), ETA, MU, o.detach().cpu() if with_other else None)
    np.testing.assert_allclose(rows.detach().cpu().numpy(), ref, rtol=1e-12, atol=1e-10)
    upstream = torch.rand(n, dtype=torch.float64, device=device)
    wrt = [codes] + ([other] if with_other else [])
    grads = torch.autograd.grad((rows * upstream).sum(), wrt)
    g_codes, g_other = mds_grad_rows(codes.detach().cpu(), proxies.cpu(), labels.cpu(), ETA, MU,
                                     o.detach().cpu() if with_other else None)
    w = upstream.cpu().numpy()[:, None]
    np.testing.assert_allclose(grads[0].cpu().numpy(), g_codes * w, rtol=1e-10, atol=1e-12)
    if with_other:
        np.testing.assert_allclose(grads[1].cpu().numpy(), g_other * w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c,k", SHAPES)
def test_partial_softmax_matches_reference(device, c, k):
    n = rows_for(c, k)
    codes, _, proxies, labels = make_inputs(n, c, k, single_label=(c * k) % 2 == 1, device=device, seed=7 * c + k)
    codes.requires_grad_(True)
    rows = partial_softmax(codes, proxies, labels, gamma=GAMMA, sigma=SIGMA, reduction="none")
    ref = partial_softmax_rows(codes.detach().cpu(), proxies.cpu(), labels.cpu(), GAMMA, SIGMA)
    np.testing.assert_allclose(rows.detach().cpu().numpy(), ref, rtol=1e-12, atol=1e-10)
    if c * k <= 20_000:  # the gradient against the reference itself, through float64 autograd
        ref_codes = codes.detach().cpu().clone().requires_grad_(True)
        expected = torch.autograd.grad(_torch_partial_softmax(ref_codes, proxies.cpu(), labels.cpu()).sum(), ref_codes)[0]
        got = torch.autograd.grad(rows.sum(), codes)[0]
        np.testing.assert_allclose(got.cpu().numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


def _torch_partial_softmax(codes, proxies, labels):
    """§6 again, per row with explicit index sets, in differentiable float64 torch ops."""
    k = proxies.shape[1]
    out = []
    for i in range(codes.shape[0]):
        pos_idx = labels[i].nonzero().flatten()
        neg_idx = (~labels[i].bool()).nonzero().flatten()
        neg = GAMMA * (proxies[neg_idx] @ codes[i])
        terms = [-(GAMMA * (codes[i] @ proxies[p] - SIGMA * k))
                 + torch.logsumexp(torch.cat([(GAMMA * (codes[i] @ proxies[p] - SIGMA * k))[None], neg]), 0)
                 for p in pos_idx]
        out.append(torch.stack(terms).mean())
    return torch.stack(out)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", ["mds", "mds_other", "psl"])
def test_reductions(device, reduction, loss):
    codes, other, proxies, labels = make_inputs(9, 13, 16, device=device)
    if loss == "psl":
        ref = partial_softmax_rows(codes.cpu(), proxies.cpu(), labels.cpu(), GAMMA, SIGMA)
        got = partial_softmax(codes, proxies, labels, reduction=reduction)
    else:
        o = other if loss == "mds_other" else None
        ref = mds_rows(codes.cpu(), proxies.cpu(), labels.cpu(), ETA, MU, None if o is None else o.cpu())
        got = margin_dynamic_softmax(codes, proxies, labels, other=o, reduction=reduction)
    expected = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_row_without_negatives_is_zero_and_inter_modal_can_be_negative():
    codes, other, proxies, labels = make_inputs(4, 5, 8)
    labels[1] = True
    rows = margin_dynamic_softmax(codes, proxies, labels, reduction="none")
    assert rows[1].item() == pytest.approx(0.0, abs=1e-12)
    assert bool((rows >= -1e-12).all())  # up to FMA rounding on the zero row
    # eq. 14's numerator is not in its own denominator: with other far "better" the term is negative
    inter = margin_dynamic_softmax(codes, proxies, labels, other=-other.sign() * 0.99, reduction="none")
    ref = mds_rows(codes, proxies, labels, ETA, MU, -other.sign() * 0.99)
    np.testing.assert_allclose(inter.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_positives_never_enter_the_denominator():
    # one positive, one negative, codes equal to the positive proxy: loss = log(1 + exp(eta (s_neg - u)))
    proxies = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, 1.0, -1.0]], dtype=torch.float64)
    codes = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([[1, 0, 1]])  # positives 0 and 2, negative 1
    gbar = proxies[[0, 2]].mean(0)
    u = codes[0] @ gbar - MU * 4
    expected = torch.log1p(torch.exp(ETA * (codes[0] @ proxies[1] - u)))
    got = margin_dynamic_softmax(codes, proxies, labels, reduction="sum")
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    # the defective port's value (exp(0) added per positive) differs
    defective = -ETA * u + torch.log(torch.exp(ETA * u) + torch.exp(ETA * codes[0] @ proxies[1]) + 2)
    assert abs(got.item() - defective.item()) > 1e-3


def test_wide_float32_tiles_match_float64(cpu_float_path):
    # c * k > 2^23: the GEMM-tiled path, its products through the lookup tables ("tables") or
    # at::mm ("multiply_add"); the float64 result (GEMM tiles, checked against the reference
    # above) is the yardstick. 33 class tiles, the last one partial.
    n, c, k = 5, 66_001, 128
    gen = torch.Generator().manual_seed(9)
    codes = torch.rand(n, k, generator=gen, dtype=torch.float64) * 2 - 1
    other = torch.rand(n, k, generator=gen, dtype=torch.float64) * 2 - 1
    proxies = (torch.randint(0, 2, (c, k), generator=gen, dtype=torch.int8) * 2 - 1)
    offsets = torch.tensor([0, 1, 3, 4, 9, 10])
    indices = torch.tensor([7, 2048, 65_999, 66_000, 0, 1, 2, 3, 4, 40_000])
    for o in (None, other):
        x64, x32 = codes.clone().requires_grad_(True), codes.float().requires_grad_(True)
        r64 = margin_dynamic_softmax(x64, proxies, (offsets, indices), other=o, reduction="none")
        r32 = margin_dynamic_softmax(x32, proxies, (offsets, indices), other=None if o is None else o.float(),
                                     reduction="none")
        np.testing.assert_allclose(r32.detach().double().numpy(), r64.detach().numpy(), rtol=1e-5, atol=1e-5)
        (g64,) = torch.autograd.grad(r64.sum(), x64)
        (g32,) = torch.autograd.grad(r32.sum(), x32)
        np.testing.assert_allclose(g32.double().numpy(), g64.numpy(), rtol=1e-5, atol=1e-5 * g64.abs().max().item())
    x64, x32 = codes.clone().requires_grad_(True), codes.float().requires_grad_(True)
    p64 = partial_softmax(x64, proxies, (offsets, indices), reduction="none")
    p32 = partial_softmax(x32, proxies, (offsets, indices), reduction="none")
    np.testing.assert_allclose(p32.detach().double().numpy(), p64.detach().numpy(), rtol=1e-5, atol=1e-5)
    (g64,) = torch.autograd.grad(p64.sum(), x64)
    (g32,) = torch.autograd.grad(p32.sum(), x32)
    np.testing.assert_allclose(g32.double().numpy(), g64.numpy(), rtol=1e-5, atol=1e-5 * g64.abs().max().item())


@pytest.mark.parametrize("c", [21, 255, 1000, 3000])
def test_float32_within_1e5_of_float64_reference(device, c, cpu_float_path):
    # CPU: c = 21 and 255 run the row-block path; c = 1000 and 3000 the GEMM tiles (two class
    # tiles at 3000) with the multiply-add path, the row-block path with the lookup tables.
    n, k = 5, 64
    codes, other, proxies, labels = make_inputs(n, c, k, dtype=torch.float32, device=device, seed=c)
    for o in (None, other):
        got = margin_dynamic_softmax(codes, proxies, labels, other=o, reduction="none").double().cpu().numpy()
        ref = mds_rows(codes.double().cpu(), proxies.cpu(), labels.cpu(), ETA, MU, None if o is None else o.double().cpu())
        # relative to the row's magnitude; a row with no negatives is exactly 0
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    got = partial_softmax(codes, proxies, labels, reduction="none").double().cpu().numpy()
    ref = partial_softmax_rows(codes.double().cpu(), proxies.cpu(), labels.cpu(), GAMMA, SIGMA)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.fixture(params=["tables", "multiply_add"])
def cpu_float_path(request):
    """Both float32 CPU paths of the small-c kernels: the AVX-512 lookup tables and the
    register-tiled multiply-adds (skips 'tables' on a CPU without AVX-512)."""
    if request.param == "tables" and not dchml.ops.loss_tables(True):
        pytest.skip("this CPU has no AVX-512: the lookup-table path does not exist here")
    dchml.ops.loss_tables(request.param == "tables")
    yield request.param
    dchml.ops.loss_tables(True)


@pytest.mark.parametrize("c,k", [(c, k) for c in (1, 2, 5, 21, 80, 255, 512) for k in (1, 7, 64, 65, 130)])
def test_float32_cpu_paths_losses_and_gradients(cpu_float_path, c, k):
    # losses and gradients in float32 against the float64 reference, with and without `other`,
    # labels dense (read row by row) and as CSR, for PSLDH too
    n = 9
    codes, other, proxies, labels = make_inputs(n, c, k, dtype=torch.float32, seed=3 * c + k)
    proxies = proxies.to(torch.int8) if k % 2 else proxies
    upstream = torch.rand(n, dtype=torch.float64)
    csr = (torch.cat([torch.zeros(1, dtype=torch.int64), labels.sum(1).cumsum(0)]), labels.nonzero()[:, 1])
    for given in (labels, csr):
        for o in (None, other):
            x = codes.clone().requires_grad_(True)
            rows = margin_dynamic_softmax(x, proxies, given, other=o, reduction="none")
            ref = mds_rows(codes.double(), proxies.double(), labels, ETA, MU, None if o is None else o.double())
            scale = max(1.0, np.abs(ref).max())
            np.testing.assert_allclose(rows.detach().double().numpy(), ref, rtol=1e-5, atol=1e-5 * scale)
            (g,) = torch.autograd.grad((rows * upstream.float()).sum(), x)
            g_ref, g_other_ref = mds_grad_rows(codes.double(), proxies.double(), labels, ETA, MU,
                                               None if o is None else o.double())
            expected = g_ref * upstream.numpy()[:, None]
            np.testing.assert_allclose(g.double().numpy(), expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))
        x = codes.clone().requires_grad_(True)
        rows = partial_softmax(x, proxies, given, reduction="none")
        ref = partial_softmax_rows(codes.double(), proxies.double(), labels, GAMMA, SIGMA)
        np.testing.assert_allclose(rows.detach().double().numpy(), ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))
        (g,) = torch.autograd.grad(rows.sum(), x)
        ref_codes = codes.double().clone().requires_grad_(True)
        expected = torch.autograd.grad(_torch_partial_softmax(ref_codes, proxies.double(), labels).sum(), ref_codes)[0]
        np.testing.assert_allclose(g.double().numpy(), expected.numpy(), rtol=1e-5,
                                   atol=1e-5 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tiled_path_matches_reference(dtype, cpu_float_path):
    # c > 2048: two class tiles of the GEMM path, the last one partial (float32 with the lookup
    # tables takes the row-block path instead: c > 512 with c * k small)
    n, c, k = 1030, 2500, 3
    codes, other, proxies, labels = make_inputs(n, c, k, dtype=dtype, seed=3)
    labels = labels & (torch.rand(n, c) < 0.01)
    labels[torch.arange(n), torch.arange(n) * 2] = True
    labels[5] = True
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-4)
    for o in (None, other):
        cr = codes.clone().requires_grad_(True)
        orr = None if o is None else o.clone().requires_grad_(True)
        rows = margin_dynamic_softmax(cr, proxies, labels, other=orr, reduction="none")
        ref = mds_rows(codes.double(), proxies, labels, ETA, MU, None if o is None else o.double())
        np.testing.assert_allclose(rows.detach().double().numpy(), ref, **tol)
        grads = torch.autograd.grad(rows.sum(), [cr] + ([] if o is None else [orr]))
        g_codes, g_other = mds_grad_rows(codes.double(), proxies, labels, ETA, MU, None if o is None else o.double())
        np.testing.assert_allclose(grads[0].double().numpy(), g_codes, **tol)
        if o is not None:
            np.testing.assert_allclose(grads[1].double().numpy(), g_other, **tol)
    cr = codes.clone().requires_grad_(True)
    rows = partial_softmax(cr, proxies, labels, reduction="none")
    np.testing.assert_allclose(rows.detach().double().numpy(),
                               partial_softmax_rows(codes.double(), proxies, labels, GAMMA, SIGMA), **tol)
    # gradient of the tiled path against the differentiable per-row reference, on a few rows
    small = slice(0, 12)
    g_tiled = torch.autograd.grad(rows[small].sum(), cr)[0][small]
    ref_codes = codes[small].double().clone().requires_grad_(True)
    expected = torch.autograd.grad(_torch_partial_softmax(ref_codes, proxies.double(), labels[small]).sum(), ref_codes)[0]
    np.testing.assert_allclose(g_tiled.double().numpy(), expected.numpy(), **tol)


def test_gradcheck_float64():
    codes, other, proxies, labels = make_inputs(5, 6, 7)
    codes.requires_grad_(True)
    other.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: margin_dynamic_softmax(c, proxies, labels, reduction="none"), (codes,))
    assert torch.autograd.gradcheck(
        lambda c, o: margin_dynamic_softmax(c, proxies, labels, other=o, reduction="none"), (codes, other))
    assert torch.autograd.gradcheck(lambda c: partial_softmax(c, proxies, labels, reduction="none"), (codes,))
    assert torch.autograd.gradcheck(
        lambda c, o: MarginDynamicSoftmax.apply(c, proxies, labels, ETA, MU, o), (codes, other))



@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("sparse", [False, True])
def test_gradgradcheck_float64(reduction, sparse):
    """Second derivatives (create_graph=True) of every loss op: exact, with no warning of a
    missing autograd kernel, in both label forms (a row without negatives included)."""
    codes, other, proxies, labels = make_inputs(5, 6, 7)
    codes.requires_grad_(True)
    other.requires_grad_(True)
    given = torch.ops.dchml.labels_to_csr(labels) if sparse else labels
    losses = [lambda c: margin_dynamic_softmax(c, proxies, given, reduction=reduction),
              lambda c, o: margin_dynamic_softmax(c, proxies, given, other=o, reduction=reduction),
              lambda c: partial_softmax(c, proxies, given, reduction=reduction)]
    if reduction == "none":
        losses += [lambda c, o: MarginDynamicSoftmax.apply(c, proxies, given, ETA, MU, o),
                   lambda c: MarginDynamicSoftmax.apply(c, proxies, given, ETA, MU, None)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "autograd kernel was not registered"
        for loss in losses:
            inputs = (codes, other)[:loss.__code__.co_argcount]
            assert torch.autograd.gradgradcheck(loss, inputs)


def test_double_backward_float32_matches_float64():
    codes, other, proxies, labels = make_inputs(6, 21, 16)
    hessians = []
    for dtype in (torch.float64, torch.float32):
        x = codes.to(dtype).requires_grad_(True)
        (g,) = torch.autograd.grad(margin_dynamic_softmax(x, proxies.to(torch.int8), labels), x, create_graph=True)
        (h,) = torch.autograd.grad((g * torch.linspace(-1, 1, x.numel(), dtype=dtype).view_as(x)).sum(), x)
        hessians.append(h.double())
    assert hessians[0].abs().max() > 0
    torch.testing.assert_close(hessians[1], hessians[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_kept_from_forward_matches_backward_operator(dtype, reduction, sparse):
    """On the CPU the forward computes the gradient along; backward (any upstream gradient, the
    graph kept and used twice) must give what the backward operators compute."""
    codes, other, proxies, labels = make_inputs(9, 21, 16, dtype=dtype)
    n = codes.shape[0]
    lab, idx = torch.ops.dchml.labels_to_csr(labels) if sparse else (labels, None)
    given = (lab, idx) if sparse else labels
    upstream = torch.linspace(0.5, 2.0, n, dtype=dtype) if reduction == "none" else torch.tensor(1.5, dtype=dtype)
    grad_rows = upstream if reduction == "none" else upstream.expand(n) / (n if reduction == "mean" else 1)
    for loss_name in ("mds", "mds_other", "psl"):
        o = other if loss_name == "mds_other" else None
        x = codes.clone().requires_grad_(True)
        y = o.clone().requires_grad_(True) if o is not None else None
        inputs = [x] + ([y] if y is not None else [])
        if loss_name == "psl":
            loss = partial_softmax(x, proxies, given, gamma=GAMMA, sigma=SIGMA, reduction=reduction)
            _, lse = torch.ops.dchml.partial_softmax_loss(codes, proxies, lab, idx, GAMMA, SIGMA)
            want = [torch.ops.dchml.partial_softmax_loss_backward(grad_rows.contiguous(), codes, proxies, lab, idx,
                                                                  lse, GAMMA, SIGMA)]
        else:
            loss = margin_dynamic_softmax(x, proxies, given, eta=ETA, mu=MU, other=y, reduction=reduction)
            _, lse = torch.ops.dchml.mds_loss(codes, o, proxies, lab, idx, ETA, MU)
            want = list(torch.ops.dchml.mds_loss_backward(grad_rows.contiguous(), codes, o, proxies, lab, idx, lse,
                                                          ETA, MU))[:len(inputs)]
        first = torch.autograd.grad(loss, inputs, upstream, retain_graph=True)
        second = torch.autograd.grad(loss, inputs, upstream)
        for got1, got2, w in zip(first, second, want):
            torch.testing.assert_close(got1, w)
            assert torch.equal(got1, got2)


def test_codes_changed_in_place_after_the_forward_raise_in_backward():
    codes, _, proxies, labels = make_inputs(5, 7, 8)
    for loss_fn in (margin_dynamic_softmax, partial_softmax):
        x = codes.clone().requires_grad_(True)
        loss = loss_fn(x, proxies, labels)
        with torch.no_grad():
            x.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()

def _op_samples():
    samples = []
    for (n, c, k, seed) in [(4, 5, 8, 0), (7, 21, 64, 1), (1, 1, 3, 2)]:
        codes, other, proxies, labels = make_inputs(n, c, k, seed=seed)
        offsets, indices = torch.ops.dchml.labels_to_csr(labels)
        samples.append((codes.requires_grad_(True), other.requires_grad_(True), proxies, offsets, indices, labels))
    return samples


def test_opcheck():
    for codes, other, proxies, offsets, indices, labels in _op_samples():
        torch.library.opcheck(torch.ops.dchml.labels_to_csr, (labels,), test_utils=("test_schema", "test_faketensor"))
        # both label forms the ops take: CSR (offsets, indices) and dense labels with indices None
        for lab, idx in ((offsets, indices), (labels, None)):
            for o in (None, other):
                torch.library.opcheck(torch.ops.dchml.mds_loss, (codes, o, proxies, lab, idx, ETA, MU))
            torch.library.opcheck(torch.ops.dchml.partial_softmax_loss, (codes, proxies, lab, idx, GAMMA, SIGMA))
            for reduction in (1, 2):  # the reduced ops (mean, sum): one autograd node per loss
                for o in (None, other):
                    torch.library.opcheck(torch.ops.dchml.mds_loss_reduced,
                                          (codes, o, proxies, lab, idx, ETA, MU, reduction))
                torch.library.opcheck(torch.ops.dchml.partial_softmax_loss_reduced,
                                      (codes, proxies, lab, idx, GAMMA, SIGMA, reduction))


def test_backward_operators_pass_opcheck():
    # the backward operators have an autograd kernel (a differentiable backward); the aot test,
    # slow to start, runs once per operator
    quick = ("test_schema", "test_autograd_registration", "test_faketensor")
    codes, other, proxies, offsets, indices, labels = _op_samples()[0]
    grad = torch.linspace(0.5, 1.5, codes.shape[0], dtype=codes.dtype).requires_grad_(True)
    for lab, idx in ((offsets, indices), (labels, None)):
        for o in (None, other):
            lse = torch.ops.dchml.mds_loss(codes, o, proxies, lab, idx, ETA, MU)[1].detach()
            torch.library.opcheck(torch.ops.dchml.mds_loss_backward,
                                  (grad, codes, o, proxies, lab, idx, lse, ETA, MU), test_utils=quick)
        lse = torch.ops.dchml.partial_softmax_loss(codes, proxies, lab, idx, GAMMA, SIGMA)[1].detach()
        torch.library.opcheck(torch.ops.dchml.partial_softmax_loss_backward,
                              (grad, codes, proxies, lab, idx, lse, GAMMA, SIGMA), test_utils=quick)
    mds_lse = torch.ops.dchml.mds_loss(codes, other, proxies, offsets, indices, ETA, MU)[1].detach()
    psl_lse = torch.ops.dchml.partial_softmax_loss(codes, proxies, labels, None, GAMMA, SIGMA)[1].detach()
    for op, args in ((torch.ops.dchml.mds_loss_backward, (other, proxies, offsets, indices, mds_lse, ETA, MU)),
                     (torch.ops.dchml.partial_softmax_loss_backward, (proxies, labels, None, psl_lse, GAMMA, SIGMA))):
        torch.library.opcheck(op, (grad, codes, *args), test_utils=("test_aot_dispatch_dynamic",))


def test_torch_compile_fullgraph():
    codes, other, proxies, labels = make_inputs(6, 9, 16)
    codes.requires_grad_(True)
    other.requires_grad_(True)

    def step(c, o):
        return margin_dynamic_softmax(c, proxies, labels, other=o) + partial_softmax(c, proxies, labels)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(codes, other)
    expected = step(codes, other)
    assert torch.allclose(got, expected, rtol=1e-12)
    g_got = torch.autograd.grad(got, [codes, other])
    g_exp = torch.autograd.grad(expected, [codes, other])
    for a, b in zip(g_got, g_exp):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_non_contiguous_inputs():
    codes, other, proxies, labels = make_inputs(8, 10, 12)
    nc_codes = codes.t().contiguous().t()  # column-major
    nc_other = torch.stack([other, other], 2)[:, :, 0]
    nc_proxies = proxies.t().contiguous().t()
    nc_labels = labels.t().contiguous().t()
    assert not nc_codes.is_contiguous() and not nc_other.is_contiguous() and not nc_labels.is_contiguous()
    for o, nco in ((None, None), (other, nc_other)):
        expected = margin_dynamic_softmax(codes, proxies, labels, other=o, reduction="none")
        got = margin_dynamic_softmax(nc_codes, nc_proxies, nc_labels, other=nco, reduction="none")
        assert torch.equal(got, expected)
    cr = nc_codes.clone().requires_grad_(True)  # clone keeps the column-major strides
    assert not cr.is_contiguous()
    g = torch.autograd.grad(margin_dynamic_softmax(cr, proxies, labels, reduction="none")[::2].sum(), cr)[0]
    c2 = codes.clone().requires_grad_(True)
    g_ref = torch.autograd.grad(margin_dynamic_softmax(c2, proxies, labels, reduction="none")[::2].sum(), c2)[0]
    assert torch.equal(g, g_ref) and (g[1::2] == 0).all()


def test_empty_batch(device):
    codes = torch.zeros(0, 8, dtype=torch.float64, device=device, requires_grad=True)
    proxies = torch.ones(3, 8, dtype=torch.float64, device=device)
    labels = torch.zeros(0, 3, dtype=torch.bool, device=device)
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (0,))):
        out = margin_dynamic_softmax(codes, proxies, labels, reduction=reduction)
        assert out.shape == shape and out.sum().item() == 0
        out.sum().backward()
        assert partial_softmax(codes, proxies, labels, reduction=reduction).shape == shape
    assert codes.grad.shape == (0, 8)


def test_long_codes_large_eta_stay_finite(device):
    # eta k = 4096: a plain exp would overflow
    codes, other, proxies, labels = make_inputs(4, 21, 4096, dtype=torch.float32, device=device)
    codes = (codes.sign() * 0.999).requires_grad_(True)
    rows = margin_dynamic_softmax(codes, proxies, labels, eta=1.0, mu=0.3, other=other, reduction="none")
    psl = partial_softmax(codes, proxies, labels, gamma=1.0, sigma=0.3, reduction="none")
    g = torch.autograd.grad(rows.sum() + psl.sum(), codes)[0]
    assert torch.isfinite(rows).all() and torch.isfinite(psl).all() and torch.isfinite(g).all()
    ref = mds_rows(codes.detach().double().cpu(), proxies.cpu(), labels.cpu(), 1.0, 0.3, other.double().cpu())
    np.testing.assert_allclose(rows.detach().double().cpu().numpy(), ref, rtol=1e-5)


@pytest.mark.parametrize("form", ["bool", "int64", "float32", "uint8", "int8", "int32", "float64", "float16", "bfloat16",
                                  "int16", "csr_tuple", "sparse_csr", "unsorted_tuple", "int32_tuple"])
def test_label_forms_agree(form):
    codes, other, proxies, labels = make_inputs(7, 11, 9)
    expected = margin_dynamic_softmax(codes, proxies, labels, reduction="none")
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), labels.sum(1).cumsum(0)])
    indices = labels.nonzero()[:, 1]
    if form in ("bool", "int64", "float32", "uint8", "int8", "int32", "float64", "float16", "bfloat16", "int16"):
        given = labels.to(getattr(torch, form))
    elif form == "csr_tuple":
        given = (offsets, indices)
    elif form == "int32_tuple":
        given = (offsets.int(), indices.int())
    elif form == "sparse_csr":
        given = labels.double().to_sparse_csr()
    else:
        idx = indices.clone()
        for i in range(7):  # reverse each row's positives
            idx[offsets[i]:offsets[i + 1]] = idx[offsets[i]:offsets[i + 1]].flip(0)
        given = (offsets, idx)
    assert torch.equal(margin_dynamic_softmax(codes, proxies, given, reduction="none"), expected)


@pytest.mark.parametrize("c", [21, 600])  # the row-block path, and the tiled path (float64 codes)
@pytest.mark.parametrize("dtype", ["bool", "float32", "int64"])
def test_dense_label_dtypes_agree_in_both_directions_and_both_losses(c, dtype):
    codes, other, proxies, labels = make_inputs(9, c, 16, seed=3)
    given = labels.to(getattr(torch, dtype))
    for loss in (lambda x, lab: margin_dynamic_softmax(x, proxies, lab, other=other, reduction="sum"),
                 lambda x, lab: partial_softmax(x, proxies, lab, reduction="sum")):
        a, b = codes.clone().requires_grad_(True), codes.clone().requires_grad_(True)
        la, lb = loss(a, labels), loss(b, given)
        la.backward()
        lb.backward()
        assert torch.equal(la, lb) and torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8, torch.int8, torch.float16])
def test_operators_check_dense_labels_of_every_dtype(dtype):
    codes, _, proxies, labels = make_inputs(5, 21, 8)
    bad = labels.to(dtype)
    bad[3, 7] = 3
    for op_call in (lambda lab: torch.ops.dchml.mds_loss(codes, None, proxies, lab, None, ETA, MU),
                    lambda lab: torch.ops.dchml.partial_softmax_loss(codes, proxies, lab, None, GAMMA, SIGMA)):
        with pytest.raises(ValueError, match=r"labels must be 0/1, got 3 at row 3, column 7"):
            op_call(bad)
        empty = labels.to(dtype)
        empty[1] = 0
        with pytest.raises(ValueError, match=r"1 row\(s\) have no positive label \(first: row 1\)"):
            op_call(empty)
    loss, lse = torch.ops.dchml.mds_loss(codes, None, proxies, labels.to(dtype), None, ETA, MU)
    with pytest.raises(ValueError, match=r"labels must be 0/1, got 3 at row 3, column 7"):
        torch.ops.dchml.mds_loss_backward(torch.ones(5, dtype=codes.dtype), codes, None, proxies, bad, None, lse,
                                          ETA, MU)


def test_label_values_are_reported_as_given():
    codes, _, proxies, labels = make_inputs(4, 6, 5)
    for dtype, value, shown in ((torch.uint8, 200, "200"), (torch.int8, -1, "-1"), (torch.float32, 0.5, "0.5")):
        bad = labels.to(dtype)
        bad[2, 4] = value
        with pytest.raises(ValueError, match=f"labels must be 0/1, got {shown} at row 2, column 4"):
            margin_dynamic_softmax(codes, proxies, bad)


def test_operators_check_csr_labels():
    codes, _, proxies, _ = make_inputs(3, 4, 5)
    off = torch.tensor([0, 1, 2, 3])
    for indices, match in ((torch.tensor([0, 4, 1]), r"label indices must lie in \[0, 4\)"),
                           (torch.tensor([0, -1, 1]), r"label indices must lie in \[0, 4\)")):
        with pytest.raises(ValueError, match=match):
            torch.ops.dchml.mds_loss(codes, None, proxies, off, indices, ETA, MU)
    with pytest.raises(ValueError, match="must increase within a row"):
        torch.ops.dchml.partial_softmax_loss(codes, proxies, torch.tensor([0, 2, 3, 4]), torch.tensor([2, 1, 0, 3]),
                                             GAMMA, SIGMA)
    with pytest.raises(ValueError, match="row 1 has no positive label"):
        torch.ops.dchml.mds_loss(codes, None, proxies, torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1]), ETA, MU)


def test_other_given_as_codes_itself_gets_its_own_gradient():
    codes, _, proxies, labels = make_inputs(6, 21, 8)
    loss, lse = torch.ops.dchml.mds_loss(codes, codes, proxies, labels, None, ETA, MU)
    grad_codes, grad_other = torch.ops.dchml.mds_loss_backward(torch.ones(6, dtype=codes.dtype), codes, codes,
                                                               proxies, labels, None, lse, ETA, MU)
    copy = codes.clone()
    loss2, lse2 = torch.ops.dchml.mds_loss(codes, copy, proxies, labels, None, ETA, MU)
    want_codes, want_other = torch.ops.dchml.mds_loss_backward(torch.ones(6, dtype=codes.dtype), codes, copy,
                                                               proxies, labels, None, lse2, ETA, MU)
    assert torch.equal(loss, loss2)
    assert torch.equal(grad_codes, want_codes) and torch.equal(grad_other, want_other)


def test_int8_proxies_and_float32_proxies_with_float64_codes():
    codes, other, proxies, labels = make_inputs(5, 30, 17)
    expected = margin_dynamic_softmax(codes, proxies, labels, other=other, reduction="none")
    for p in (proxies.to(torch.int8), proxies.float()):
        assert torch.equal(margin_dynamic_softmax(codes, p, labels, other=other, reduction="none"), expected)
    assert torch.equal(partial_softmax(codes, proxies.to(torch.int8), labels), partial_softmax(codes, proxies, labels))


def test_autograd_function_drop_in_matches_functional():
    codes, other, proxies, labels = make_inputs(6, 12, 10)
    a = codes.clone().requires_grad_(True)
    b = codes.clone().requires_grad_(True)
    oa = other.clone().requires_grad_(True)
    ob = other.clone().requires_grad_(True)
    ra = MarginDynamicSoftmax.apply(a, proxies, labels, 0.5, 0.2, oa)
    rb = margin_dynamic_softmax(b, proxies, labels, eta=0.5, mu=0.2, other=ob, reduction="none")
    assert torch.equal(ra, rb)
    (ra.sum()).backward()
    (rb.sum()).backward()
    assert torch.equal(a.grad, b.grad) and torch.equal(oa.grad, ob.grad)


# ---- bad input ----

def test_rows_without_positive_raise_value_error_with_count_and_first_row():
    codes, _, proxies, labels = make_inputs(6, 5, 4)
    labels[2] = False
    labels[4] = False
    with pytest.raises(ValueError, match=r"2 row\(s\) have no positive label \(first: row 2\)"):
        margin_dynamic_softmax(codes, proxies, labels)
    offsets = torch.tensor([0, 1, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"1 row\(s\) have no positive label \(first: row 1\)"):
        partial_softmax(codes, proxies, (offsets, torch.tensor([0, 1, 2, 3, 4])))


@pytest.mark.parametrize("bad", [0.5, 0.0, 2.0])
def test_proxies_not_plus_minus_one(bad):
    codes, _, proxies, labels = make_inputs(3, 4, 5)
    proxies[2, 3] = bad
    with pytest.raises(ValueError, match=r"proxies must be \+1/-1, got .* at row 2, column 3"):
        margin_dynamic_softmax(codes, proxies, labels)
    with pytest.raises(ValueError, match=r"proxies must be \+1/-1"):
        partial_softmax(codes, proxies.to(torch.int8) if bad != 0.5 else proxies, labels)


def test_bad_shapes_dtypes_values():
    codes, other, proxies, labels = make_inputs(3, 4, 5)
    with pytest.raises(ValueError, match=r"codes must be 2-D \(n, k\), got shape \(15,\)"):
        margin_dynamic_softmax(codes.flatten(), proxies, labels)
    with pytest.raises(TypeError, match="codes must be float32 or float64, got torch.int64"):
        margin_dynamic_softmax(codes.long(), proxies, labels)
    with pytest.raises(ValueError, match=r"proxies must be \(c, k\) with k = 5"):
        margin_dynamic_softmax(codes, proxies[:, :4], labels)
    with pytest.raises(TypeError, match="proxies must be ±1 as int8 or a floating dtype, got torch.int64"):
        margin_dynamic_softmax(codes, proxies.long(), labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(n, c\) = \(3, 4\), got \(3, 5\)"):
        margin_dynamic_softmax(codes, proxies, torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"labels must be 0/1, got 2 at row 1, column 2"):
        bad = labels.long()
        bad[1, 2] = 2
        margin_dynamic_softmax(codes, proxies, bad)
    with pytest.raises(ValueError, match="other must match codes"):
        margin_dynamic_softmax(codes, proxies, labels, other=other[:2])
    with pytest.raises(ValueError, match="other must match codes"):
        margin_dynamic_softmax(codes, proxies, labels, other=other.float())
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        margin_dynamic_softmax(codes, proxies, labels, reduction="avg")
    with pytest.raises(ValueError, match="eta must be finite, got nan"):
        margin_dynamic_softmax(codes, proxies, labels, eta=float("nan"))
    with pytest.raises(TypeError, match="labels must be a tensor or an \\(offsets, indices\\) tuple"):
        margin_dynamic_softmax(codes, proxies, labels.numpy())
    with pytest.raises(ValueError, match="sparse labels must be a tuple \\(offsets, indices\\), got 3 items"):
        margin_dynamic_softmax(codes, proxies, (1, 2, 3))


def test_bad_sparse_labels():
    codes, _, proxies, _ = make_inputs(3, 4, 5)
    off = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"labels indices must lie in \[0, 4\)"):
        margin_dynamic_softmax(codes, proxies, (off, torch.tensor([0, 4, 1])))
    with pytest.raises(ValueError, match="row 1 lists positive 2 more than once"):
        margin_dynamic_softmax(codes, proxies, (torch.tensor([0, 1, 3, 4]), torch.tensor([0, 2, 2, 1])))
    with pytest.raises(ValueError, match="labels offsets must have n \\+ 1 = 4 entries, got 3"):
        margin_dynamic_softmax(codes, proxies, (off[:3], torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="labels offsets must start at 0"):
        margin_dynamic_softmax(codes, proxies, (torch.tensor([0, 2, 1, 3]), torch.tensor([0, 1, 2])))
    with pytest.raises(TypeError, match="labels indices must be int32 or int64, got torch.float32"):
        margin_dynamic_softmax(codes, proxies, (off, torch.tensor([0.0, 1.0, 2.0])))


def test_cuda_tensor_without_cuda_build_is_a_clear_error():
    if dchml.cuda_built():
        pytest.skip("this build has CUDA kernels")
    codes = torch.zeros(2, 3, device="meta")
    with pytest.raises(ValueError, match="dchml supports cpu and cuda tensors"):
        margin_dynamic_softmax(codes, torch.ones(2, 3, device="meta"), torch.ones(2, 2, device="meta"))
