"""dchml.nn.MarginDynamicSoftmaxLoss and dchml.nn.PartialSoftmaxLoss: thin modules over the
functional losses, with the proxies as a (non-trainable) buffer."""
import pytest
import torch

import dchml
from dchml.nn import MarginDynamicSoftmaxLoss, PartialSoftmaxLoss


def _inputs(n=6, c=9, k=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, k, generator=gen, dtype=torch.float64) * 2 - 1
    other = torch.rand(n, k, generator=gen, dtype=torch.float64) * 2 - 1
    proxies = (torch.randint(0, 2, (c, k), generator=gen) * 2 - 1).to(torch.int8)
    labels = torch.rand(n, c, generator=gen) < 0.3
    labels[:, 0] = True
    return codes, other, proxies, labels


def test_modules_match_functional_and_train(device):
    codes, other, proxies, labels = _inputs()
    codes, other, labels = codes.to(device), other.to(device), labels.to(device)
    mds = MarginDynamicSoftmaxLoss(proxies, eta=0.5, mu=0.2, reduction="sum").to(device)
    psl = PartialSoftmaxLoss(proxies, gamma=0.3, sigma=0.1).to(device)
    assert mds.proxies.device.type == device.type and "proxies" in mds.state_dict()
    assert list(mds.parameters()) == []
    expected = dchml.margin_dynamic_softmax(codes, proxies.to(device), labels, eta=0.5, mu=0.2, other=other,
                                            reduction="sum")
    assert torch.equal(mds(codes, labels, other), expected)
    assert torch.equal(psl(codes, labels), dchml.partial_softmax(codes, proxies.to(device), labels, gamma=0.3, sigma=0.1))
    # a few SGD steps on the codes lower the loss
    x = codes.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.05)
    first = None
    for _ in range(5):
        opt.zero_grad()
        loss = mds(x, labels) + psl(x, labels)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_module_repr_and_bad_arguments():
    _, _, proxies, _ = _inputs()
    assert "classes=9, bits=16" in repr(MarginDynamicSoftmaxLoss(proxies))
    assert "gamma=0.2" in repr(PartialSoftmaxLoss(proxies))
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        MarginDynamicSoftmaxLoss(proxies, reduction="max")
    with pytest.raises(ValueError, match=r"proxies must be a \(c, k\) tensor"):
        PartialSoftmaxLoss(proxies.flatten())


def test_module_under_torch_compile():
    codes, other, proxies, labels = _inputs()
    mds = MarginDynamicSoftmaxLoss(proxies)
    x = codes.clone().requires_grad_(True)
    compiled = torch.compile(lambda a, b: mds(a, labels, b), fullgraph=True, backend="aot_eager")
    got = compiled(x, other)
    assert torch.allclose(got, mds(codes, labels, other), rtol=1e-12)
    got.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
