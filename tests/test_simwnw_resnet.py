"""SimWnW ResNets: exactly timm's ResNet for single images, timm contracts, and the pair path."""

import copy

import pytest
import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from pair_views import shifted_pair as _pair_batch
from simwnw_hf.models.resnet import SimWnWResNet
from simwnw_hf.models.resnet_pair import stage_masks
from simwnw_hf.pruning import PairStats, SimWnWSettings, TokenPruningSettings
from simwnw_hf.ssl.pair import encode_pair, encode_view, plan_pair, plan_stats, supports_pair_pruning


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


def _small_cifar_model():
    """The registered CIFAR model with narrow stages (timm ``channels`` kwarg) to keep tests fast."""
    return timm.create_model("simwnw_resnet18_cifar", num_classes=0, channels=(16, 16, 32, 32)).train()


def test_forward_pair_shapes_stats_and_gradients():
    model = _small_cifar_model()
    settings = SimWnWSettings(block_size=5, max_rings=1)
    assert model.configure_pair_pruning(settings) is model and supports_pair_pruning(model)
    assert model.pair_settings is settings
    x1, x2, g1, g2 = _pair_batch(model)
    plan = plan_pair(model, x1, x2, g1, g2, prune=True)
    # the plan holds the match and the settings it used, resolved for the 32px views
    assert plan.method == "simwnw" and plan.match.block_size == 5 and plan.pairs == 2
    assert plan.settings == SimWnWSettings(block_size=5, search_window=10, max_rings=1)
    assert plan.overhead_flops == plan.match.overhead_flops > 0 and plan_stats(plan).overhead_flops == plan.overhead_flops
    assert plan.seconds > 0 and plan_stats(plan).plan_seconds == plan.seconds   # made here: the step paid its time
    f1, f2, stats = encode_pair(model, x1, x2, plan)
    assert f1.shape == f2.shape == (2, 32) and isinstance(stats, PairStats)
    assert stats.pairs == 2.0
    assert 0.0 < stats.removal_ratio <= 1.0  # smooth image, known shift: blocks match
    assert stats.removed_fraction_sum == pytest.approx(2 * stats.removal_ratio)
    assert 0.0 < stats.pruned_flops < stats.dense_flops and stats.overhead_flops > 0  # waxing
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
    model.configure_pair_pruning(SimWnWSettings(psnr_threshold=60.0))
    x1, _, g1, g2 = _pair_batch(model)
    x2 = torch.randn_like(x1)  # noise: no block of view 1 is within 60 dB of it
    f1, f2, stats = model.forward_pair(x1, x2, model.plan_pair(x1, x2, g1, g2))
    torch.testing.assert_close(f1, dense(x1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f2, dense(x2), rtol=1e-4, atol=1e-5)
    assert stats.removal_ratio == 0.0 and stats.pruned_flops == stats.dense_flops
    with pytest.raises(ValueError, match="equal shape"):
        model.plan_pair(x1, x2[:, :, :16], g1, g2)
    with pytest.raises(ValueError, match="max_rings"):
        SimWnWSettings(max_rings=-1)
    with pytest.raises(ValueError, match="--token-pruning fits simwnw_vit"):
        model.configure_pair_pruning(TokenPruningSettings("evit"))


def test_disabled_pair_pruning_runs_dense_and_dense_path_returns_pre_logits():
    """forward_pair honours pair_pruning_enabled; dense and pair paths return the same kind of features
    (pooled pre-logits) even for a backbone with a classifier."""
    model = timm.create_model("simwnw_resnet18_cifar", num_classes=10, channels=(16, 16, 32, 32)).eval()
    x1, x2, g1, g2 = _pair_batch(model)
    model.configure_pair_pruning(SimWnWSettings(block_size=5))
    plan = model.plan_pair(x1, x2, g1, g2)
    model.configure_pair_pruning(SimWnWSettings(block_size=5), enabled=False)
    assert plan_pair(model, x1, x2, g1, g2) is None
    with torch.no_grad():
        f1, f2, stats = model.forward_pair(x1, x2, plan)        # disabled: the plan is not applied
        d1, d2, dense_stats = encode_pair(model, x1, x2, None)  # the dense branch
        expected = model.forward_head(model.forward_features(x1), pre_logits=True)
    assert stats == dense_stats == PairStats() and f1.shape == (2, 32)
    torch.testing.assert_close(f1, expected)
    torch.testing.assert_close(d1, expected)
    torch.testing.assert_close(encode_view(model, x2), d2)
    assert model(x1).shape == (2, 10)  # the classifier is still there for ordinary calls


def test_forward_pair_under_no_grad_counts_forward_only():
    """A momentum/target encoder runs without grad: its stats hold forward FLOPs only."""
    model = _small_cifar_model().configure_pair_pruning(SimWnWSettings(block_size=5))
    x1, x2, g1, g2 = _pair_batch(model)
    plan = model.plan_pair(x1, x2, g1, g2)
    _, _, train_stats = model.forward_pair(x1, x2, plan)
    with torch.no_grad():
        _, _, fwd_stats = model.forward_pair(x1, x2, plan)
    # backward = grad-weight + grad-input (none for the stem conv), so the train step is just under 3x
    assert 2.5 < train_stats.dense_flops / fwd_stats.dense_flops < 3.0
    assert fwd_stats.pruned_flops <= fwd_stats.dense_flops


def test_legacy_keyword_configure_still_works_with_a_warning():
    model = _small_cifar_model()
    with pytest.warns(DeprecationWarning, match="SimWnWSettings"):
        model.configure_pair_pruning(block_size=5, max_rings=1)
    assert model.pair_settings == SimWnWSettings(block_size=5, max_rings=1)
