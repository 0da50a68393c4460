"""SimWnW ResNets: exactly timm's ResNet for single images, timm contracts, and the pair path."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.data.geometry import make_geometry
from simwnw_hf.models.resnet import SimWnWResNet
from simwnw_hf.models.resnet_pair import stage_masks
from simwnw_hf.ssl.pair import encode_pair, finalize_stats, supports_pair_pruning


def test_fresh_resnet50_is_timm_resnet50():
    torch.manual_seed(0)
    ours = timm.create_model("simwnw_resnet50", num_classes=1000).eval()
    torch.manual_seed(0)
    ref = timm.create_model("resnet50").eval()
    assert isinstance(ours, SimWnWResNet)
    sd, sd_ref = ours.state_dict(), ref.state_dict()
    assert list(sd) == list(sd_ref)
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    assert ours.pair_pruning_enabled is False and not supports_pair_pruning(ours)


def test_state_dict_loads_both_ways():
    ours = timm.create_model("simwnw_resnet18", num_classes=10).eval()
    ref = timm.create_model("resnet18", num_classes=10).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    ref2 = timm.create_model("resnet18", num_classes=10)
    ref2.load_state_dict(timm.create_model("simwnw_resnet18", num_classes=10).state_dict(), strict=True)


def test_timm_contracts_on_the_cifar_model():
    model = timm.create_model("simwnw_resnet18_cifar", num_classes=7).eval()
    assert model.pretrained_cfg["mean"] == (0.4914, 0.4822, 0.4465) and model.pretrained_cfg["input_size"] == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, 4, 4)
        assert model.forward_head(feats).shape == (2, 7)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)
    fo = timm.create_model("simwnw_resnet18_cifar", features_only=True).eval()
    with torch.no_grad():
        maps = fo(x)
    assert [m.shape[-1] for m in maps] == [32 // r for r in fo.feature_info.reduction()] == [32, 32, 16, 8, 4]
    assert fo.feature_info.channels() == [64, 64, 128, 256, 512]


def _pair_batch(model, batch=2, size=32, shift=(4, 2), seed=0):
    """Two crops of one smooth source image, normalised with the model's mean/std, with geometry."""
    g = torch.Generator().manual_seed(seed)
    src = F.interpolate(torch.rand(batch, 3, 6, 6, generator=g), size=size + 8, mode="bilinear", align_corners=False)
    dy, dx = shift
    p1, p2 = src[..., :size, :size], src[..., dy:dy + size, dx:dx + size]
    g1 = default_collate([make_geometry(0, 0, size, size, False, (size, size), (size + 8, size + 8))] * batch)
    g2 = default_collate([make_geometry(dy, dx, size, size, False, (size, size), (size + 8, size + 8))] * batch)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    return (p1 - mean) / std, (p2 - mean) / std, g1, g2


def _small_cifar_model():
    """The registered CIFAR model with narrow stages (timm ``channels`` kwarg) to keep tests fast."""
    return timm.create_model("simwnw_resnet18_cifar", num_classes=0, channels=(16, 16, 32, 32)).train()


def test_forward_pair_shapes_stats_and_gradients():
    model = _small_cifar_model()
    assert model.configure_pair_pruning(block_size=5, max_rings=1) is model and supports_pair_pruning(model)
    x1, x2, g1, g2 = _pair_batch(model)
    f1, f2, stats = encode_pair(model, x1, x2, g1, g2, prune=True)
    assert f1.shape == f2.shape == (2, 32)
    assert set(stats) == {"dense_flops", "kept_flops", "overhead_flops", "removal_ratio", "pairs"}
    assert stats["pairs"] == 2.0
    assert 0.0 < stats["removal_ratio"] / stats["pairs"] <= 1.0  # smooth image, known shift: blocks match
    assert 0.0 < stats["kept_flops"] < stats["dense_flops"] and stats["overhead_flops"] > 0
    assert 0.0 < finalize_stats(dict(stats))["removal_ratio"] <= 1.0
    (f1.sum() + f2.sum()).backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    masks = stage_masks(model, x1[0], x2[0], {k: v[0] for k, v in g1.items()}, {k: v[0] for k, v in g2.items()},
                        block_size=5)
    names = [m["name"] for m in masks]
    assert names[:3] == ["input", "stem", "layer1 waxed"] and names[-1] == "layer4"
    assert masks[0]["mask1"].shape == (32, 32) and masks[2]["mask1"].shape == (16, 32, 32)


def test_forward_pair_without_similar_blocks_is_the_dense_encoder():
    model = _small_cifar_model()
    dense = copy.deepcopy(model)
    model.configure_pair_pruning(psnr_threshold=60.0)
    x1, _, g1, g2 = _pair_batch(model)
    x2 = torch.randn_like(x1)  # noise: no block of view 1 is within 60 dB of it
    f1, f2, stats = model.forward_pair(x1, x2, g1, g2)
    torch.testing.assert_close(f1, dense(x1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f2, dense(x2), rtol=1e-4, atol=1e-5)
    assert stats["removal_ratio"] == 0.0 and stats["kept_flops"] == stats["dense_flops"]
    with pytest.raises(ValueError, match="equal shape"):
        model.forward_pair(x1, x2[:, :, :16], g1, g2)
    with pytest.raises(ValueError, match="max_rings"):
        model.configure_pair_pruning(max_rings=-1)


def test_forward_pair_under_no_grad_counts_forward_only():
    """A momentum/target encoder runs without grad: its stats hold forward FLOPs only."""
    model = _small_cifar_model().configure_pair_pruning(block_size=5)
    x1, x2, g1, g2 = _pair_batch(model)
    _, _, train_stats = model.forward_pair(x1, x2, g1, g2)
    with torch.no_grad():
        _, _, fwd_stats = model.forward_pair(x1, x2, g1, g2)
    # backward = grad-weight + grad-input (none for the stem conv), so the train step is just under 3x
    assert 2.5 < train_stats["dense_flops"] / fwd_stats["dense_flops"] < 3.0
    assert fwd_stats["kept_flops"] <= fwd_stats["dense_flops"]
