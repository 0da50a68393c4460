"""Lean executor == reference executor: outputs, gradients (weights and kept inputs), BN batch and
running statistics, masks at every stage and the FLOPs trace; on random and block-matched masks,
basic and bottleneck blocks, stride 2, odd sizes, train and eval BatchNorm."""

import copy

import pytest
import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from simwnw_hf.models.resnet import SimWnWResNet
from simwnw_hf.models.resnet_pair import (fused_forward_features, lean_forward_features, masked_forward_features,
                                         select_executor)
from simwnw_hf.simwnw.flops import trace_flops
from simwnw_hf.simwnw.lean_exec import (lean_batch_norm, wax_compact, zero_by_mask, zero_grown_relu_output_,
                                        zero_relu_output_, zeroable_relu)
from simwnw_hf.simwnw.wax_jit import zero_grown_
from simwnw_hf.simwnw.masked_exec import MaskRecord, masked_batch_norm
from simwnw_hf.simwnw.masks import block_correspondence, pair_expander, wax


def _model(block, cifar_stem):
    torch.manual_seed(0)
    model = SimWnWResNet(block=block, layers=(1, 1, 1, 1), channels=(8, 16, 16, 32), num_classes=0,
                         cifar_stem=cifar_stem)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.double()


def _block_mask(b, h, w, block, p, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, -(-h // block), -(-w // block), generator=g) < p
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :h, :w]


def _matched(b, h, w, block, seed):
    """Block-matching-like geometry: view-1 blocks, their (shifted) matches in view 2, similar flags."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.arange(0, h - block + 1, block), torch.arange(0, w - block + 1, block)
    src = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    shift = torch.randint(-2, 3, (b, src.shape[0], 2), generator=g)
    match = torch.stack([(src[None, :, 0] + shift[..., 0]).clamp(0, h - block),
                         (src[None, :, 1] + shift[..., 1]).clamp(0, w - block)], -1)
    similar = torch.rand(b, src.shape[0], generator=g) < 0.5
    return src, match, similar


def _paint(top_left, similar, block, h, w):
    out = torch.zeros(top_left.shape[0], h, w, dtype=torch.bool)
    for i in range(top_left.shape[0]):
        for n in similar[i].nonzero().flatten().tolist():
            y, x = top_left[i, n].tolist()
            out[i, y:y + block, x:x + block] = True
    return out


def _full(mask, like_channels):
    return mask.expand(mask.shape[0], like_channels, *mask.shape[2:]) if mask.shape[1] == 1 else mask


def _run(executor, model, xs, rs, expand_args, wax_kw=None):
    xs = [x.clone().requires_grad_(True) for x in xs]
    expand = None
    if expand_args is not None:
        expand = pair_expander(*expand_args, wax_fn=None if executor is masked_forward_features else wax_compact,
                               **(wax_kw or {}))
    hs, masks, trace = executor(model, xs, rs, expand)
    if torch.is_grad_enabled():
        sum(h.square().sum() * (i + 1) + h.sum() for i, h in enumerate(hs)).backward()
    return hs, masks, trace, xs


def _compare(block, cifar_stem, size, train, masks_kind, threshold=20.0, rings=2, executor=lean_forward_features,
             **wax_kw):
    ref_model = _model(block, cifar_stem).train(train)
    lean_model = copy.deepcopy(ref_model)
    b = 2
    torch.manual_seed(1)
    x1 = torch.randn(b, 3, size, size, dtype=torch.float64)
    x2 = (x1 + 0.05 * torch.randn_like(x1)).roll(1, dims=3)  # similar views: waxing rings pass
    expand_args = None
    if masks_kind == "random":
        rs = [_block_mask(b, size, size, 3, 0.4, 2), _block_mask(b, size, size, 3, 0.4, 3)]
        rs[0][0, :5, :7] = True  # an odd-shaped region
    else:
        blk = 4
        src, match, similar = _matched(b, size, size, blk, seed=4)
        rs = [_paint(src.expand(b, -1, -1), similar, blk, size, size), _paint(match, similar, blk, size, size)]
        expand_args = (src, match, similar, blk, (size, size), threshold, rings)
    out = {}
    for key, run, model in (("ref", masked_forward_features, ref_model), ("lean", executor, lean_model)):
        out[key] = _run(run, model, [x1, x2], rs, expand_args, wax_kw)
    (hr, mr, tr, xr), (hl, ml, tl, xl) = out["ref"], out["lean"]
    for a, c in zip(hr, hl):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-8)
    for a, c in zip(mr, ml):
        assert torch.equal(_full(c, a.shape[1]), _full(a, c.shape[1]))
    # masks at every stage and waxing point, and the FLOPs trace
    mrec = [(r.name, r) for r in tr if isinstance(r, MaskRecord)]
    lrec = [(r.name, r) for r in tl if isinstance(r, MaskRecord)]
    assert [n for n, _ in mrec] == [n for n, _ in lrec]
    for (_, a), (_, c) in zip(mrec, lrec):
        for ma, mc in ((a.removed1, c.removed1), (a.removed2, c.removed2)):
            ch = max(ma.shape[1], mc.shape[1])
            assert torch.equal(_full(ma, ch), _full(mc, ch))
    fr, fl = trace_flops(tr), trace_flops(tl)
    assert fr == pytest.approx(fl, rel=1e-12)
    assert fr["kept_flops"] <= fr["spatial_kept_flops"] <= fr["dense_flops"]  # triples are the finer grain
    # gradients: weights and kept input pixels
    for (name, pr), (_, pl) in zip(ref_model.named_parameters(), lean_model.named_parameters()):
        torch.testing.assert_close(pl.grad, pr.grad, rtol=1e-5, atol=1e-8, msg=name)
    for x_ref, x_lean, r in zip(xr, xl, rs):
        keep = ~r[:, None].expand_as(x_ref)
        torch.testing.assert_close(x_lean.grad[keep], x_ref.grad[keep], rtol=1e-5, atol=1e-8)
    # BN running statistics
    for (name, br), (_, bl) in zip(ref_model.named_buffers(), lean_model.named_buffers()):
        torch.testing.assert_close(bl, br, rtol=1e-5, atol=1e-8, msg=name)
    return fr, mrec


@pytest.mark.parametrize("block,cifar_stem,size", [(BasicBlock, True, 17), (Bottleneck, False, 37),
                                                   (BasicBlock, False, 32)])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("masks_kind", ["random", "matched"])
def test_lean_equals_reference(block, cifar_stem, size, train, masks_kind):
    fr, _ = _compare(block, cifar_stem, size, train, masks_kind)
    assert fr["kept_flops"] < fr["dense_flops"]


@pytest.mark.parametrize("block,cifar_stem,size", [(BasicBlock, True, 17), (Bottleneck, False, 37)])
@pytest.mark.parametrize("masks_kind", ["random", "matched"])
def test_fused_equals_reference(block, cifar_stem, size, masks_kind):
    """Compiled kept-BatchNorm kernels (``fused``): the reference's outputs, gradients, statistics and
    masks, and the kernels really compiled (no silent fallback to the eager ops)."""
    from simwnw_hf.simwnw import lean_exec

    _compare(block, cifar_stem, size, True, masks_kind, executor=fused_forward_features, decision="spatial")
    assert lean_exec._FUSED_FORWARD.failed is None and lean_exec._FUSED_BACKWARD.failed is None


def test_fused_kernel_falls_back_to_eager_in_one_warning(monkeypatch):
    """A machine where Inductor cannot compile (no C++ compiler...) still trains: one warning, eager
    kernels from then on, the same numbers."""
    from simwnw_hf.simwnw import fused_kernels, lean_exec

    def broken(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nsecond line")

    kernel = fused_kernels.FusedKernel(fused_kernels.kept_bn_forward, lean_exec._kept_bn_forward_eager, "test")
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    torch.manual_seed(0)
    keep = (torch.rand(2, 1, 5, 5) > 0.3).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64) * keep
    args = (x, torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64), keep, keep.sum(), 1e-5, True)
    with pytest.warns(RuntimeWarning, match="could not be compiled .*InvalidCxxCompiler: no working C\\+\\+ compiler found\\); "):
        out = kernel(*args)
    assert kernel.failed.startswith("RuntimeError: InvalidCxxCompiler") and "second line" not in kernel.failed
    for a, b in zip(out, lean_exec._kept_bn_forward_eager(*args)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(*args)  # no second warning


def test_lean_equals_reference_when_waxing_passes_per_channel():
    """Low threshold: rings pass in some channels, masks become per channel, lean still matches."""
    _, mrec = _compare(BasicBlock, True, 17, True, "matched", threshold=10.0, rings=4)
    waxed = [r for n, r in mrec if n.endswith(":waxed")]
    assert any(r.removed1.shape[1] > 1 and bool((r.removed1 != r.removed1[:, :1]).any()) for r in waxed)


@pytest.mark.parametrize("block,cifar_stem,size", [(BasicBlock, True, 17), (Bottleneck, False, 37)])
@pytest.mark.parametrize("peak", ["channel", "map"])
@pytest.mark.parametrize("threshold", [10.0, 20.0])
def test_lean_equals_reference_with_spatial_waxing(block, cifar_stem, size, peak, threshold):
    """Spatial (all-channel) ring decisions: lean == reference, and every mask stays one position mask."""
    fr, mrec = _compare(block, cifar_stem, size, True, "matched", threshold=threshold, rings=3,
                        decision="spatial", peak=peak)
    waxed = [r for n, r in mrec if n.endswith(":waxed")]
    # the reference returns (B, C, H, W) masks; spatial decisions make every channel equal
    assert all(bool((r.removed1 == r.removed1[:, :1]).all()) and bool((r.removed2 == r.removed2[:, :1]).all())
               for r in waxed)
    assert fr["kept_flops"] == pytest.approx(fr["spatial_kept_flops"], rel=1e-12)  # nothing finer than positions


def test_lean_spatial_waxing_keeps_masks_compact_and_grows():
    model = _model(BasicBlock, True).train()
    b, size, blk = 2, 17, 4
    torch.manual_seed(1)
    x1 = torch.randn(b, 3, size, size, dtype=torch.float64)
    x2 = (x1 + 0.05 * torch.randn_like(x1)).roll(1, dims=3)
    src, match, similar = _matched(b, size, size, blk, seed=4)
    rs = [_paint(src.expand(b, -1, -1), similar, blk, size, size), _paint(match, similar, blk, size, size)]
    grown = {}
    for decision in ("spatial", "channel"):
        expand = pair_expander(src, match, similar, blk, (size, size), 10.0, 3, wax_fn=wax_compact, decision=decision)
        with torch.no_grad():
            _, _, trace = lean_forward_features(copy.deepcopy(model), [x1, x2], rs, expand)
        recs = [r for r in trace if isinstance(r, MaskRecord)]
        if decision == "spatial":
            assert all(r.removed1.shape[1] == 1 and r.removed2.shape[1] == 1 for r in recs)
        grown[decision] = trace_flops(trace)["spatial_kept_flops"]
    no_wax = pair_expander(src, match, similar, blk, (size, size), 10.0, 0, wax_fn=wax_compact)
    with torch.no_grad():
        _, _, trace0 = lean_forward_features(copy.deepcopy(model), [x1, x2], rs, no_wax)
    assert grown["spatial"] < trace_flops(trace0)["spatial_kept_flops"]  # spatial rings really pass here


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("momentum,size", [(0.1, (5, 7)), (None, (5, 7)), (0.1, (9, 11))])
def test_lean_batch_norm_equals_reference(momentum, size, fused):
    torch.manual_seed(3)
    removed = torch.rand(3, 1, *size) < 0.4
    x = (torch.randn(3, 4, *size, dtype=torch.float64) * 2 + 1).masked_fill(removed, 0)
    bns = [nn.BatchNorm2d(4, momentum=momentum).double().train() for _ in range(2)]
    for bn in bns:
        torch.manual_seed(4)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -1, 1)
    grads = []
    for step in range(2):  # two steps: cumulative-average running stats
        outs = []
        for i, bn in enumerate(bns):
            xi = x.clone().requires_grad_(True)
            y = lean_batch_norm(bn, xi, removed, relu=True, fused=fused) if i else torch.relu(masked_batch_norm(bn, xi, removed))
            (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).sin()).sum().backward()
            outs.append((y, xi.grad, bn.weight.grad.clone(), bn.bias.grad.clone()))
            bn.zero_grad()
        for a, c in zip(*outs):
            torch.testing.assert_close(c, a)
        for a, c in zip(bns[0].buffers(), bns[1].buffers()):
            torch.testing.assert_close(c, a)
        grads.append(outs)
    assert float(grads[0][0][1].abs().sum()) > 0


@pytest.mark.parametrize("producer", ["bn_train", "bn_eval", "bn_per_channel_mask", "residual", "residual_in_place"])
def test_in_place_zeroing_of_relu_outputs_equals_multiplying(producer):
    """``zero_relu_output_`` (in place, no graph node) gives the gradients of ``zero_by_mask``'s multiply,
    for every output the walker zeroes that way; and the value it zeroes is the one later ops read."""
    torch.manual_seed(7)
    removed = torch.rand(3, 4 if producer == "bn_per_channel_mask" else 1, 5, 7) < 0.3
    grown = removed | (torch.rand(3, 1, 5, 7) < 0.3)  # waxing grows the mask
    x = (torch.randn(3, 4, 5, 7, dtype=torch.float64) + 0.3).masked_fill(removed, 0)
    other = torch.randn(3, 4, 5, 7, dtype=torch.float64)
    weight = torch.arange(3 * 4 * 5 * 7, dtype=torch.float64).view(3, 4, 5, 7).cos()
    results = []
    for in_place in (False, True):
        torch.manual_seed(8)
        bn = nn.BatchNorm2d(4).double().train(producer != "bn_eval")
        xi, oi = x.clone().requires_grad_(True), other.clone().requires_grad_(True)
        if producer == "residual":
            y = zeroable_relu(xi, oi)
        elif producer == "residual_in_place":  # over a fresh non-leaf, as the walker's last BatchNorm output
            y = zeroable_relu(xi * 1, oi, in_place=True)
        else:
            y = lean_batch_norm(bn, xi, removed, relu=True)
        z = zero_relu_output_(y, grown) if in_place else zero_by_mask(y, grown)
        ((z * 2) * weight).sum().backward()  # a later op that saves its input (mul) and reads z
        results.append((z.detach(), xi.grad, oi.grad, bn.weight.grad))
    for a, b in zip(*results):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert float(results[1][1].abs().sum()) > 0 and not results[1][0][grown.expand_as(results[1][0])].any()


def _wax_case(c=6, h=12, w=12, blk=4):
    """Block-matched masks at a 2x-strided 12x12 feature map, its correspondence, and a view-1 map."""
    torch.manual_seed(5)
    b = 2
    src, match, similar = _matched(b, 24, 24, 8, seed=6)
    corr = block_correspondence(src, match, similar, 8, (24, 24), (h, w))
    r1 = _paint(src.expand(b, -1, -1) // 2, similar, blk, h, w)[:, None]
    r2 = _paint(match // 2, similar, blk, h, w)[:, None]
    return corr, r1, r2, torch.randn(b, c, h, w)


def test_wax_compact_equals_wax_on_matched_masks():
    corr, r1, r2, h1 = _wax_case()
    b, c, h, w = h1.shape
    h2 = h1 + 0.3 * torch.randn_like(h1) * torch.rand(1, c, 1, 1)  # some channels similar
    r1c = r1.expand(b, c, h, w).clone()
    r1c[:, ::2, :3] = True  # per-channel input masks too
    for thr, m1 in ((10.0, r1), (20.0, r1), (40.0, r1), (10.0, r1c), (20.0, r1c)):
        ref = wax(h1, h2, m1, r2, corr, thr, 2)
        lean = wax_compact(h1, h2, m1, r2, corr, thr, 2)
        assert torch.equal(_full(lean.removed1, c), ref.removed1) and torch.equal(_full(lean.removed2, c), ref.removed2)
        assert float(lean.compared_pairs) == float(ref.compared_pairs)
        assert float(lean.overhead_flops) == pytest.approx(float(ref.overhead_flops))


@pytest.fixture(params=["numba", "torch"])
def ring_engine(request, monkeypatch):
    """Spatial waxing by the compiled loop, or (numba made unavailable) by its tensor-op twin."""
    if request.param == "torch":
        from simwnw_hf.simwnw import wax_jit
        monkeypatch.setattr(wax_jit, "_kernel", None)
        monkeypatch.setattr(wax_jit, "_WARNED", True)  # its one warning is tested in test_wax_jit.py
    return request.param


@pytest.mark.parametrize("peak,relu", [("channel", False), ("map", False), ("channel", True)])
def test_wax_spatial_compact_equals_wax_on_matched_masks(peak, relu, ring_engine):
    corr, r1, r2, h1 = _wax_case(c=40)
    b, c, h, w = h1.shape
    h2 = h1 + 0.3 * torch.randn_like(h1) * torch.rand(1, c, 1, 1)
    h1[:, 0] = 0  # a dead channel
    h2[:, 0] = 0
    if relu:  # ReLU outputs: the peak skips the minimum (nonneg=True), as the executors call it
        h1, h2 = h1.relu(), h2.relu()
    r1c = r1.expand(b, c, h, w).clone()
    r1c[:, ::2, :3] = True  # per-channel input masks: rings start from positions removed in every channel
    passed = 0
    for thr, m1 in ((5.0, r1), (10.0, r1), (20.0, r1), (40.0, r1), (10.0, r1c)):
        ref = wax(h1, h2, m1, r2, corr, thr, 3, decision="spatial", peak=peak)
        lean = wax_compact(h1, h2, m1, r2, corr, thr, 3, decision="spatial", peak=peak, nonneg=relu)
        assert torch.equal(_full(lean.removed1, c), ref.removed1) and torch.equal(_full(lean.removed2, c), ref.removed2)
        assert float(lean.compared_pairs) == float(ref.compared_pairs)
        assert float(lean.overhead_flops) == pytest.approx(float(ref.overhead_flops))
        passed += int(bool((ref.removed1 != m1.expand_as(ref.removed1)).any()))
    assert passed >= 2  # the comparison saw rings pass and fail


def test_select_executor_and_refusals():
    assert select_executor("lean") is lean_forward_features
    assert select_executor("reference") is masked_forward_features
    with pytest.raises(ValueError, match="unknown SimWnW executor"):
        select_executor("fast")
    model = _model(BasicBlock, True)
    model.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        lean_forward_features(model, [x], [torch.zeros(1, 8, 8, dtype=torch.bool)])


def test_wax_compact_keeps_masks_compact_exactly_when_channels_agree():
    """Agreement is decided from the ring additions: identical channels -> (B, 1, H, W) masks, equal to wax."""
    b, c, h, w, blk = 2, 5, 12, 12, 4
    src, match, similar = _matched(b, 24, 24, 8, seed=7)
    corr = block_correspondence(src, match, similar, 8, (24, 24), (h, w))
    r1 = _paint(src.expand(b, -1, -1) // 2, similar, blk, h, w)[:, None]
    r2 = _paint(match // 2, similar, blk, h, w)[:, None]
    g = torch.Generator().manual_seed(8)
    base = torch.randn(b, 1, h, w, generator=g)
    cases = {"agree": (base.expand(b, c, h, w).clone(), (base + 0.05 * torch.randn(b, 1, h, w, generator=g)).expand(b, c, h, w).clone()),
             "differ": (torch.randn(b, c, h, w, generator=g), None)}
    cases["differ"] = (cases["differ"][0], cases["differ"][0] + 0.4 * torch.randn(b, c, h, w, generator=g) * torch.rand(1, c, 1, 1, generator=g))
    for name, (h1, h2) in cases.items():
        ref = wax(h1, h2, r1, r2, corr, 15.0, 2)
        lean = wax_compact(h1, h2, r1, r2, corr, 15.0, 2)
        assert torch.equal(_full(lean.removed1, c), ref.removed1) and torch.equal(_full(lean.removed2, c), ref.removed2)
        grew = bool((ref.removed1 != r1.expand_as(ref.removed1)).any())
        assert grew, name
        agree1 = bool((ref.removed1 == ref.removed1[:, :1]).all())
        assert (lean.removed1.shape[1] == 1) == agree1, name
        if name == "agree":
            assert lean.removed1.shape[1] == 1 and lean.removed2.shape[1] == 1


@pytest.mark.parametrize("dtype,threads", [(torch.float32, 1), (torch.float32, 2), (torch.float64, 1)])
def test_zeroing_grown_positions_equals_zeroing_the_whole_mask(dtype, threads):
    """``zero_grown_relu_output_`` writes only where the mask grew (compiled for CPU float32, the
    multiply otherwise); on a ReLU output already 0 at the old mask, its values and the gradients
    through that ReLU equal ``zero_relu_output_``'s."""
    torch.manual_seed(11)
    before = torch.rand(5, 1, 6, 9) < 0.3
    after = before | (torch.rand(5, 1, 6, 9) < 0.1)
    x = torch.randn(5, 7, 6, 9, dtype=dtype).masked_fill(before, 0)
    other = torch.randn(5, 7, 6, 9, dtype=dtype).masked_fill(before, 0)
    weight = torch.arange(5 * 7 * 6 * 9, dtype=dtype).view(5, 7, 6, 9).sin()
    results = []
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for grown_only in (False, True):
            xi, oi = x.clone().requires_grad_(True), other.clone().requires_grad_(True)
            y = zeroable_relu(xi * 1, oi, in_place=True)
            z = zero_grown_relu_output_(y, before, after) if grown_only else zero_relu_output_(y, after)
            assert z is y
            ((z * 3) * weight).sum().backward()
            results.append((z.detach(), xi.grad, oi.grad))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert not results[1][0][after.expand(5, 7, 6, 9)].any() and results[1][0].abs().sum() > 0
    compiled = zero_grown_(torch.zeros(2, 3, 4, 5, dtype=dtype), before[:2, :, :4, :5], after[:2, :, :4, :5])
    assert compiled == (dtype == torch.float32)
