"""PHNet / IHNet / THNet shapes and init, torchvision AlexNet compatibility, PHNet's loss and the
DCHML_P pairwise loss against docs/spec.md §5 on hand-computed cases, and out-of-sample encoding."""
import math

import numpy as np
import pytest
import torch

import dchml
from dchml.losses.functional import pairwise_proxy_loss, proxy_network_loss
from dchml.models import AlexNetBackbone, CrossModalHashModel, IHNet, PHNet, THNet, load_alexnet_weights, sgn
from dchml.method.encoding import continuous_codes, hash_codes

# torchvision.models.alexnet().state_dict(): every key and shape (torchvision 0.2x, unchanged since 0.3).
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def test_sgn_maps_zero_to_minus_one():
    assert sgn(torch.tensor([-2.0, 0.0, 3.0])).tolist() == [-1.0, -1.0, 1.0]


def test_phnet_architecture_and_outputs():
    torch.manual_seed(0)
    net = PHNet(5, 16)
    assert [type(m).__name__ for m in net.net] == ["Linear", "ReLU", "Linear", "Tanh"]
    assert net.net[0].weight.shape == (512, 5) and net.net[2].weight.shape == (16, 512)
    assert torch.all(net.net[0].bias == 0)
    # Xavier uniform: |w| <= sqrt(6 / (fan_in + fan_out))
    assert net.net[0].weight.abs().max() <= math.sqrt(6 / (5 + 512)) + 1e-6
    g = net.continuous_proxies()
    assert g.shape == (5, 16) and torch.all(g.abs() < 1)
    assert set(net.proxies().unique().tolist()) <= {-1.0, 1.0}


def test_alexnet_backbone_keys_match_torchvision_minus_fc8():
    state = AlexNetBackbone().state_dict()
    expected = {k: v for k, v in TORCHVISION_ALEXNET.items() if not k.startswith("classifier.6.")}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_alexnet_weights_load_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    tv_state = {k: torch.randn(shape) * 0.01 for k, shape in TORCHVISION_ALEXNET.items()}
    path = tmp_path / "alexnet.pth"
    torch.save(tv_state, path)
    backbone = AlexNetBackbone()
    load_alexnet_weights(backbone, str(path))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, tv_state[key])


def test_alexnet_weights_bad_files(tmp_path):
    backbone = AlexNetBackbone()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_alexnet_weights(backbone, str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        load_alexnet_weights(backbone, str(junk))
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, wrong)
    with pytest.raises(ValueError, match="missing keys"):
        load_alexnet_weights(backbone, str(wrong))
    shapes = tmp_path / "shapes.pth"
    state = {k: torch.zeros(s) for k, s in TORCHVISION_ALEXNET.items()}
    state["features.0.weight"] = torch.zeros(64, 3, 7, 7)
    torch.save(state, shapes)
    with pytest.raises(ValueError, match="features.0.weight has shape"):
        load_alexnet_weights(backbone, str(shapes))


def test_ihnet_pixels_and_features_shapes():
    torch.manual_seed(0)
    net = IHNet(12, image_size=64).eval()
    images = torch.randint(0, 256, (2, 3, 40, 50), dtype=torch.uint8)
    out = net(images)
    assert out.shape == (2, 12) and torch.all(out.abs() < 1)
    assert net.hash.weight.shape == (12, 4096)
    mlp = IHNet(12, image_dim=30, hidden=64)
    assert [type(m).__name__ for m in mlp.mlp] == ["Linear", "ReLU", "Linear"]
    assert mlp(torch.randn(5, 30)).shape == (5, 12)
    with pytest.raises(ValueError, match=r"\(n, 30\)"):
        mlp(torch.randn(5, 31))
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        net(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="image_size"):
        IHNet(8, image_size=32)


def test_thnet_architecture():
    net = THNet(40, 16)
    assert net.mlp[0].weight.shape == (2048, 40) and net.mlp[2].weight.shape == (16, 2048)
    out = net(torch.rand(3, 40))
    assert out.shape == (3, 16) and torch.all(out.abs() < 1)
    with pytest.raises(ValueError, match="bits must be a positive int"):
        THNet(40, 0)


def test_pairwise_proxy_loss_hand_computed():
    codes = torch.tensor([[0.5, -1.0], [1.0, 1.0]])
    proxies = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    expected = []
    for i in range(2):
        row = 0.0
        for j in range(3):
            theta = 0.5 * float(codes[i] @ proxies[j])
            row += -(float(labels[i, j]) * theta - math.log(1 + math.exp(theta)))
        expected.append(row)
    got = pairwise_proxy_loss(codes, proxies, labels, reduction="none")
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(pairwise_proxy_loss(codes, proxies, labels), torch.tensor(expected).mean())
    assert torch.allclose(pairwise_proxy_loss(codes, proxies, labels, reduction="sum"), torch.tensor(expected).sum())
    # Long codes: no overflow (softplus), finite gradient.
    big = torch.full((1, 512), 1.0, requires_grad=True)
    loss = pairwise_proxy_loss(big, torch.ones(2, 512), torch.tensor([[0.0, 1.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
    with pytest.raises(ValueError, match="labels must be"):
        pairwise_proxy_loss(codes, proxies, labels[:, :2])


def test_proxy_network_loss_hand_computed():
    g = torch.tensor([[0.5, -0.2, 0.9], [0.4, 0.3, -0.6], [-0.1, 0.8, 0.0]])
    alpha, beta = 0.05, 0.1
    sep = 0.0
    for i in range(3):
        for j in range(3):
            if i != j:
                sep += max(0.0, float(g[i] @ g[j]))
    bal = sum(float(g[:, b].sum()) ** 2 for b in range(3))
    target = torch.where(g > 0, 1.0, -1.0)  # 0 -> -1
    quant = float(((g - target) ** 2).sum())
    expected = sep + alpha * bal + beta * quant
    got = proxy_network_loss(g, alpha=alpha, beta=beta)
    assert abs(float(got) - expected) < 1e-5
    with pytest.raises(ValueError, match="2-D"):
        proxy_network_loss(torch.zeros(3))


def test_proxy_network_loss_spreads_proxies():
    from dchml.method.proxies import train_proxies
    from dchml.train import TrainConfig

    torch.manual_seed(0)
    model = CrossModalHashModel(32, 6, text_dim=4, image_dim=4, image_hidden=4, text_hidden=4)
    before = proxy_network_loss(model.phnet.continuous_proxies()).item()
    diag = train_proxies(model, TrainConfig(bits=32, proxy_steps=300))
    assert diag["loss"] < before / 2
    g = model.proxies
    assert torch.equal(g, model.phnet.proxies())
    dist = (32 - g @ g.T) / 2
    assert dist[~torch.eye(6, dtype=torch.bool)].min() >= 8  # far apart, not collapsed
    assert diag["min_hamming"] == dist[~torch.eye(6, dtype=torch.bool)].min()


def test_encode_packs_sign_of_the_net():
    torch.manual_seed(0)
    model = CrossModalHashModel(20, 4, text_dim=30, image_dim=24, image_hidden=32, text_hidden=32)
    x_img, x_txt = torch.randn(7, 24), torch.rand(7, 30)
    packed = dchml.encode(model, x_img)  # modality inferred from the width
    assert packed.dtype == torch.uint8 and packed.shape == (7, 3)
    expected = dchml.pack_codes(sgn(model.image_net.eval()(x_img).detach()))
    assert torch.equal(packed, expected)
    assert torch.equal(dchml.encode(model.text_net, x_txt), dchml.pack_codes(hash_codes(model, x_txt, "text")))
    assert torch.equal(dchml.unpack_codes(packed, 20), hash_codes(model, x_img, "image"))
    # numpy input, tiny batch_size: same codes
    assert torch.equal(dchml.encode(model, x_img.numpy(), "image", batch_size=2), packed)
    assert continuous_codes(model, torch.empty(0, 30), "text").shape == (0, 20)


def test_encode_errors():
    model = CrossModalHashModel(8, 3, text_dim=10, image_dim=10, image_hidden=16, text_hidden=16)
    with pytest.raises(ValueError, match="pass modality"):
        dchml.encode(model, torch.randn(2, 10))  # both nets take 10-d input
    with pytest.raises(ValueError, match="modality must be"):
        dchml.encode(model, torch.randn(2, 10), "audio")
    with pytest.raises(ValueError, match="NaN"):
        dchml.encode(model, torch.full((2, 10), float("nan")), "text")
    with pytest.raises(ValueError, match="which encodes text"):
        dchml.encode(model.text_net, torch.randn(2, 10), "image")
    with pytest.raises(TypeError, match="model must be"):
        dchml.encode(torch.nn.Linear(2, 2), torch.randn(2, 2))


def test_model_spec_rebuilds():
    model = CrossModalHashModel(16, 5, text_dim=12, image_dim=None, image_size=64)
    clone = CrossModalHashModel(**model.spec())
    assert clone.load_state_dict(model.state_dict(), strict=True) is not None
    assert "proxies" in model.state_dict() and model.state_dict()["proxies"].shape == (5, 16)
    np.testing.assert_equal(sorted(model.spec()), sorted(["bits", "n_labels", "text_dim", "image_dim", "proxy_hidden",
                                                           "image_hidden", "text_hidden", "image_size",
                                                           "image_backbone", "modalities", "category_net"]))
