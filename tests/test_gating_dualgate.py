"""Dual gating (seed 002): sampler, losses, FLOPs vs hand counts and FlopCounterMode, dense export."""

import math

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import simwnw_hf  # noqa: F401  (registers the models)
from simwnw_hf.gating.dualgate import (GATE_TEMPERATURE, anneal_p, block_flops, bound_loss, budget_loss,
                                       gate_flops, sample_gate)
from simwnw_hf.gating.dualgate_stats import dualgate_flops_real, dualgate_losses, dualgate_stats, pair_step_stats
from simwnw_hf.models.dualgate_resnet import DualGateResNet, dense_state_dict, gated_state_dict


def _flops(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _model(name="simwnw_dualgate_resnet18_cifar", dense_path=True, **kw):
    """The registered model; ``dense_path``: with the co-training dense BN (as the trainer prepares it)."""
    torch.manual_seed(0)
    m = timm.create_model(name, **kw)
    if dense_path:
        m.add_dense_path()
    with torch.no_grad():  # timm zero-inits each block's last BN: blocks would start as identities
        for blk in m.gated_blocks():
            blk.bn2.weight.uniform_(0.5, 1.5)
            if dense_path:
                blk.bn2_dense.weight.uniform_(0.5, 1.5)
    return m


def test_sampler_hard_value_and_straight_through_gradient():
    logits = torch.tensor([-2.0, -0.1, 0.0, 0.3, 4.0], requires_grad=True)
    noise = torch.tensor([0.5, 0.2, -0.1, -1.0, 0.0])
    m = sample_gate(logits, training=True, noise=noise)
    soft = torch.sigmoid((logits + noise) / GATE_TEMPERATURE)
    assert torch.equal(m.detach(), (soft >= 0.5).float())
    assert set(m.detach().tolist()) <= {0.0, 1.0}
    m.sum().backward()
    expected = (soft * (1 - soft) / GATE_TEMPERATURE).detach()
    assert torch.allclose(logits.grad, expected)
    assert torch.equal(sample_gate(logits.detach(), training=False), (logits.detach() >= 0).float())


def test_budget_and_bound_loss_hand_values():
    assert budget_loss(torch.tensor(30.0), 100.0, 0.5).item() == pytest.approx(5 * 0.2 ** 2)
    d = torch.tensor([0.2, 0.9])
    # target 0.25 -> s = 0.5; p = 1: lower mean(0.09, 0) / upper mean(0, 0.16)
    assert bound_loss(d, 0.25, p=1.0).item() == pytest.approx(0.045 + 0.08)
    assert bound_loss(d, 0.25, p=0.0).item() == 0.0
    assert anneal_p(0) == 1.0 and anneal_p(50) == pytest.approx(math.exp(-1.0))
    with pytest.raises(ValueError, match="t_d"):
        budget_loss(torch.tensor(1.0), 1.0, 0.0)


def _hand_resnet18_cifar_flops():
    """ResNet-18, CIFAR stem, 32px: stem + 8 BasicBlocks, FLOPs = 2 x MACs."""
    total = 2 * 27 * 64 * 32 * 32
    cin, hw = 64, 32
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        hw //= stride
        for b in range(2):
            inp = cin if b == 0 else planes
            total += 2 * 9 * inp * planes * hw * hw + 2 * 9 * planes * planes * hw * hw
            if b == 0 and (stride != 1 or cin != planes):
                total += 2 * inp * planes * hw * hw
        cin = planes
    return total


def test_full_flops_match_hand_count_and_flop_counter():
    m = _model().eval()
    x = torch.randn(1, 3, 32, 32)
    masks = [torch.ones(1, blk.conv1.out_channels) for blk in m.gated_blocks()]
    real, full = dualgate_flops_real(m, masks, (32, 32))
    gates = sum(gate_flops(b.conv1.in_channels, b.conv1.out_channels) for b in m.gated_blocks())
    assert full == _hand_resnet18_cifar_flops()
    assert full == _flops(lambda: m.forward_dual(x, gated=False))
    assert real.item() == pytest.approx(full + gates)
    # the gated path computes densely and masks: what FlopCounterMode sees is dense + the gates' convs
    assert _flops(lambda: m.forward_dual(x, gated=True)) == pytest.approx(full + gates)


def test_active_channel_flops_match_a_sliced_block():
    """Slow reference: physically drop the off channels of one block and count with FlopCounterMode."""
    m = _model().eval()
    blk = m.layer2[0]
    x = torch.randn(1, 64, 32, 32)
    with torch.no_grad():
        blk.gate.fc2.weight.normal_()
        out, mask = blk.forward_gated(x)
    keep = mask[0].bool()
    assert 0 < keep.sum() < keep.numel()
    c1 = nn.Conv2d(64, int(keep.sum()), 3, 2, 1, bias=False)
    c2 = nn.Conv2d(int(keep.sum()), 128, 3, 1, 1, bias=False)
    c1.weight.data = blk.conv1.weight.data[keep]
    c2.weight.data = blk.conv2.weight.data[:, keep]
    bn1 = blk.bn1

    def sliced():
        h = torch.relu(nn.functional.batch_norm(c1(x), bn1.running_mean[keep], bn1.running_var[keep],
                                                bn1.weight[keep], bn1.bias[keep], False, 0.0, bn1.eps))
        return torch.relu(blk.bn2(c2(h)) + blk.downsample(x))

    with torch.no_grad():
        ref = sliced()
        counted = _flops(sliced)
    assert torch.allclose(out, ref, atol=1e-5)
    assert counted == block_flops(keep.sum().float(), 64, 128, (16, 16), downsample=True).item()


def test_train_flops_dense_path_matches_flop_counter_forward_backward():
    m = _model().train()
    x = torch.randn(2, 3, 32, 32)
    masks = [torch.ones(2, b.conv1.out_channels) for b in m.gated_blocks()]
    stats = dualgate_stats(m, masks, (32, 32))
    counted = _flops(lambda: m.forward_dual(x, gated=False)[0].sum().backward())
    assert stats.train_dense * 2 == counted  # per image, batch 2; the stem has no grad-input
    assert stats.forward_dense * 2 == _flops(lambda: m.forward_dual(x, gated=False))
    assert stats.sparsity == 0.0
    assert stats.train_actual == pytest.approx(stats.train_dense + 3 * stats.overhead_flops)
    off = dualgate_stats(m, [torch.zeros_like(t) for t in masks], (32, 32))
    assert off.sparsity == 1.0 and off.forward_actual < 0.2 * off.forward_dense
    pair = pair_step_stats(off)
    assert pair.forward_dense == 2 * off.forward_dense
    assert pair.train_actual == off.train_dense + off.train_actual


def test_budget_loss_gradient_reaches_the_gates():
    m = _model().train()
    _, masks = m.forward_dual(torch.randn(4, 3, 32, 32), gated=True)
    budget, bound = dualgate_losses(m, masks, (32, 32), target=0.3, epoch=0)
    (budget + bound).backward()
    g = m.layer3[1].gate.fc2.weight.grad
    assert g is not None and g.abs().sum() > 0


@pytest.mark.parametrize("name,plain", [("simwnw_dualgate_resnet18_cifar", "simwnw_resnet18_cifar"),
                                        ("simwnw_dualgate_resnet18", "resnet18")])
def test_dense_path_exports_to_plain_timm_resnet(name, plain):
    m = _model(name)
    size = 32 if "cifar" in name else 64
    ref = timm.create_model(plain, num_classes=0)
    ref.load_state_dict(dense_state_dict(m), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert not torch.allclose(m.eval().forward_features(x), ref.eval().forward_features(x))
    for train in (False, True):
        m.train(train), ref.train(train)
        with torch.no_grad():
            assert torch.equal(m.forward_dual(x, gated=False)[0], ref.forward_features(x))


def test_keep_all_gates_equal_the_dense_path():
    m = _model().eval()
    with torch.no_grad():
        for blk in m.gated_blocks():
            blk.gate.fc2.weight.zero_()  # logits 0 -> eval gate on (logits >= 0)
            blk.bn1.load_state_dict(blk.bn1_dense.state_dict())
            blk.bn2.load_state_dict(blk.bn2_dense.state_dict())
        x = torch.randn(2, 3, 32, 32)
        gated, masks = m.forward_dual(x, gated=True)
        assert all(bool(mm.all()) for mm in masks)
        assert torch.equal(gated, m.forward_dual(x, gated=False)[0])


def test_registered_models_follow_timm_conventions(tmp_path):
    m = _model(dense_path=False)
    assert isinstance(m, DualGateResNet) and m.num_classes == 0
    assert m.pretrained_cfg["num_classes"] == 0 and not m.pretrained_cfg.get("hf_hub_id")
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        y = m(x)
        assert torch.equal(y, m.forward_head(m.forward_features(x)))
        assert torch.equal(y, m.forward_dual(x, gated=True)[0].mean((2, 3)))
    torch.save(m.state_dict(), tmp_path / "w.pt")
    m2 = _model(dense_path=False)
    m2.load_state_dict(torch.load(tmp_path / "w.pt"), strict=True)
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m2(x), y)
    m2.reset_classifier(10)
    assert m2(x).shape == (2, 10)
    feats = timm.create_model("simwnw_dualgate_resnet18_cifar", features_only=True)(x)
    assert [f.shape[1] for f in feats] == [64, 64, 128, 256, 512]
    with pytest.raises(NotImplementedError):
        m.set_grad_checkpointing(True)


def test_bad_input_fails_with_one_clear_message():
    with pytest.raises(RuntimeError, match="no published weights"):
        timm.create_model("simwnw_dualgate_resnet18_cifar", pretrained=True)
    m = _model()
    with pytest.raises(ValueError, match="gated blocks"):
        dualgate_stats(m, [torch.ones(1, 64)], (32, 32))


def test_stats_convert_to_the_runs_pair_stats():
    """GatingStats (per image, per view) -> PairStats (sums over the step's images): one conversion."""
    m = _model()
    st = dualgate_stats(m, [torch.ones(1, b.conv1.out_channels) for b in m.gated_blocks()], (32, 32))
    assert st.extra["density_layer4.1"] == 1.0
    ps = st.pair_stats(8)
    assert ps.pairs == 8 and ps.sparsity == pytest.approx(st.sparsity)
    assert ps.dense_flops == pytest.approx(8 * st.train_dense)
    assert ps.pruned_flops + ps.overhead_flops == pytest.approx(8 * st.train_actual)
    assert ps.overhead_flops == pytest.approx(8 * 3 * st.overhead_flops)  # forward, grad-input, grad-weight
    assert ps.forward_flops_ratio == pytest.approx(st.forward_ratio)
    two = st.pair_stats(8, views=2, overhead_passes=0)
    assert two.pairs == 8 and two.dense_flops == pytest.approx(2 * ps.dense_flops) and two.overhead_flops == 0
    assert two.sparsity == pytest.approx(st.sparsity)


def test_pretrained_loads_a_local_file(tmp_path):
    m = _model()
    torch.save(m.state_dict(), tmp_path / "w.pth")
    m2 = timm.create_model("simwnw_dualgate_resnet18_cifar", pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")))
    x = torch.randn(1, 3, 32, 32)
    m.eval(), m2.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_registered_model_uses_every_parameter_and_has_no_dense_keys():
    """timm's contract: a plain forward of the registered (gated) model gives every parameter a gradient."""
    m = _model(dense_path=False).train()
    assert not any("_dense" in k for k in m.state_dict())
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_dense_path_is_added_once_and_needed_for_the_dense_forward():
    m = _model(dense_path=False)
    with pytest.raises(ValueError, match="add_dense_path"):
        m.forward_dual(torch.randn(1, 3, 32, 32), gated=False)
    with pytest.raises(ValueError, match="no dense path"):
        dense_state_dict(m)
    m.add_dense_path()
    keys = list(m.state_dict())
    m.add_dense_path()
    assert list(m.state_dict()) == keys and "layer1.0.bn1_dense.weight" in keys
    # a plain forward still runs the gated path only: the dense BN gets no gradient from it
    m.train()(torch.randn(2, 3, 32, 32)).sum().backward()
    assert m.layer1[0].bn1_dense.weight.grad is None and m.layer1[0].bn1.weight.grad is not None


def test_gated_state_dict_loads_strictly_into_the_registered_model():
    trained = _model()  # co-training state: gated keys + the dense path's *_dense BN
    deployed = timm.create_model("simwnw_dualgate_resnet18_cifar")
    deployed.load_state_dict(gated_state_dict(trained.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(deployed.eval()(x), trained.eval()(x))
