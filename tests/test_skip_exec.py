"""Skipping executor == reference: 1x1 convs computed at kept positions only (outputs, gradients of
weights and kept inputs, masks, BN statistics), and the cost model's per-layer choice."""

import copy

import pytest
import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from simwnw_hf.models.resnet import SimWnWResNet
from simwnw_hf.models.resnet_pair import auto_forward_features, masked_forward_features, select_executor
from simwnw_hf.simwnw.masked_exec import MaskRecord, masked_conv2d
from simwnw_hf.simwnw.masks import pair_expander, wax
from simwnw_hf.simwnw.lean_exec import wax_compact
from simwnw_hf.simwnw.skip_exec import SkipCostModel, is_skippable_conv, skip_conv1x1

ALWAYS = dict(margin=float("inf"), min_macs=0, max_kept=1.0, repeats=1)  # skip every 1x1 conv it may


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_skip_conv1x1_equals_masked_conv(stride, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1, stride=stride, bias=bias).double()
    removed = torch.rand(3, 1, 9, 7) < 0.5
    x0 = torch.randn(3, 6, 9, 7, dtype=torch.float64).masked_fill(removed, 0)
    g = torch.randn(3, 5, (9 - 1) // stride + 1, (7 - 1) // stride + 1, dtype=torch.float64)
    outs = []
    for skip in (False, True):
        conv.zero_grad()
        x = x0.clone().requires_grad_(True)
        y_ref, out_removed, _ = masked_conv2d(conv, x, removed)
        y = skip_conv1x1(conv, x, out_removed) if skip else y_ref
        y.backward(g)
        outs.append((y.detach(), x.grad[~removed.expand_as(x)], conv.weight.grad.clone(),
                     None if conv.bias is None else conv.bias.grad.clone()))
    for a, c in zip(*outs):
        if a is not None:
            torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-12)
    assert bool((outs[1][0][out_removed.expand_as(outs[1][0])] == 0).all())


def _model(block):
    torch.manual_seed(0)
    model = SimWnWResNet(block=block, layers=(1, 1, 1, 1), channels=(8, 16, 16, 32), num_classes=0, cifar_stem=True)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.double().train()


@pytest.mark.parametrize("block,decision", [(Bottleneck, "channel"), (Bottleneck, "spatial"), (BasicBlock, "spatial")])
def test_auto_executor_equals_reference_when_it_skips(block, decision):
    ref_model = _model(block)
    auto_model = copy.deepcopy(ref_model)
    b, size, blk = 2, 19, 4
    torch.manual_seed(1)
    x1 = torch.randn(b, 3, size, size, dtype=torch.float64)
    x2 = (x1 + 0.05 * torch.randn_like(x1)).roll(1, dims=3)
    ys = torch.arange(0, size - blk + 1, blk)
    src = torch.stack(torch.meshgrid(ys, ys, indexing="ij"), -1).reshape(-1, 2)
    match = (src[None] + torch.randint(-1, 2, (b, src.shape[0], 2))).clamp(0, size - blk)
    similar = torch.rand(b, src.shape[0]) < 0.6
    rs = []
    for tl in (src.expand(b, -1, -1), match):
        m = torch.zeros(b, size, size, dtype=torch.bool)
        for i in range(b):
            for n in similar[i].nonzero().flatten().tolist():
                y, x = tl[i, n].tolist()
                m[i, y:y + blk, x:x + blk] = True
        rs.append(m)
    cost = SkipCostModel(**ALWAYS)
    out = {}
    for key, model in (("ref", ref_model), ("auto", auto_model)):
        xs = [x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)]
        expand = pair_expander(src, match, similar, blk, (size, size), 15.0, 2,
                               wax_fn=wax if key == "ref" else wax_compact, decision=decision)
        if key == "ref":
            hs, _, trace = masked_forward_features(model, xs, rs, expand)
        else:
            hs, _, trace = auto_forward_features(model, xs, rs, expand, cost_model=cost)
        sum(h.square().sum() * (i + 1) + h.sum() for i, h in enumerate(hs)).backward()
        out[key] = (hs, trace, xs)
    (hr, tr, xr), (ha, ta, xa) = out["ref"], out["auto"]
    for a, c in zip(hr, ha):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-8)
    for ra, rc in zip([r for r in tr if isinstance(r, MaskRecord)], [r for r in ta if isinstance(r, MaskRecord)]):
        for ma, mc in ((ra.removed1, rc.removed1), (ra.removed2, rc.removed2)):
            ch = max(ma.shape[1], mc.shape[1])
            assert torch.equal(ma.expand(ma.shape[0], ch, *ma.shape[2:]), mc.expand(mc.shape[0], ch, *mc.shape[2:]))
    for (name, pr), (_, pa) in zip(ref_model.named_parameters(), auto_model.named_parameters()):
        torch.testing.assert_close(pa.grad, pr.grad, rtol=1e-5, atol=1e-8, msg=name)
    for x_ref, x_auto, r in zip(xr, xa, rs):
        keep = ~r[:, None].expand_as(x_ref)
        torch.testing.assert_close(x_auto.grad[keep], x_ref.grad[keep], rtol=1e-5, atol=1e-8)
    for (name, br), (_, ba) in zip(ref_model.named_buffers(), auto_model.named_buffers()):
        torch.testing.assert_close(ba, br, rtol=1e-5, atol=1e-8, msg=name)
    skippable = [m for m in auto_model.modules() if is_skippable_conv(m)]
    assert skippable and len(cost.decisions) > 0  # it really took the skipping path
    assert select_executor("auto") is auto_forward_features


def test_cost_model_measures_once_and_only_where_skipping_can_pay():
    conv = nn.Conv2d(64, 64, 1, bias=False)
    x = torch.zeros(16, 64, 32, 32)
    removed = torch.rand(16, 1, 32, 32) < 0.6
    model = SkipCostModel(repeats=1)
    first = model.use_skip(conv, x, removed)
    assert len(model.decisions) == 1
    dense_ms, skip_ms = next(iter(model.decisions.values()))
    assert dense_ms > 0 and skip_ms > 0 and first == (skip_ms <= model.margin * dense_ms)
    model.use_skip(conv, x, removed)
    assert len(model.decisions) == 1  # cached: the same case is not timed again
    mostly_kept = torch.rand(16, 1, 32, 32) < 0.05
    assert not model.use_skip(conv, x, mostly_kept) and len(model.decisions) == 1  # above max_kept: not timed
    assert not model.use_skip(nn.Conv2d(64, 64, 3, padding=1), x, removed)  # 3x3 convs run densely
    assert not model.use_skip(nn.Conv2d(4, 4, 1), torch.zeros(1, 4, 8, 8), torch.rand(1, 1, 8, 8) < 0.6)  # tiny
    assert len(model.decisions) == 1
