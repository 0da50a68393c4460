"""SimCLR, SimSiam, BYOL, MoCo, VICReg as parts: losses of their parts, stop-gradient, EMA schedule,
the MoCo queue, and the pair-pruning contract (one plan per step, overhead counted once)."""

import copy

import pytest
import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
import simwnw_hf.pruning.planners as planners_module
import simwnw_hf.tokens.simwnw as token_module
from pair_views import shifted_pair
from simwnw_hf.pruning import PairStats, SimWnWSettings, TokenPruningSettings
from simwnw_hf.ssl.dino import DINO
from simwnw_hf.ssl.frameworks import BYOL, FRAMEWORK_NAMES, FRAMEWORKS, MoCo, SimCLR, SimSiam
from simwnw_hf.ssl.losses import NTXentLoss
from simwnw_hf.ssl.momentum import cosine_schedule
from simwnw_hf.ssl.pair import encode_pair

DIM = 16


def tiny_resnet(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("simwnw_resnet18_cifar", num_classes=0, channels=(8, 8, 8, 8), layers=(1, 1, 1, 1),
                             **kwargs)


def batch_of(model, batch=4):
    x1, x2, g1, g2 = shifted_pair(model, batch=batch, size=16)
    return {"views": [x1, x2], "geometry": [g1, g2]}


def build(cls, backbone, **kwargs):
    return cls(backbone, backbone.num_features, hidden_dim=DIM, out_dim=DIM, **kwargs)


def test_registry_holds_every_framework_with_its_recipe_defaults():
    assert FRAMEWORK_NAMES == ("simclr", "simsiam", "byol", "moco", "vicreg", "dino")
    assert set(FRAMEWORKS) == set(FRAMEWORK_NAMES) and FRAMEWORKS["dino"] is DINO
    assert FRAMEWORKS["simsiam"].sgd_lr == 0.05 and FRAMEWORKS["byol"].sgd_weight_decay == 1.5e-6
    assert [name for name, cls in FRAMEWORKS.items() if cls.multi_crop] == ["dino"]


def test_simclr_loss_is_ntxent_of_its_projections():
    model = build(SimCLR, tiny_resnet()).eval()
    batch = batch_of(model.backbone)
    loss, stats = model(batch)
    with torch.no_grad():
        z = [model.projection_head(model.backbone(v)) for v in batch["views"]]
    torch.testing.assert_close(loss, NTXentLoss(0.5)(*z))
    assert stats == PairStats()  # pruning not configured: the dense path


def test_simsiam_targets_are_stop_gradient():
    """d loss / d z2 flows only through the predictor (the term where z2 is predicted), never through z2
    as the target of p1: exactly SimSiam's stop-gradient."""
    model = build(SimSiam, tiny_resnet(), pred_hidden_dim=8).eval()  # eval: recomputing parts is exact
    batch = batch_of(model.backbone)
    seen = []
    model.projection_head.register_forward_hook(lambda mod, args, out: seen.append(out))
    loss, _ = model(batch)
    z1, z2 = seen
    grad_z2, = torch.autograd.grad(loss, z2, retain_graph=True)
    predicted_only = 0.5 * model.criterion(model.prediction_head(z2), z1.detach())
    expected, = torch.autograd.grad(predicted_only, z2)
    torch.testing.assert_close(grad_z2, expected)
    # without the stop-gradient the target term would add a non-zero gradient
    as_target, = torch.autograd.grad(0.5 * model.criterion(model.prediction_head(z1).detach(), z2), z2)
    assert as_target.abs().sum() > 0


@pytest.mark.parametrize("cls", [BYOL, MoCo])
def test_momentum_encoder_gets_no_gradient_and_follows_its_schedule(cls):
    model = build(cls, tiny_resnet(), momentum=0.9).train()
    batch = batch_of(model.backbone)
    loss, _ = model(batch)
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.backbone_momentum.parameters())
    assert all(p.grad is None for p in model.projection_head_momentum.parameters())
    # EMA: ema <- m ema + (1 - m) online, m = cosine 0.9 -> 1 for BYOL, constant 0.9 for MoCo
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.backbone_momentum.parameters()]
    online = [p.clone() for p in model.backbone.parameters()]
    progress = 0.3
    model.momentum_update(progress)
    m = cosine_schedule(progress, 0.9, 1.0) if cls is BYOL else 0.9
    for ema, old, new in zip(model.backbone_momentum.parameters(), before, online):
        torch.testing.assert_close(ema, m * old + (1 - m) * new)
    if cls is BYOL:  # the cosine schedule ends at m = 1: at the end of training the target stops moving
        before = [p.clone() for p in model.backbone_momentum.parameters()]
        model.momentum_update(1.0)
        assert all(torch.equal(a, b) for a, b in zip(model.backbone_momentum.parameters(), before))


def test_moco_enqueues_keys_only_in_training():
    model = build(MoCo, tiny_resnet(), queue_size=8)
    batch = batch_of(model.backbone, batch=2)
    queue = model.criterion.queue.clone()
    model.eval()
    with torch.no_grad():
        model(batch)
    assert torch.equal(model.criterion.queue, queue)
    model.train()
    model(batch)
    assert not torch.equal(model.criterion.queue, queue)


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("cls", [BYOL, MoCo])
def test_momentum_frameworks_match_once_per_step_and_count_overhead_once(monkeypatch, cls):
    backbone = tiny_resnet().configure_pair_pruning(SimWnWSettings(block_size=4))
    model = build(cls, backbone).train()
    batch = batch_of(backbone)
    calls = _count_calls(monkeypatch, planners_module, "match_blocks")
    loss, stats = model(batch)
    assert len(calls) == 1                                     # one block matching for both encoders
    x1, x2 = batch["views"]
    plan = backbone.plan_pair(x1, x2, *batch["geometry"])
    _, _, online = encode_pair(copy.deepcopy(backbone), x1, x2, plan)
    with torch.no_grad():
        _, _, momentum = encode_pair(copy.deepcopy(model.backbone_momentum), x1, x2, plan)
    assert stats.pairs == 2 * x1.shape[0]                      # both encoders pruned
    assert stats.overhead_flops == pytest.approx(plan.overhead_flops + online.overhead_flops + momentum.overhead_flops)
    assert stats.dense_flops == pytest.approx(online.dense_flops + momentum.dense_flops)
    assert 0 < stats.removal_ratio < 1


def test_dino_matches_once_per_step_and_counts_overhead_once(monkeypatch):
    torch.manual_seed(0)
    vit = timm.create_model("simwnw_vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2,
                            embed_dim=32, num_heads=2)
    vit.configure_pair_pruning(TokenPruningSettings("simwnw", psnr_threshold=10.0))
    dino = DINO(vit, vit.num_features, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    x1, x2, g1, g2 = shifted_pair(vit, batch=2, size=32, shift=(8, 8))
    calls = _count_calls(monkeypatch, token_module, "match_blocks")
    loss, stats = dino({"views": [x1, x2], "geometry": [g1, g2]})
    assert len(calls) == 1 and torch.isfinite(loss)
    plan = vit.plan_pair(x1, x2, g1, g2)
    # SimWnW tokens: the forward adds no overhead of its own, so the step's overhead is the plan's, once
    assert stats.overhead_flops == pytest.approx(plan.overhead_flops) and plan.overhead_flops > 0
    assert stats.pairs == 4 and stats.kept_token_ratio < 1


def test_set_progress_reaches_every_encoder_schedule():
    vit = timm.create_model("simwnw_vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2,
                            embed_dim=32, num_heads=2)
    vit.configure_pair_pruning(TokenPruningSettings("simprune", prune_layers=(1,)))
    model = build(BYOL, vit)
    model.set_progress(0.25)
    assert model.backbone.pair_progress == model.backbone_momentum.pair_progress == 0.25
    dino = DINO(copy.deepcopy(vit), vit.num_features, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    dino.set_progress(0.5)
    assert float(dino.progress) == 0.5 and dino.teacher_backbone.pair_progress == 0.5
    with pytest.raises(ValueError, match="progress"):
        model.set_progress(1.5)
