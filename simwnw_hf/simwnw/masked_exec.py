"""Reference SimWnW layer mechanisms on masked feature maps (paper §4.1 removal, §4.2).

These functions are the *definition* of what a SimWnW forward computes, layer by layer; the walker
that applies them to a timm ResNet lives with the model family (``simwnw_hf.models.resnet_pair``),
and faster executors (``lean_exec``) must reproduce them. They run dense kernels and zero what is
removed, so they save no wall time by themselves.

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
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from .masks import active_inputs, wane

__all__ = [
    "ConvRecord", "MaskRecord", "WaxRecord", "masked_conv2d", "masked_batch_norm",
    "masked_max_pool2d", "zero_removed", "Expand",
]

# expand(name, [h1, h2], [removed1, removed2], nonneg=False) -> ([removed1, removed2], overhead_flops as float or
# 0-d tensor); ``nonneg=True`` says both maps are ReLU outputs (a hint: the result must not depend on it)
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
    kept_positions: Optional[torch.Tensor] = None  # 0-d: output positions not removed (spatial granularity)


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


def zero_removed(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``x`` with removed positions set to 0 (``removed`` broadcasts over channels)."""
    return torch.where(removed, x.new_zeros(()), x)  # where: faster than masked_fill for broadcast masks


_zero = zero_removed


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
