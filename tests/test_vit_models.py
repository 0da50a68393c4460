"""simwnw_vit_* are timm ViTs: registry, pretrained_cfg, state_dict both ways, identical outputs."""

import pytest
import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_vit_*)
from simwnw_hf.models.vit import SimWnWVisionTransformer

# num_classes=1000 as timm's vit_* (the simwnw_* default is headless: their published weights are SSL encoders)
TINY = dict(img_size=32, patch_size=8, depth=4, embed_dim=64, num_heads=2, num_classes=1000)


def _pair(name="simwnw_vit_tiny_patch16_224", ref="vit_tiny_patch16_224", **kwargs):
    torch.manual_seed(0)
    ours = timm.create_model(name, **dict(TINY, **kwargs)).eval()
    theirs = timm.create_model(ref, **dict(TINY, **kwargs)).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_registered_on_import_with_cfg():
    names = timm.list_models("simwnw_vit_*")
    for name in ("simwnw_vit_tiny_patch16_224", "simwnw_vit_small_patch16_224"):
        assert name in names
        model = timm.create_model(name, **TINY)
        assert isinstance(model, SimWnWVisionTransformer)
        cfg = model.pretrained_cfg
        assert not cfg.get("hf_hub_id") and not cfg.get("tag")  # no weights are published (issue 14)
        assert cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"
        assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
        assert model.pair_pruning_enabled is False


@pytest.mark.parametrize("name,ref", [("simwnw_vit_tiny_patch16_224", "vit_tiny_patch16_224"),
                                      ("simwnw_vit_small_patch16_224", "vit_small_patch16_224")])
def test_full_size_layout_is_timms(name, ref):
    ours = timm.create_model(name, pretrained=False, device="meta", num_classes=1000)   # shapes only: no init cost
    theirs = timm.create_model(ref, pretrained=False, device="meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.patch_embed.patch_size == (16, 16) and len(ours.blocks) == 12
    assert all(blk.attn.fused_attn for blk in ours.blocks) == all(blk.attn.fused_attn for blk in theirs.blocks)


def test_state_dict_loads_both_ways_and_outputs_equal():
    ours, theirs = _pair()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
        assert torch.allclose(ours.forward_features(x), theirs.forward_features(x), atol=1e-5)
        feats = ours.forward_features(x)
        assert torch.allclose(ours.forward_head(feats, pre_logits=True), theirs.forward_head(feats, pre_logits=True))
    # and the other way round: timm weights into ours, strictly
    torch.manual_seed(1)
    other = timm.create_model("vit_tiny_patch16_224", **TINY).eval()
    ours.load_state_dict(other.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(ours(x), other(x), atol=1e-5)


def test_forward_intermediates_match_timm():
    ours, theirs = _pair()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f1, i1 = ours.forward_intermediates(x, indices=[1, 3], return_prefix_tokens=True)
        f2, i2 = theirs.forward_intermediates(x, indices=[1, 3], return_prefix_tokens=True)
        assert torch.allclose(f1, f2, atol=1e-5)
        for (a, pa), (b, pb) in zip(i1, i2):
            assert a.shape == (2, 64, 4, 4) and torch.allclose(a, b, atol=1e-5) and torch.allclose(pa, pb, atol=1e-5)
        only = ours.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
        assert len(only) == 2 and only[0].shape == (2, 16, 64)


def test_reset_classifier_and_features_only():
    ours, _ = _pair()
    ours.reset_classifier(7)
    assert ours.get_classifier().out_features == 7
    assert ours(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    ours.reset_classifier(0, global_pool="avg")
    assert ours(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    feats = timm.create_model("simwnw_vit_tiny_patch16_224", features_only=True, out_indices=(1, 3), **TINY)
    outs = feats(torch.randn(1, 3, 32, 32))
    assert [o.shape for o in outs] == [(1, 64, 4, 4)] * 2


def test_small_test_variant_by_kwargs():
    model = timm.create_model("simwnw_vit_small_patch16_224", num_classes=0, img_size=32, patch_size=16, depth=2,
                              embed_dim=64, num_heads=2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert model.patch_embed.num_patches == 4
