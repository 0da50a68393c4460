"""Lean SimWnW layer mechanisms: the same numbers as ``masked_exec``, with less bookkeeping.

``masked_exec`` defines a SimWnW forward; these functions compute the same outputs, BatchNorm
batch and running statistics, gradients (of weights and of kept inputs) and masks, using facts the
reference does not rely on:

* **Removed is already zero.** Inside the network every conv input is zero at its removed
  positions by construction (BN outputs, waxing and residual sums are zeroed or sums of zeros), so
  only the image needs zeroing; a bias-free conv's removed outputs are zero (their windows hold only
  zeros); a max-pool window that is fully removed has max 0.
* **Compact masks.** Conv outputs are removed per position (``(B, 1, H, W)``), so BatchNorm needs
  one kept count, not a per-channel mask: its batch sums over all positions equal the sums over
  kept positions. Waxing keeps ``(B, 1, H, W)`` masks unless a ring really passes in some channel
  (``wax_compact``), and it compares only the ring pixels, not every (channel, position).
* **BatchNorm from plain sums.** Sum and sum of squares over all positions divided by the kept
  count, and a hand-written backward (:class:`_KeptBatchNorm`), instead of where/sub/square/sum
  graphs. Masks are applied by multiplying with a float keep map: ``torch.where`` with a
  broadcast mask is several times slower on CPU (profiled). (``var_mean`` and ``aminmax`` over
  these dims were 20-40x slower than ``sum``/``amax``, so plain reductions are used.)
* **Waxing zeroes in place.** The ReLU outputs that feed waxing points keep themselves for ReLU's
  backward, so zeroing them in place (:func:`zero_relu_output_`) also drops their gradient there:
  no multiply node in the graph.
* **Fused BatchNorm (optional).** ``lean_batch_norm(..., fused=True)`` (the ``fused`` executor) runs
  the same kept BatchNorm as compiled kernels (``fused_kernels``): one reduction and one elementwise
  pass each way instead of six and five eager passes.

Tests: ``tests/test_lean_exec.py`` holds these equal to ``masked_exec`` (and the ResNet walkers in
``simwnw_hf.models.resnet_pair`` equal to each other).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused_kernels import FusedKernel, kept_bn_backward, kept_bn_forward
from .masked_exec import masked_batch_norm
from .masks import (PEAK_FLOPS, PSNR_PAIR_FLOPS, Correspondence, WaxResult, active_inputs, check_wax_inputs,
                    ring_distance, wax_peak)
from .skip_exec import skip_conv1x1
from .wax_jit import SpatialGrowth, inverse_peak, ring_errors_torch, spatial_wax, zero_grown_

__all__ = ["lean_conv2d", "lean_batch_norm", "zeroable_relu", "wax_compact", "wax_spatial_compact", "compact_mask",
           "zero_by_mask", "zero_grown_relu_output_", "zero_relu_output_"]


def zero_by_mask(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``zero_removed`` for finite ``x`` as a multiply by the keep map (faster than ``where`` on CPU)."""
    return x * (~removed).to(x.dtype)


def zero_relu_output_(y: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Zero ``y`` at ``removed`` in place, outside autograd; for outputs of :func:`lean_batch_norm`
    (``relu=True``) and :func:`zeroable_relu` only, before anything else has used them.

    Why this is exact: those functions keep their output for their backward, which is ReLU's
    ``threshold_backward(grad, y, 0)``. Zeroed there, ``y`` is no longer ``> 0`` at ``removed``, so
    that backward drops the gradient at exactly the positions that ``zero_by_mask``'s multiply
    would have dropped: the same gradients without a multiply node in the graph (its forward
    allocation and backward node: ``aten::mul`` 75 -> 31 ms and ``MulBackward0`` 29.5 ms -> out of the
    top 20 in ``benchmarks/simwnw_step.py --profile``, 32 px, 2 threads, a 2.7-2.9 s step).
    """
    with torch.no_grad():
        y.mul_((~removed).to(y.dtype))
    return y


def zero_grown_relu_output_(y: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """:func:`zero_relu_output_` (``y``, ``after``) for a ``y`` already 0 wherever ``before`` removes.

    The lean executor keeps removed activations at 0, so after waxing only the grown positions need
    a write: ``wax_jit.zero_grown_`` writes them (compiled, split over torch's threads); where it
    cannot run, the multiply by the keep map. Same values, so the same gradients.
    """
    if not zero_grown_(y, before, after):
        zero_relu_output_(y, after)
    return y


def lean_conv2d(conv: nn.Conv2d, x: torch.Tensor, removed: torch.Tensor, zero_input: bool, cost_model=None):
    """``masked_conv2d`` for an input that is already zero at ``removed`` (unless ``zero_input``).

    ``cost_model``: a ``skip_exec.SkipCostModel``; where it says skipping pays, a 1x1 conv is
    computed at kept output positions only (``skip_exec.skip_conv1x1``), else densely.
    """
    if conv.groups != 1:
        raise NotImplementedError(f"masked execution supports groups=1 convs only, got groups={conv.groups}")
    if isinstance(conv.padding, str):
        raise NotImplementedError(f"masked execution needs numeric conv padding, got padding={conv.padding!r}")
    act = active_inputs(removed, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    if act.shape[1] == 1:
        out_removed = ~act
        active = act.sum() * x.shape[1]
    else:
        out_removed = ~act.any(dim=1, keepdim=True)
        active = act.sum()
    x_in = zero_by_mask(x, removed) if zero_input else x
    if cost_model is not None and cost_model.use_skip(conv, x_in, out_removed):
        return skip_conv1x1(conv, x_in, out_removed), out_removed, active  # removed outputs are exactly 0
    y = conv(x_in)
    if conv.bias is not None:
        y = zero_by_mask(y, out_removed)
    return y, out_removed, active


class _ZeroableRelu(torch.autograd.Function):
    """``relu(a + b)`` (``relu(a)`` for ``b=None``), keeping its output as an alias rather than a
    saved variable, so that :func:`zero_relu_output_` may zero it in place."""

    @staticmethod
    def forward(ctx, a, b, in_place: bool):
        if b is None:
            y = a.relu()
        elif in_place:  # the residual sum written over ``a``: no (B, C, H, W) allocation per block
            ctx.mark_dirty(a)
            y = a.add_(b).relu_()
        else:
            y = torch.add(a, b).relu_()
        ctx.out = y.detach()  # an alias: sees zero_relu_output_'s writes; no reference cycle
        ctx.two = b is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        g = torch.ops.aten.threshold_backward(gy, ctx.out, 0)
        return g, (g if ctx.two else None), None


def zeroable_relu(a: torch.Tensor, b: Optional[torch.Tensor] = None, in_place: bool = False) -> torch.Tensor:
    """``relu(a + b)`` (a lean block's residual) or ``relu(a)``, zeroable by :func:`zero_relu_output_`.

    ``in_place``: write ``relu(a + b)`` over ``a``, for a caller that knows ``a`` is a fresh output
    nothing else reads or saved for its backward (the block's last BatchNorm without ReLU:
    ``_KeptBatchNorm`` saves its input, not its output). Autograd's version check still raises if
    that is wrong. Saves the out-of-place add's allocation and pass (``aten::add`` +75 ms vs
    ``add_`` -37 ms per step, ResNet-50 224 px b8, 2 threads, in a scratch torch.profiler run over
    interleaved steps; no committed command).
    """
    return _ZeroableRelu.apply(a, b, in_place and b is not None)


def _kept_bn_forward_eager(x, weight, bias, keep, n, eps: float, relu: bool):
    """``fused_kernels.kept_bn_forward`` in eager ops chosen for CPU speed (same signature and values).

    Sum and sum of squares over all positions (= over kept ones, removed are 0) divided by the kept
    count ``n``; one affine pass; mask (multiply, not ``where``: several times faster on CPU); ReLU in
    place.
    """
    c = x.shape[1]
    mean = x.sum(dim=(0, 2, 3)) / n
    var = ((x * x).sum(dim=(0, 2, 3)) / n - mean.square()).clamp_min(0)  # biased
    invstd = torch.rsqrt(var + eps)
    scale = invstd * weight
    shift = bias - mean * scale
    y = torch.addcmul(shift.view(1, c, 1, 1), x, scale.view(1, c, 1, 1))
    y.mul_(keep)
    if relu:
        y.relu_()
    return y, mean, var, invstd


def _kept_bn_backward_eager(gy, out, x, keep, mean, invstd, weight, n, relu: bool):
    """``fused_kernels.kept_bn_backward`` in eager ops: ReLU's own backward kernel (``y > 0`` only at
    kept positions, so it also applies the mask), then ``sum g`` and ``sum g * xhat`` in one fused
    native pass (``g`` is 0 where removed, so the sums are over kept positions)."""
    c = x.shape[1]
    g = torch.ops.aten.threshold_backward(gy, out, 0) if relu else gy * keep
    _, dxhat, dbias = torch.ops.aten.native_batch_norm_backward(
        g, x, weight, None, None, mean, invstd, True, 0.0, [False, True, True])
    w = invstd * weight
    c2 = -w * invstd * dxhat / n
    c3 = -w * dbias / n - c2 * mean
    dx = torch.addcmul(c3.view(1, c, 1, 1), g, w.view(1, c, 1, 1))
    dx.addcmul_(x, c2.view(1, c, 1, 1)).mul_(keep)  # removed positions get no gradient
    return dx, dxhat, dbias


_FUSED_FORWARD = FusedKernel(kept_bn_forward, _kept_bn_forward_eager, "kept_bn_forward")
_FUSED_BACKWARD = FusedKernel(kept_bn_backward, _kept_bn_backward_eager, "kept_bn_backward")


class _KeptBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm over kept positions of a map that is zero where removed, ReLU fused.

    Forward: batch statistics from sums over all positions divided by the kept count ``n``, then
    affine, mask and ReLU. Backward: the BatchNorm gradient restricted to kept positions,
    ``dx = g*r*w - r*w/n * (sum g + xhat * sum g*xhat)``. ``fused``: run both as compiled kernels
    (``fused_kernels``), else as eager ops. With the ReLU, the output is kept as an alias rather
    than a saved variable, so that :func:`zero_relu_output_` may zero it in place (see there why
    that is exact).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, keep, n, eps: float, relu: bool, fused: bool):
        c = x.shape[1]
        weight = x.new_ones(c) if weight is None else weight
        bias = x.new_zeros(c) if bias is None else bias
        nc = n.clamp(min=1)
        y, mean, var, invstd = (_FUSED_FORWARD if fused else _kept_bn_forward_eager)(x, weight, bias, keep, nc, eps, relu)
        ctx.relu, ctx.fused = relu, fused
        ctx.out = y.detach() if relu else None  # an alias: sees zero_relu_output_'s writes
        ctx.save_for_backward(x, keep, mean, invstd, weight, nc)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        x, keep, mean, invstd, weight, n = ctx.saved_tensors
        kernel = _FUSED_BACKWARD if ctx.fused else _kept_bn_backward_eager
        dx, dweight, dbias = kernel(gy, ctx.out, x, keep, mean, invstd, weight, n, ctx.relu)
        dweight = dweight if ctx.needs_input_grad[1] else None
        dbias = dbias if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None, None, None


def lean_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, removed: torch.Tensor, relu: bool = False,
                    fused: bool = False) -> torch.Tensor:
    """``masked_batch_norm`` (then ReLU if ``relu``) of a conv output that is zero where removed.

    ``fused``: training-mode statistics, output and gradients by compiled kernels
    (``fused_kernels``; eager where compiling fails), else by eager ops.

    ``removed``: (B, 1, H, W) (a per-channel mask falls back to the reference). Running statistics
    are updated exactly as the reference does. With ``relu`` the output may be zeroed in place by
    :func:`zero_relu_output_` (every path ends in a ReLU whose backward reads its output).
    """
    if removed.shape[1] != 1:
        y = masked_batch_norm(bn, x, removed)
        return zeroable_relu(y) if relu else y
    if not (bn.training or bn.running_mean is None):
        y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        y = zero_by_mask(y, removed)
        return zeroable_relu(y) if relu else y
    keep = (~removed).to(x.dtype)
    n = keep.sum()
    y, mean, var = _KeptBatchNorm.apply(x, bn.weight, bn.bias, keep, n, bn.eps, relu, fused)
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            if float(n) > 0:  # a map with no kept position keeps its running statistics
                bn.running_mean.lerp_(mean, factor)
                bn.running_var.lerp_(var * n / (n - 1).clamp(min=1), factor)
    return y


def compact_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask[:, :1]`` when all channels of a (B, C, H, W) mask agree, else ``mask`` (same meaning)."""
    if mask.shape[1] > 1 and bool((mask == mask[:, :1]).all()):
        return mask[:, :1]
    return mask


def _ring_band(cand: torch.Tensor):
    """Flat positions of each image's ring-band pixels ``cand`` (B, N), padded to the widest image.

    Returns ``(pos, real, width)``: ``pos`` (B, P) positions (candidates first), ``real`` (B, P) marks
    the non-padding ones; None when no image has a candidate. Candidates come first per image so that
    gather/scatter along the last dim stay fast kernels, unlike advanced indexing over (image, :, pixel).
    """
    counts = cand.sum(dim=1)
    width = int(counts.max())
    if width == 0:
        return None
    pos = torch.sort(cand.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
    real = torch.arange(width, device=cand.device)[None] < counts[:, None]
    return pos, real, width


def wax_compact(h1: torch.Tensor, h2: torch.Tensor, removed1: torch.Tensor, removed2: torch.Tensor,
                corr: Correspondence, psnr_threshold: float = 20.0, max_rings: int = 2,
                decision: str = "channel", peak: str = "channel", nonneg: bool = False) -> WaxResult:
    """``masks.wax`` with compact masks: the same removal, comparing ring pixels only.

    ``decision="spatial"`` runs :func:`wax_spatial_compact`. ``nonneg``: both maps are >= 0 (the
    caller knows them to be ReLU outputs), so the peak needs no minimum.

    Only the pixels that lie in a ring of some channel (a thin band around the removed region) are
    gathered and compared, block sums are ``index_add`` over (image, block), and masks stay
    ``(B, 1, H, W)`` when they were and no ring passes in any channel (or when all channels agree).
    Returned masks may be ``(B, 1, H, W)``; expanded over channels they equal ``wax``'s.
    """
    if decision == "spatial":  # checks its inputs itself
        return wax_spatial_compact(h1, h2, removed1, removed2, corr, psnr_threshold, max_rings, peak, nonneg)
    check_wax_inputs(h1, h2, corr, max_rings, decision, peak)
    bsz, ch, h, w = h1.shape
    zero = torch.zeros((), device=h1.device)
    if max_rings == 0 or corr.num_blocks == 0:
        return WaxResult(removed1, removed2, zero, zero)
    with torch.no_grad():
        a1 = h1.detach().float().reshape(bsz, ch, h * w)
        a2 = h2.detach().float().reshape(bsz, ch, h * w)
        peak_flops = PEAK_FLOPS * 2 * a1.numel()
        c1, c2 = removed1.shape[1], removed2.shape[1]  # 1 (shared by all channels) or C
        r1 = removed1.reshape(bsz, c1, h * w)
        r2 = removed2.reshape(bsz, c2, h * w)
        dist = ring_distance(removed1, max_rings).reshape(bsz, c1, h * w)
        band = _ring_band(((dist >= 1) & (dist <= max_rings)).any(dim=1) & corr.valid)  # in a ring of some channel
        if band is None:
            return WaxResult(removed1, removed2, zero, zero + peak_flops)
        pos, real, width = band
        mse_limit = wax_peak(a1, a2, peak, nonneg).square().expand(bsz, ch) * 10.0 ** (-psnr_threshold / 10.0)
        tgt = corr.target.gather(1, pos)
        nb = corr.num_blocks
        slot = (torch.arange(bsz, device=h1.device)[:, None] * nb + corr.owner.gather(1, pos).clamp(min=0)).reshape(-1)
        pos_c, tgt_c = pos[:, None, :].expand(bsz, ch, width), tgt[:, None, :].expand(bsz, ch, width)

        def rows(t):  # (B, C|1, P) -> (B*P, C|1): channels contiguous, so block sums are row index_add
            return t.transpose(1, 2).reshape(bsz * width, t.shape[1])

        ring_k = rows(torch.where(real[:, None], dist.gather(2, pos[:, None, :].expand(bsz, c1, width)), 0))
        comparable = rows(~r2.gather(2, tgt[:, None, :].expand(bsz, c2, width)))  # counterpart kept in view 2
        sq_err = rows((a1.gather(2, pos_c) - a2.gather(2, tgt_c)).square())  # (B*P, C)
        limit = mse_limit.repeat_interleave(nb, dim=0)  # (B*nb, C)
        alive = torch.ones(bsz * nb, ch, dtype=torch.bool, device=h1.device)
        add = torch.zeros(bsz * width, ch, dtype=torch.bool, device=h1.device)
        compared = torch.zeros((), device=h1.device)
        for k in range(1, max_rings + 1):
            ring = (ring_k == k) & alive.index_select(0, slot)  # ring pixels of still-growing blocks
            cf = (ring & comparable).float()
            se = torch.zeros(bsz * nb, ch, device=h1.device).index_add_(0, slot, sq_err * cf)
            cnt = torch.zeros_like(se).index_add_(0, slot, cf)
            alive = alive & (se <= limit * cnt)  # per (image, block, channel)
            add |= ring & alive.index_select(0, slot)
            compared += cnt.sum()
        add = add.view(bsz, width, ch).transpose(1, 2)  # (B, C, P)
        flops = PSNR_PAIR_FLOPS * compared + peak_flops
        if not bool(add.any()):
            return WaxResult(removed1, removed2, compared, flops)
        # Channel agreement is decided on the additions (B, C, ring pixels), not on full masks: ring
        # pixels are kept pixels, so a compact mask grown by additions that differ across channels
        # differs across channels, and one grown by additions that agree stays compact.
        same = bool((add == add[:, :1]).all())
        one = add[:, :1]
        if same and c1 == 1:
            m1 = (r1 | torch.zeros(bsz, 1, h * w, dtype=torch.bool, device=h1.device).scatter_(2, pos[:, None], one))
            m1 = m1.view(bsz, 1, h, w)
        else:
            new1 = r1 | torch.zeros(bsz, ch, h * w, dtype=torch.bool, device=h1.device).scatter_(2, pos_c, add)
            m1 = new1.view(bsz, ch, h, w) if c1 == 1 else compact_mask(new1.view(bsz, ch, h, w))
        # the same ring pixels at their counterparts in view 2 (two pixels may share one counterpart; a
        # counterpart may be removed already, so disagreeing additions can still give agreeing masks)
        if same and c2 == 1:
            m2 = r2 | torch.zeros(bsz, 1, h * w, dtype=torch.uint8, device=h1.device).scatter_reduce_(
                2, tgt[:, None], one.to(torch.uint8), reduce="amax").bool()
            m2 = m2.view(bsz, 1, h, w)
        else:
            new2 = r2 | torch.zeros(bsz, ch, h * w, dtype=torch.uint8, device=h1.device).scatter_reduce_(
                2, tgt_c, add.to(torch.uint8), reduce="amax").bool()
            m2 = compact_mask(new2.view(bsz, ch, h, w))
    return WaxResult(m1, m2, compared, flops)


def _spatial_growth_torch(a1: torch.Tensor, a2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
                          corr: Correspondence, hw: tuple[int, int], psnr_threshold: float, max_rings: int,
                          inv: Optional[torch.Tensor], nonneg: bool) -> SpatialGrowth:
    """``wax_jit.spatial_wax`` in tensor ops (any device, any float dtype): what runs where it cannot.

    The ring band of the position mask is listed once as sorted (image, pixel) pairs; the errors of
    every band pixel with a kept counterpart, summed over channels, come from two gathers; block sums
    are ``index_add`` over (image, block). No per-channel state: nothing grows to ``(B, C, H, W)``.
    """
    bsz, ch, n = a1.shape
    dev = a1.device
    grow1 = torch.zeros(bsz * n, dtype=torch.bool, device=dev)
    grow2 = torch.zeros(bsz * n, dtype=torch.bool, device=dev)
    dist = ring_distance(p1.view(bsz, 1, *hw), max_rings).reshape(bsz, n)
    img, pos = ((dist >= 1) & (dist <= max_rings) & corr.valid).nonzero(as_tuple=True)  # sorted (image, pixel)
    if img.numel() == 0:
        return SpatialGrowth(grow1.view(bsz, n), grow2.view(bsz, n), 0)
    flat = img * n + pos
    tgt = corr.target.reshape(-1)[flat]
    nb = corr.num_blocks
    slot = img * nb + corr.owner.reshape(-1)[flat].clamp(min=0)
    ring_k = dist.reshape(-1)[flat]
    comparable = ~p2.reshape(-1)[img * n + tgt]  # counterpart kept in view 2
    cmp_idx = comparable.nonzero().squeeze(1)
    if inv is None:
        inv = inverse_peak(wax_peak(a1, a2, "channel", nonneg))
    err = torch.zeros(img.numel(), dtype=a1.dtype, device=dev).index_copy_(
        0, cmp_idx, ring_errors_torch(a1, a2, inv, img[cmp_idx], pos[cmp_idx], tgt[cmp_idx]))
    limit = 10.0 ** (-psnr_threshold / 10.0) * ch
    alive = torch.ones(bsz * nb, dtype=torch.bool, device=dev)
    add = torch.zeros(img.numel(), dtype=torch.bool, device=dev)
    tested = 0
    for k in range(1, max_rings + 1):
        ring = (ring_k == k) & alive[slot]  # ring pixels of still-growing blocks
        idx = (ring & comparable).nonzero().squeeze(1)
        se = torch.zeros(bsz * nb, dtype=err.dtype, device=dev).index_add_(0, slot[idx], err[idx])
        cnt = torch.zeros(bsz * nb, dtype=err.dtype, device=dev).index_add_(
            0, slot[idx], torch.ones(idx.numel(), dtype=err.dtype, device=dev))
        alive = alive & (se <= limit * cnt)  # a block with no tested pixel (se = cnt = 0) keeps growing
        add |= ring & alive[slot]
        tested += idx.numel()
    grow1[flat[add]] = True
    grow2[(img * n + tgt)[add]] = True  # two pixels may share one counterpart
    return SpatialGrowth(grow1.view(bsz, n), grow2.view(bsz, n), tested)


def wax_spatial_compact(h1: torch.Tensor, h2: torch.Tensor, removed1: torch.Tensor, removed2: torch.Tensor,
                        corr: Correspondence, psnr_threshold: float = 20.0, max_rings: int = 2,
                        peak: str = "channel", nonneg: bool = False) -> WaxResult:
    """``masks.wax(decision="spatial")`` on ring pixels only, masks kept ``(B, 1, H, W)``.

    The whole decision (ring distance, band, the per-channel MAX and the band's errors in one read of
    both maps, block decisions, growth) is one compiled loop per image (``wax_jit.spatial_wax``); where
    it cannot run (no numba, not CPU float32) the same growth comes from tensor ops
    (:func:`_spatial_growth_torch`). Returns the input masks themselves when nothing grows.
    """
    check_wax_inputs(h1, h2, corr, max_rings, "spatial", peak)
    bsz, ch, h, w = h1.shape
    hw = h * w
    dev = h1.device
    zero = torch.zeros((), device=dev)
    if max_rings == 0 or corr.num_blocks == 0:
        return WaxResult(removed1, removed2, zero, zero)
    with torch.no_grad():
        p1 = removed1 if removed1.shape[1] == 1 else removed1.all(dim=1, keepdim=True)  # positions removed everywhere
        p2 = removed2 if removed2.shape[1] == 1 else removed2.all(dim=1, keepdim=True)
        p1, p2 = p1.reshape(bsz, hw), p2.reshape(bsz, hw)
        a1 = h1.detach().float().reshape(bsz, ch, hw)
        a2 = h2.detach().float().reshape(bsz, ch, hw)
        inv = None if peak == "channel" else inverse_peak(wax_peak(a1, a2, peak, nonneg))
        args = (a1, a2, p1, p2, corr, (h, w), psnr_threshold, max_rings, inv, nonneg)
        growth = spatial_wax(*args)
        if growth is None:
            growth = _spatial_growth_torch(*args)
        compared = zero + growth.tested * ch
        flops = (PSNR_PAIR_FLOPS + (1 if peak == "channel" else 0)) * compared + PEAK_FLOPS * 2 * a1.numel()
        if not bool(growth.grow1.any()):
            return WaxResult(removed1, removed2, compared, flops)
        m1 = removed1 | growth.grow1.view(bsz, 1, h, w)
        m2 = removed2 | growth.grow2.view(bsz, 1, h, w)
    return WaxResult(m1, m2, compared, flops)
