"""Backbones (random weights; nothing is downloaded), weight files and the cache, the optimiser's
parameter groups, mixed precision, and the CLIP towers where open_clip is installed."""
import pytest
import torch

from dchml.method.backbones import (BACKBONES, ClipTextEncoder, available, build_backbone, cache_dir, find_weights,
                             get_spec, load_backbone_weights, param_groups)
from dchml.models import CrossModalHashModel, IHNet
from dchml.method.precision import MixedPrecision

from conftest import needs_cuda

needs_torchvision = pytest.mark.skipif(not available("resnet50"), reason="torchvision is not installed")
needs_open_clip = pytest.mark.skipif(not available("clip-vit-b-32"),
                                     reason="open_clip is not installed (pip install open_clip_torch)")


@needs_torchvision
def test_resnet50_loads_a_torchvision_state_dict_from_the_cache(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(0)
    full = torchvision.models.resnet50().state_dict()  # what torch.save(resnet50(weights=...)) holds
    monkeypatch.setenv("DCHML_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cache_dir() == tmp_path and find_weights("resnet50", None) is None  # nothing cached: random
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(full, hub / "resnet50-11ad3fa6.pth")  # torchvision's own download cache is used too
    assert find_weights("resnet50", None) == str(hub / "resnet50-11ad3fa6.pth")
    torch.save(full, tmp_path / "resnet50.pth")
    assert find_weights("resnet50", None) == str(tmp_path / "resnet50.pth")
    assert find_weights("resnet50", "random") is None
    net = IHNet(8, image_size=32, backbone="resnet50")
    load_backbone_weights("resnet50", net.backbone, find_weights("resnet50", None))
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, full[key]), key
    assert "fc.weight" not in net.backbone.state_dict()  # the ImageNet classifier is dropped
    out = net.eval()(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8))
    assert out.shape == (2, 8) and torch.isfinite(out).all() and out.abs().max() <= 1


@needs_torchvision
@pytest.mark.parametrize("name, convs", [("vgg11", 8), ("vgg16", 13)])
def test_vgg_keeps_fc7_and_torchvision_names(name, convs):
    with torch.device("meta"):  # the structure only: 133M / 138M parameters are not allocated
        net = build_backbone(name)
        out = net(torch.empty(2, 3, 64, 64))
    assert out.shape == (2, get_spec(name).out_dim) == (2, 4096)
    keys = set(net.state_dict())
    assert "classifier.3.weight" in keys and "classifier.6.weight" not in keys
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.features) == convs  # VGG-11 is PSLDH's network
    assert get_spec(name).torchvision_files[0].startswith(name + "-")


def test_weight_files_are_checked(tmp_path):
    backbone = build_backbone("alexnet")
    with pytest.raises(FileNotFoundError, match="not found"):
        find_weights("alexnet", str(tmp_path / "none.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        load_backbone_weights("alexnet", backbone, str(junk))
    torch.save({"module.features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "part.pth")
    with pytest.raises(ValueError, match="is not a AlexNet state dict: missing keys"):
        load_backbone_weights("alexnet", backbone, str(tmp_path / "part.pth"))
    with pytest.raises(ValueError, match="image backbone must be one of alexnet, vgg11, vgg16"):
        get_spec("vit-h")


def test_param_groups_split_backbone_and_head():
    torch.manual_seed(0)
    net = IHNet(8, image_size=64)
    one = param_groups(net, 0.01)
    assert len(one) == 1 and len(one[0]["params"]) == len(list(net.parameters()))
    groups = param_groups(net, 0.01, 0.1)
    assert [g["lr"] for g in groups] == [pytest.approx(0.001), 0.01]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in net.backbone.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.hash.parameters()}
    # a step moves the backbone ten times less than a plain SGD step at lr would
    opt = torch.optim.SGD(groups, lr=0.01)
    before = net.backbone.features[0].weight.detach().clone()
    net(torch.rand(2, 3, 64, 64)).sum().backward()
    grad = net.backbone.features[0].weight.grad.clone()
    opt.step()
    torch.testing.assert_close(net.backbone.features[0].weight.detach(), before - 0.001 * grad)
    frozen = param_groups(IHNet(8, image_size=64), 0.01, 0.0)
    assert len(frozen) == 1 and len(frozen[0]["params"]) == 2  # the hash layer only
    features_net = IHNet(8, image_dim=12)
    assert len(param_groups(features_net, 0.01, 0.1)) == 1  # no backbone: one group


def test_mixed_precision_is_cuda_only():
    cpu = MixedPrecision("auto", "cpu")
    assert cpu.dtype is None and cpu.scaler is None and cpu.name == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        MixedPrecision("bf16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        MixedPrecision("int8", "cpu")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_on_cuda(precision):
    torch.manual_seed(0)
    net = IHNet(8, image_size=64).cuda()
    amp = MixedPrecision(precision, "cuda")
    opt = torch.optim.SGD(param_groups(net, 0.01, 0.1), lr=0.01)
    before = net.hash.weight.detach().clone()
    with amp.autocast():
        out = net(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, device="cuda"))
    assert out.dtype == amp.dtype
    amp.step(out.float().pow(2).mean(), opt)
    assert torch.isfinite(net.hash.weight).all() and not torch.equal(net.hash.weight, before)


@needs_open_clip
def test_clip_image_and_text_towers_with_random_weights(tmp_path):
    torch.manual_seed(0)
    model = CrossModalHashModel(16, 4, text_dim=10, image_size=64, image_backbone="clip-vit-b-32").eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    codes = model(images, "image")
    assert codes.shape == (2, 16)
    # a full open_clip state dict: the image tower's part loads into the backbone
    full = {f"visual.{k}": v + 1 for k, v in model.image_net.backbone.state_dict().items()}
    full["token_embedding.weight"] = torch.zeros(3, 3)
    torch.save(full, tmp_path / "clip.pt")
    load_backbone_weights("clip-vit-b-32", model.image_net.backbone, str(tmp_path / "clip.pt"))
    key = next(iter(model.image_net.backbone.state_dict()))
    assert torch.equal(model.image_net.backbone.state_dict()[key], full[f"visual.{key}"])
    encoder = ClipTextEncoder("clip-vit-b-32")
    feats = encoder(["a café in 東京!", "a dog", "a dog"])
    assert feats.shape == (3, 512) and torch.isfinite(feats).all()
    assert torch.equal(feats[1], feats[2]) and not torch.equal(feats[0], feats[1])


def test_every_backbone_is_listed_with_its_normalisation():
    assert set(BACKBONES) == {"alexnet", "vgg11", "vgg16", "resnet50", "clip-vit-b-32", "clip-vit-b-32-openai"}
    net = IHNet(8, image_size=64)
    assert torch.equal(net.mean.flatten(), torch.tensor(get_spec("alexnet").mean))
    with pytest.raises(ValueError, match="image_size must be >= 63 for the AlexNet backbone"):
        IHNet(8, image_size=32)
