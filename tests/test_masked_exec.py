"""Reference masked execution: equals the dense ResNet when nothing is removed, zeroes removed
positions, BatchNorm statistics from kept positions only, gradients flow."""

import copy

import pytest
import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from simwnw_hf.models.resnet import SimWnWResNet
from simwnw_hf.models.resnet_pair import masked_forward_features
from simwnw_hf.simwnw.masked_exec import ConvRecord, MaskRecord, masked_batch_norm, masked_conv2d


def _tiny(block=BasicBlock, cifar_stem=True):
    torch.manual_seed(0)
    model = SimWnWResNet(block=block, layers=(1, 1, 1, 1), channels=(8, 16, 16, 32), num_classes=0,
                         cifar_stem=cifar_stem)
    for m in model.modules():  # non-trivial BN affine + running stats
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _block_mask(b, h, w, block, p, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, -(-h // block), -(-w // block), generator=g) < p
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :h, :w]


def _bn_stats(model):
    return [t.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


@pytest.mark.parametrize("block,cifar_stem,size", [(BasicBlock, True, 16), (Bottleneck, False, 32)])
@pytest.mark.parametrize("train", [True, False])
def test_empty_mask_equals_dense_model(block, cifar_stem, size, train):
    model = _tiny(block, cifar_stem).double().train(train)  # float64: BN over 2x1x1 maps is ill-conditioned
    dense = copy.deepcopy(model)
    x1, x2 = torch.randn(2, 2, 3, size, size, dtype=torch.float64).unbind(0)
    none = torch.zeros(2, size, size, dtype=torch.bool)
    (h1, h2), masks, trace = masked_forward_features(model, [x1, x2], [none, none])
    ref1, ref2 = dense.forward_features(x1), dense.forward_features(x2)  # two dense calls: BN per view
    torch.testing.assert_close(h1, ref1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(h2, ref2, rtol=1e-9, atol=1e-9)
    for a, b in zip(_bn_stats(model), _bn_stats(dense)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert not any(bool(m.any()) for m in masks)
    convs = [r for r in trace if isinstance(r, ConvRecord)]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert all(int(r.active_triples) == r.dense_triples for r in convs)


def test_removed_positions_are_zero_and_do_not_matter():
    """Removed input pixels are absent: changing them changes nothing; removed outputs are zero."""
    model = _tiny().train()
    x = torch.randn(2, 3, 16, 16)
    removed = _block_mask(2, 16, 16, 4, 0.6, seed=1)
    (h,), (r,), trace = masked_forward_features(model, [x], [removed])
    other = torch.where(removed[:, None], torch.randn_like(x) * 10, x)
    (h_other,), _, _ = masked_forward_features(copy.deepcopy(_tiny().train()), [other], [removed])
    torch.testing.assert_close(h, h_other)
    for rec in trace:
        if isinstance(rec, MaskRecord) and rec.name == "layer1":
            assert bool(rec.removed1.any())  # 4x4 blocks survive the 3x3 convs of a stride-1 stage
    assert bool((h * r).eq(0).all())
    # a single conv: removed outputs zero even with a bias, kept outputs = dense conv of the kept input
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
    y, out_removed, active = masked_conv2d(conv, x, removed[:, None])
    assert bool(out_removed.any()) and bool((y * out_removed).eq(0).all())
    dense = conv(x * ~removed[:, None])
    torch.testing.assert_close(y * ~out_removed, dense * ~out_removed)
    assert int(active) == 3 * int((~out_removed).sum())  # one shared mask: Cin triples per kept output


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_statistics_exclude_removed_positions(per_channel, momentum):
    """Against a naive BatchNorm1d over the kept (position, channel) values only."""
    torch.manual_seed(3)
    c = 4
    x = torch.randn(3, c, 5, 6) * 2 + 1
    removed = torch.rand(3, c if per_channel else 1, 5, 6) < 0.4
    bn = nn.BatchNorm2d(c, momentum=momentum).train()
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -1, 1)
    bn.running_mean.fill_(0.3)
    y = masked_batch_norm(bn, x, removed)
    keep = ~removed.expand_as(x)
    for ch in range(c):
        vals = x[:, ch][keep[:, ch]]  # (n,) kept values of this channel
        ref = nn.BatchNorm1d(1, momentum=momentum).train()
        with torch.no_grad():
            ref.weight.copy_(bn.weight[ch:ch + 1])
            ref.bias.copy_(bn.bias[ch:ch + 1])
            ref.running_mean.fill_(0.3)
        out = ref(vals[:, None])[:, 0]
        torch.testing.assert_close(y[:, ch][keep[:, ch]], out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_mean[ch], ref.running_mean[0])
        torch.testing.assert_close(bn.running_var[ch], ref.running_var[0])
    assert bool(y[~keep].eq(0).all())
    # eval mode: running statistics, removed still zero
    bn.eval()
    y_eval = masked_batch_norm(bn, x, removed)
    ref_eval = nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    torch.testing.assert_close(y_eval, ref_eval * keep)


def test_gradients_flow_and_skip_removed_inputs():
    model = _tiny().train()
    x1 = torch.randn(2, 3, 16, 16, requires_grad=True)
    x2 = torch.randn(2, 3, 16, 16)
    r1 = _block_mask(2, 16, 16, 4, 0.5, seed=4)
    r2 = _block_mask(2, 16, 16, 4, 0.5, seed=5)
    (h1, h2), _, trace = masked_forward_features(model, [x1, x2], [r1, r2])
    (h1.square().mean() + h2.mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    assert bool(x1.grad[r1[:, None].expand_as(x1)].eq(0).all())  # removed pixels get no gradient
    assert float(x1.grad.abs().sum()) > 0
    first = next(r for r in trace if isinstance(r, ConvRecord))
    assert first.input_grad  # x1 requires grad here, so autograd computes the stem grad-input


def test_bad_inputs_are_rejected():
    model = _tiny()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="mask"):
        masked_forward_features(model, [x], [torch.zeros(1, 8, 8, dtype=torch.bool)])
    with pytest.raises(ValueError, match="one or two views"):
        masked_forward_features(model, [x, x, x], [torch.zeros(1, 16, 16, dtype=torch.bool)] * 3)


def test_waxing_removes_from_the_feature_map_including_the_shortcut():
    """A waxing callback that removes everything at one block input leaves nothing downstream: the
    removal applies to the shortcut too, so the block output is removed and zero."""
    model = _tiny().train()
    x1, x2 = torch.randn(2, 2, 3, 16, 16).unbind(0)
    none = torch.zeros(2, 16, 16, dtype=torch.bool)
    calls = []

    def expand(name, hs, rs, nonneg=False):
        calls.append(name)
        full = name == "layer2.0.conv1"
        return [r | full for r in rs], torch.tensor(7.0)

    (h1, h2), (r1, r2), trace = masked_forward_features(model, [x1, x2], [none, none], expand)
    assert calls == [f"layer{s}.0.conv{c}" for s in range(1, 5) for c in (1, 2)]  # block inputs + inner 3x3
    assert bool(r1.all()) and bool(r2.all()) and float(h1.detach().abs().sum()) == 0.0 == float(h2.detach().abs().sum())
    layer1 = next(r for r in trace if isinstance(r, MaskRecord) and r.name == "layer1")
    assert not bool(layer1.removed1.any())
