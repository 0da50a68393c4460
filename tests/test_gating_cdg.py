"""CDG / SCDG (seed 003 + CGNet): disjoint branch channel groups, exact dense fallback, STE, FLOPs."""

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import simwnw_hf  # noqa: F401
from simwnw_hf.gating.cdg import (CDGConv2d, base_path_mask, cdg_branch, cdg_stats, channel_group_mean,
                                  convert_cdg, forward_branch, sparse_step_ste, threshold_loss)


def _resnet():
    torch.manual_seed(0)
    m = timm.create_model("simwnw_resnet18_cifar")
    with torch.no_grad():  # timm zero-inits each block's last BN: blocks would start as identities
        for blk in (b for stage in (m.layer1, m.layer2, m.layer3, m.layer4) for b in stage):
            blk.bn2.weight.fill_(1.0)
    return m


def test_branch_base_paths_are_disjoint_diagonal_and_anti_diagonal():
    b0, b1 = base_path_mask(16, 8, 4, 0), base_path_mask(16, 8, 4, 1)
    assert not (b0 & b1).any()
    assert (b0.sum(1) == 4).all() and (b1.sum(1) == 4).all()  # 1/p of the inputs per output channel
    # output group g (2 channels): branch 0 reads input group g, branch 1 input group 3 - g
    for g in range(4):
        assert b0[2 * g, 4 * g:4 * g + 4].all() and b1[2 * g, 4 * (3 - g):4 * (3 - g) + 4].all()
    with pytest.raises(ValueError, match="even"):
        base_path_mask(12, 12, 3, 0)
    with pytest.raises(ValueError, match="split"):
        base_path_mask(10, 8, 4, 0)


def test_sparse_straight_through_passes_gradient_only_where_on():
    s = torch.tensor([0.2, 0.5, 0.51, 0.9], requires_grad=True)
    m = sparse_step_ste(s)
    assert torch.equal(m.detach(), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    (m * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(s.grad, torch.tensor([0.0, 0.0, 3.0, 4.0]))


def test_disabled_gating_is_the_original_model_exactly():
    ref = _resnet()
    m = _resnet()
    names = convert_cdg(m)
    assert len(names) == 16 and "conv1" not in names
    for c in m.modules():
        if isinstance(c, CDGConv2d):
            c.gating_enabled = False
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))


@pytest.mark.parametrize("structured", [None, 8])
def test_keep_all_and_keep_none_thresholds(structured):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    c = CDGConv2d.from_conv(conv, structured_group=structured)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        c.tau.fill_(-1e4)
        assert torch.allclose(c(x, branch=1), conv(x), atol=1e-5)  # gate on everywhere: base + conditional
        assert c.density[1] == 1.0
        c.tau.fill_(1e4)
        base = F.conv2d(x, conv.weight * c.base_mask[0][:, :, None, None], padding=1)
        assert torch.equal(c(x, branch=0), base)  # gate off: base path only
        assert c.density[0] == 0.0


def test_scdg_masks_are_constant_over_groups_of_8_channels():
    torch.manual_seed(0)
    c = CDGConv2d(16, 32, 3, padding=1, structured_group=8).train()
    y_base = torch.randn(4, 32, 6, 6)
    m = c.gate(y_base, 0)
    assert torch.equal(m, m.view(4, 4, 8, 6, 6)[:, :, :1].expand(4, 4, 8, 6, 6).reshape(4, 32, 6, 6))
    assert 0 < m.mean() < 1
    assert torch.equal(channel_group_mean(torch.arange(16.).view(1, 16, 1, 1), 8).flatten(), torch.tensor([3.5, 11.5]))


def test_branches_use_their_own_masks_and_tau_learns():
    m = _resnet()
    convert_cdg(m)
    m.train()
    x = torch.randn(4, 3, 32, 32)
    z0, z1 = forward_branch(m, x, 0), forward_branch(m, x, 1)
    assert not torch.allclose(z0, z1)
    (z0.mean() + z1.mean() + threshold_loss(m)).backward()
    c = m.layer2[1].conv1
    assert c.tau.grad is not None and c.tau.grad.abs().sum() > 0
    assert c.branch == 0  # cdg_branch restored the default
    with cdg_branch(m, 1):
        assert all(cc.branch == 1 for cc in m.modules() if isinstance(cc, CDGConv2d))


def test_cdg_stats_flops_against_flop_counter_and_hand_count():
    m = _resnet()
    convert_cdg(m)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for c in m.modules():
            if isinstance(c, CDGConv2d):
                c.tau.fill_(1e4)  # every conditional position off
        m.eval()
        forward_branch(m, x, 0), forward_branch(m, x, 1)
    st = cdg_stats(m, (32, 32))
    ref = _resnet()
    with FlopCounterMode(display=False) as fc:
        ref(x)
    assert st.forward_dense == fc.get_total_flops()
    cond = 0
    for c in m.modules():
        if isinstance(c, CDGConv2d):
            hw = c.out_hw[0] * c.out_hw[1]
            cond += 2 * 9 * (c.in_channels * 3 // 4) * c.out_channels * hw
    assert st.sparsity == 1.0
    assert st.forward_actual == pytest.approx(st.forward_dense - cond)
    assert st.train_actual == pytest.approx(st.train_dense - 3 * cond)
    with torch.no_grad():
        for c in m.modules():
            if isinstance(c, CDGConv2d):
                c.tau.fill_(-1e4)
        forward_branch(m, x, 0), forward_branch(m, x, 1)
    on = cdg_stats(m, (32, 32))
    assert on.sparsity == 0.0 and on.forward_ratio == 1.0


def test_state_dict_round_trip_keeps_thresholds(tmp_path):
    m = _resnet()
    convert_cdg(m, structured_group=8)
    with torch.no_grad():
        m.layer1[0].conv1.tau.fill_(0.7)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    m2 = _resnet()
    convert_cdg(m2, structured_group=8)
    m2.load_state_dict(torch.load(tmp_path / "w.pt"), strict=True)
    m.eval(), m2.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(forward_branch(m, x, 1), forward_branch(m2, x, 1))


def test_bad_input_fails_with_one_clear_message():
    with pytest.raises(ValueError, match="no 3x3 convs"):
        convert_cdg(nn.Sequential(nn.Linear(3, 3)))
    m = _resnet()
    convert_cdg(m)
    with pytest.raises(ValueError, match="forward of each branch"):
        cdg_stats(m, (32, 32))
    with pytest.raises(ValueError, match="branch must be 0 or 1"):
        m.layer1[0].conv1(torch.randn(1, 64, 8, 8), branch=2)


@pytest.mark.parametrize("structured", [None, 8])
def test_fast_path_equals_cgnet_form_reference(structured):
    """Slow reference: CGNet's ``Y * d + Y_p * (1 - d)`` with the mask recomputed independently."""
    torch.manual_seed(1)
    c = CDGConv2d(16, 16, 3, padding=1, structured_group=structured).eval()
    with torch.no_grad():
        x = torch.randn(2, 16, 8, 8)
        wb = c.weight * c.base_mask[1][:, :, None, None]
        y_p, y = F.conv2d(x, wb, padding=1), F.conv2d(x, c.weight, padding=1)
        sal = y_p if structured is None else y_p.view(2, 2, 8, 8, 8).mean(2)
        bn = c.norm[1]
        bn.running_mean.copy_(sal.mean((0, 2, 3)))  # centre the saliency: about half the gates on
        bn.running_var.copy_(sal.var((0, 2, 3)))
        out = c(x, branch=1)
        z = (sal - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
        d = (torch.sigmoid(2.0 * (z - c.tau)) > 0.5).float()
        if structured:
            d = d.repeat_interleave(8, dim=1)
        assert 0 < d.mean() < 1
        assert torch.allclose(out, y * d + y_p * (1 - d), atol=1e-5)
