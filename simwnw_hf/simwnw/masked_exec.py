"""Reference SimWnW execution of a timm ResNet on masked feature maps (paper §4.1 removal, §4.2).

This is the *definition* of what a SimWnW forward computes; a sparse executor must reproduce it.
It runs dense kernels and zeroes what is removed, so it saves no wall time by itself.

Semantics, layer by layer (masks: bool, ``True`` = removed, (B, 1|C, H, W); see ``masks.py``):

* **Input.** Removed pixels of the normalised view are set to 0 (removed = absent: they contribute
  nothing to any window that also covers kept pixels).
* **Conv.** The input is zeroed at its removed positions, the dense conv runs, and output positions
  whose window holds no kept pixel *in any input channel* are removed (``wane(...).all(channel)``)
  and set to 0. Removed outputs of a bias-free conv are 0 anyway, so the zeroing only matters for
  convs with a bias. An (image, input channel, output position) triple whose window holds no kept
  pixel of that channel is *inactive*: its partial sum is zero and skippable; ``flops.py`` counts
  work per active triple.
* **Waxing.** At every residual block input and before every spatial conv inside a block (the
  3x3 convs; the stem conv sees the block-matched image masks only), the optional ``expand``
  callback (``masks.pair_expander``) grows the per-channel masks from the two views' maps (§4.2.2),
  and the newly removed activations are set to 0 *in the feature map*: at a block input they are
  gone for both the residual branch and the shortcut. (Waxing only the conv input would leave the
  shortcut's mask as the ceiling of the block output's mask, so removal could never grow across
  blocks, and residual networks would keep only what waning leaves.)
* **BatchNorm.** Training mode: mean and (biased) variance per channel over the kept positions only;
  running statistics are updated from them (unbiased variance ``var * n / (n - 1)``, momentum as in
  ``nn.BatchNorm2d``, ``momentum=None`` = cumulative average; a channel with no kept position keeps
  its running statistics). Eval mode: running statistics. Removed outputs are set to 0 after the
  affine transform (and again after an activation other than ReLU, since ``act(0)`` may be
  non-zero), so removed stays zero through BN + activation.
* **Max-pool.** Removed iff the whole window (padding excluded) is removed; removed outputs are 0
  (max over zeros; activations are >= 0 after ReLU).
* **Residual sum.** ``y = branch + shortcut``: a (channel, position) of ``y`` is removed iff it is
  removed in *both* operands (both are 0 there, so ``y`` is 0); otherwise it is a kept value. The
  block output mask is therefore per channel when the shortcut mask is.
* **Global pool.** timm's average over all positions; removed positions count as zeros.

The two views run in lockstep, layer by layer, with *separate* BatchNorm statistics per view (as
two dense ``encoder(x)`` calls do), so an empty mask reproduces the dense model exactly.
Gradients flow through everything except the mask decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from .masks import active_inputs, wane

__all__ = [
    "ConvRecord", "MaskRecord", "WaxRecord", "masked_conv2d", "masked_batch_norm",
    "masked_max_pool2d", "masked_forward_features", "Expand",
]

# expand(name, [h1, h2], [removed1, removed2]) -> ([removed1, removed2], overhead_flops as float or 0-d tensor)
Expand = Callable[[str, List[torch.Tensor], List[torch.Tensor]], Tuple[List[torch.Tensor], Union[float, torch.Tensor]]]


@dataclass(frozen=True)
class ConvRecord:
    """Work of one conv module over all views of a call, at (image, input channel, output position)."""

    name: str
    kernel_size: Tuple[int, int]
    in_channels: int
    out_channels: int
    groups: int
    dense_triples: int  # B * Cin * Ho * Wo summed over views
    active_triples: torch.Tensor  # 0-d: triples whose window holds a kept pixel of that channel
    input_grad: bool  # autograd will compute grad-input (input requires grad)
    weight_grad: bool  # autograd will compute grad-weight


@dataclass(frozen=True)
class MaskRecord:
    """Removed masks of each view after a named stage (``input``, ``stem``, ``layer1``..) or of a
    conv input after waxing (``<conv name>:waxed``)."""

    name: str
    removed1: torch.Tensor
    removed2: Optional[torch.Tensor]


@dataclass(frozen=True)
class WaxRecord:
    """Overhead of waxing the input of one conv."""

    name: str
    overhead_flops: torch.Tensor  # 0-d (kept on device until the stats are read: no sync per layer)


def _zero(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``x`` with removed positions set to 0 (``removed`` broadcasts over channels)."""
    return torch.where(removed, x.new_zeros(()), x)  # where: faster than masked_fill for broadcast masks


def masked_conv2d(conv: nn.Conv2d, x: torch.Tensor, removed: torch.Tensor):
    """Dense conv on the kept input; outputs with no kept pixel in their window removed and zeroed.

    ``x``: (B, Cin, H, W); ``removed``: (B, 1|Cin, H, W) bool. Returns ``(y, out_removed, active)``:
    ``y`` (B, Cout, Ho, Wo), ``out_removed`` (B, 1, Ho, Wo), ``active`` the number of active
    (image, input channel, output position) triples.
    """
    if conv.groups != 1:
        raise NotImplementedError(f"masked execution supports groups=1 convs only, got groups={conv.groups}")
    if isinstance(conv.padding, str):
        raise NotImplementedError(f"masked execution needs numeric conv padding, got padding={conv.padding!r}")
    y = conv(_zero(x, removed))
    act = active_inputs(removed, conv.kernel_size, conv.stride, conv.padding, conv.dilation)  # (B, 1|Cin, Ho, Wo)
    out_removed = ~act.any(dim=1, keepdim=True)  # (B, 1, Ho, Wo)
    active = act.sum() * (x.shape[1] if removed.shape[1] == 1 else 1)
    if conv.bias is not None:
        y = _zero(y, out_removed)
    return y, out_removed, active


def masked_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """BatchNorm whose batch statistics exclude removed positions; removed outputs are 0.

    ``x``: (B, C, H, W); ``removed``: (B, 1|C, H, W) bool. Updates ``bn``'s running statistics in
    training mode exactly as ``nn.BatchNorm2d`` would on the kept positions.
    """
    if bn.training or bn.running_mean is None:
        kept = ~removed
        if kept.shape[1] == 1:  # one mask for all channels
            n = kept.sum().to(x.dtype).expand(x.shape[1])  # (C,) kept positions per channel
        else:
            n = kept.sum(dim=(0, 2, 3)).to(x.dtype)
        denom = n.clamp(min=1)
        mean = _zero(x, removed).sum(dim=(0, 2, 3)) / denom
        var = _zero(x - mean[None, :, None, None], removed).square().sum(dim=(0, 2, 3)) / denom  # biased
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                seen = n > 0
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                bn.running_mean.copy_(torch.where(seen, bn.running_mean.lerp(mean.detach(), factor), bn.running_mean))
                bn.running_var.copy_(torch.where(seen, bn.running_var.lerp(unbiased, factor), bn.running_var))
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)  # (C,)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    y = torch.addcmul(shift[None, :, None, None], x, scale[None, :, None, None])  # x * scale + shift
    return _zero(y, removed)


def masked_max_pool2d(pool: nn.MaxPool2d, x: torch.Tensor, removed: torch.Tensor):
    """Max-pool of a map that is 0 at removed positions; removed iff the whole window is removed."""
    if pool.ceil_mode or pool.return_indices:
        raise NotImplementedError("masked max-pool supports ceil_mode=False, return_indices=False")
    out_removed = wane(removed, pool.kernel_size, pool.stride, pool.padding, pool.dilation)
    return _zero(pool(x), out_removed), out_removed


# --------------------------------------------------------------------------- multi-view walkers
# Each helper takes the per-view lists ``hs`` (tensors) and ``rs`` (masks) and appends what it did to
# ``trace`` (a list owned by the caller of masked_forward_features).

def _wax(name: str, hs, rs, trace: list, expand: Optional[Expand]):
    """Grow both views' masks at a waxing point and zero the newly removed activations."""
    if expand is None or len(hs) != 2:
        return hs, rs
    rs, overhead = expand(name, list(hs), list(rs))
    trace.append(WaxRecord(name, overhead))
    _record(trace, f"{name}:waxed", rs)
    return [_zero(h, r) for h, r in zip(hs, rs)], rs


def _conv(name: str, conv: nn.Module, hs, rs, trace: list):
    if not isinstance(conv, nn.Conv2d):
        raise NotImplementedError(f"{name}: masked execution needs an nn.Conv2d, got {type(conv).__name__}")
    ys, outs, active, dense = [], [], 0, 0
    input_grad = False
    for h, r in zip(hs, rs):
        y, r_out, a = masked_conv2d(conv, h, r)
        ys.append(y)
        outs.append(r_out)
        active += a
        dense += h.shape[0] * h.shape[1] * y.shape[2] * y.shape[3]
        input_grad |= torch.is_grad_enabled() and h.requires_grad
    trace.append(ConvRecord(
        name=name, kernel_size=tuple(conv.kernel_size), in_channels=conv.in_channels,
        out_channels=conv.out_channels, groups=conv.groups, dense_triples=dense, active_triples=active,
        input_grad=input_grad, weight_grad=torch.is_grad_enabled() and conv.weight.requires_grad))
    return ys, outs


def _bn(bn: nn.Module, hs, rs, name: str):
    if not isinstance(bn, nn.BatchNorm2d):
        raise NotImplementedError(f"{name}: masked execution needs nn.BatchNorm2d, got {type(bn).__name__}")
    return [masked_batch_norm(bn, h, r) for h, r in zip(hs, rs)]


def _act(act: nn.Module, hs, rs):
    if isinstance(act, nn.ReLU):  # relu(0) = 0: removed positions stay zero
        return [act(h) for h in hs]
    return [_zero(act(h), r) for h, r in zip(hs, rs)]  # re-zero: act(0) may be non-zero


def _require_identity(block: nn.Module, name: str):
    for attr in ("drop_block", "aa", "se", "drop_path"):
        mod = getattr(block, attr, None)
        if mod is not None and not isinstance(mod, nn.Identity):
            raise NotImplementedError(f"{name}.{attr} is {type(mod).__name__}; masked execution supports plain "
                                      "ResNet blocks (no SE, anti-aliasing, DropBlock or DropPath)")


def _shortcut(block: nn.Module, hs, rs, trace, name: str):
    ds = block.downsample
    if ds is None:
        return hs, rs
    mods = [m for m in ds if not isinstance(m, nn.Identity)] if isinstance(ds, nn.Sequential) else [ds]
    if len(mods) != 2 or not isinstance(mods[0], nn.Conv2d) or not isinstance(mods[1], nn.BatchNorm2d):
        raise NotImplementedError(f"{name}.downsample must be conv + BatchNorm (timm downsample_conv)")
    s, rs_s = _conv(f"{name}.downsample.0", mods[0], hs, rs, trace)
    return _bn(mods[1], s, rs_s, name), rs_s


def _residual(block, branch, r_branch, hs, rs, trace, name, act):
    short, r_short = _shortcut(block, hs, rs, trace, name)
    r_out = [rb & rsc for rb, rsc in zip(r_branch, r_short)]  # removed only where both operands are
    out = _act(act, [b + s for b, s in zip(branch, short)], r_out)
    return out, r_out


def _basic_block(name: str, blk: BasicBlock, hs, rs, trace, expand):
    _require_identity(blk, name)
    hs, rs = _wax(f"{name}.conv1", hs, rs, trace, expand)  # block input: feeds conv1 and the shortcut
    a, ra = _conv(f"{name}.conv1", blk.conv1, hs, rs, trace)
    a = _act(blk.act1, _bn(blk.bn1, a, ra, name), ra)
    a, ra = _wax(f"{name}.conv2", a, ra, trace, expand)
    b, rb = _conv(f"{name}.conv2", blk.conv2, a, ra, trace)
    b = _bn(blk.bn2, b, rb, name)
    return _residual(blk, b, rb, hs, rs, trace, name, blk.act2)


def _bottleneck(name: str, blk: Bottleneck, hs, rs, trace, expand):
    _require_identity(blk, name)
    hs, rs = _wax(f"{name}.conv1", hs, rs, trace, expand)  # block input: feeds conv1 and the shortcut
    a, ra = _conv(f"{name}.conv1", blk.conv1, hs, rs, trace)
    a = _act(blk.act1, _bn(blk.bn1, a, ra, name), ra)
    a, ra = _wax(f"{name}.conv2", a, ra, trace, expand)
    b, rb = _conv(f"{name}.conv2", blk.conv2, a, ra, trace)
    b = _act(blk.act2, _bn(blk.bn2, b, rb, name), rb)
    c, rc = _conv(f"{name}.conv3", blk.conv3, b, rb, trace)
    c = _bn(blk.bn3, c, rc, name)
    return _residual(blk, c, rc, hs, rs, trace, name, blk.act3)


def _record(trace, name, rs):
    trace.append(MaskRecord(name, rs[0], rs[1] if len(rs) > 1 else None))


def masked_forward_features(model: nn.Module, xs: Sequence[torch.Tensor], removed: Sequence[torch.Tensor],
                            expand: Optional[Expand] = None):
    """``forward_features`` of a timm ResNet on one or two masked views.

    ``xs``: list of (B, C, H, W) normalised views; ``removed``: matching list of (B, H, W) or
    (B, 1, H, W) bool input masks; ``expand``: waxing callback (two views only). Returns
    ``(features, masks, trace)``: the per-view final maps (B, C, h, w), their removed masks and the
    list of :class:`ConvRecord` / :class:`WaxRecord` / :class:`MaskRecord` in execution order.
    """
    if len(xs) != len(removed) or len(xs) not in (1, 2):
        raise ValueError(f"need one or two views with one mask each, got {len(xs)} views, {len(removed)} masks")
    for i, (x, r) in enumerate(zip(xs, removed)):
        if r.dim() == 3:
            r = r[:, None]
        if r.dtype != torch.bool or r.shape[0] != x.shape[0] or r.shape[2:] != x.shape[2:]:
            raise ValueError(f"view {i}: mask {tuple(r.shape)} {r.dtype} does not fit input {tuple(x.shape)}")
    rs = [(r[:, None] if r.dim() == 3 else r) for r in removed]
    trace: list = []
    _record(trace, "input", rs)
    hs, rs = _conv("conv1", model.conv1, list(xs), rs, trace)  # the image level is block-matched
    hs = _act(model.act1, _bn(model.bn1, hs, rs, "bn1"), rs)
    if isinstance(model.maxpool, nn.MaxPool2d):
        pooled = [masked_max_pool2d(model.maxpool, h, r) for h, r in zip(hs, rs)]
        hs, rs = [p[0] for p in pooled], [p[1] for p in pooled]
    elif not isinstance(model.maxpool, nn.Identity):
        raise NotImplementedError(f"stem pooling {type(model.maxpool).__name__} is not supported")
    _record(trace, "stem", rs)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, blk in enumerate(getattr(model, stage)):
            name = f"{stage}.{i}"
            if isinstance(blk, BasicBlock):
                hs, rs = _basic_block(name, blk, hs, rs, trace, expand)
            elif isinstance(blk, Bottleneck):
                hs, rs = _bottleneck(name, blk, hs, rs, trace, expand)
            else:
                raise NotImplementedError(f"{name}: block type {type(blk).__name__} is not supported")
        _record(trace, stage, rs)
    return hs, rs, trace
