"""Back Razor (Jiang et al., NeurIPS 2022): convs that keep only their largest input activations for backward.

Source read: VITA-Group/BackRazor_Neurips22 ``custom_functions/masker.py`` (the mask rule) and
``custom_functions/custom_conv.py`` (the conv autograd function). Per sample, the ``k = clip(numel *
rho, 1, numel)``-th smallest ``|x|`` is the threshold and ``|x| >= threshold`` is kept (the k-th itself and ties
survive: ``numel - k + 1`` or more, and on a ReLU output whose zeros outnumber ``rho * numel`` the
threshold is 0 and everything is kept); the forward is the dense conv of the full ``x``; only the
kept values and a bit mask are saved; the weight gradient uses the pruned ``x``, the input gradient
(which needs only the weight) is exact. Not training (eval) or no grad: a plain conv.

Memory: a conv's input in a ResNet is a ReLU output, and ``nn.ReLU`` saves that output for its own
backward, so pruning the conv's copy alone saves nothing (the full tensor stays alive). As the
authors' ``custom_relu.py`` does, :class:`BitMaskReLU` saves only the 1-bit mask ``y > 0`` (its
backward ``g * (y > 0)`` needs nothing else; exact), so the conv input survives only in Back Razor's
kept-values form. The BatchNorms still save their inputs (the conv outputs): the authors freeze BN
(``full_noBN``, ``--fix_bn_stat``) in their CNN runs; SSL pre-training from scratch trains it, and
BN's input gradient needs the exact input.

FLOPs are counted like ``simwnw_hf.simwnw.flops``: forward and grad-input dense; grad-weight counts
the products ``g[co, p] * x[ci, p + k]`` minus those whose activation was pruned: each pruned input
element skips ``C_out / groups`` x (number of (output position, kernel offset) pairs that read it)
products, x 2 FLOPs (products on the zero padding stay counted, as in the dense count).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from simwnw_hf.simwnw.flops import dense_model_flops

from .stats import GatingStats

__all__ = ["keep_mask", "pack_bits", "unpack_bits", "BackRazorConv2dFunction", "BackRazorConv2d",
           "BitMaskReLUFunction", "BitMaskReLU",
           "convert_back_razor", "coverage", "back_razor_stats", "saved_tensor_bytes", "reset_tally", "step_tally"]


@torch.no_grad()
def keep_mask(x: torch.Tensor, rho: float) -> torch.Tensor:
    """Bool mask of the activations kept per sample: ``|x| >=`` the ``clip(numel * rho, 1, numel)``-th smallest."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"Back Razor prune ratio rho must be in [0, 1), got {rho}")
    if rho == 0.0:
        return torch.ones_like(x, dtype=torch.bool)
    per = x[0].numel()
    k = int(min(max(per * rho, 1), per))
    mag = x.abs().flatten(1)
    if per - k + 1 < k:  # the k-th smallest is the (per - k + 1)-th largest: select the smaller side
        thr = mag.topk(per - k + 1, dim=1, sorted=False).values.amin(1)
    else:
        thr = mag.kthvalue(k, dim=1).values
    return (mag >= thr[:, None]).view_as(x)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of ``ceil(numel / 8)`` bytes (8 flags a byte, element i at bit i % 8)."""
    flat = mask.flatten().view(torch.uint8)  # bool is one byte 0/1: a view, no copy
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    lanes = flat.view(-1, 8)
    out = lanes[:, 0].clone()
    for bit in range(1, 8):
        out |= lanes[:, bit] << bit
    return out


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`pack_bits`."""
    n = 1
    for s in shape:
        n *= int(s)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & 1).flatten()[:n].view(torch.bool).view(shape)


class BackRazorConv2dFunction(torch.autograd.Function):
    """Dense conv forward; saves the kept input values + bit mask; grad-weight from the pruned input."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, stride, padding, dilation, groups):
        ctx.save_for_backward(x.masked_select(mask), pack_bits(mask), weight)  # masked_select: no nonzero()
        ctx.meta = (tuple(x.shape), stride, padding, dilation, groups, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        values, bits, weight = ctx.saved_tensors
        shape, stride, padding, dilation, groups, has_bias = ctx.meta
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(shape, weight, grad_out, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            x = values.new_zeros(shape).masked_scatter_(unpack_bits(bits, shape), values)
            gw = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride, padding, dilation, groups)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None, None


class BackRazorConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same state_dict) whose training backward uses the Back Razor-pruned input.

    ``rho = 0`` or eval / no-grad: exactly ``nn.Conv2d``. The last training forward leaves the kept
    fraction and the shapes in ``self.record`` for :func:`back_razor_stats`.
    """

    def __init__(self, *args, rho: float = 0.9, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"Back Razor prune ratio rho must be in [0, 1), got {rho}")
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("BackRazorConv2d supports numeric zero padding only")
        self.rho = rho
        self.enabled = True  # False: a plain conv (a framework's prune=False step)
        self.record: Optional[Dict[str, object]] = None
        self.tally: Optional[Dict[str, float]] = None  # sums over training forwards since reset_tally

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rho: float) -> "BackRazorConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, rho=rho)
        new = new.to(conv.weight.device, conv.weight.dtype)
        new.load_state_dict(conv.state_dict())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rho == 0.0 or not self.enabled or not self.training or not torch.is_grad_enabled():
            return super().forward(x)
        kept = keep_mask(x, self.rho)
        y = BackRazorConv2dFunction.apply(x, self.weight, self.bias, kept, self.stride, self.padding,
                                          self.dilation, self.groups)
        with torch.no_grad():
            # kept count per input position (summed over batch and channels): the pruned products of
            # every element at a position are the same, its coverage (float32 whatever x's dtype: counts)
            kept_hw = kept.sum((0, 1), dtype=torch.float32)
            n_kept = float(kept_hw.sum())
            pruned_hw = x.shape[0] * x.shape[1] - kept_hw
            cov = self._coverage(tuple(x.shape[-2:]), tuple(y.shape[-2:]), x.device, torch.float32)
            self.record = dict(in_shape=tuple(x.shape), out_hw=tuple(y.shape[-2:]), input_grad=x.requires_grad,
                               pruned_products=float((pruned_hw * cov).sum()), kept_fraction=n_kept / x.numel())
            self._tally(x, y, n_kept)
        return y

    def _coverage(self, in_hw, out_hw, device, dtype) -> torch.Tensor:
        """:func:`coverage` of this conv, cached per shape / device / dtype (it depends on nothing else)."""
        cache = self.__dict__.setdefault("_coverage_cache", {})
        key = (in_hw, out_hw, str(device), dtype)
        if key not in cache:
            cache[key] = coverage(self, in_hw, out_hw, device, dtype)
        return cache[key]

    def _tally(self, x: torch.Tensor, y: torch.Tensor, n_kept: float) -> None:
        """Add this training forward to :attr:`tally` (summed over calls until :func:`reset_tally`)."""
        r = self.record
        fwd = 2.0 * self.kernel_size[0] * self.kernel_size[1] * (self.in_channels // self.groups) \
            * self.out_channels * y.shape[-2] * y.shape[-1] * x.shape[0]
        call = dict(dense_train_flops=fwd * (2 + int(r["input_grad"])),
                    skipped_flops=2.0 * (self.out_channels // self.groups) * r["pruned_products"],
                    elements=float(x.numel()), kept_elements=n_kept,
                    bytes_dense=float(x.numel() * x.element_size()),
                    bytes_kept=n_kept * x.element_size() + float((x.numel() + 7) // 8))
        tally = getattr(self, "tally", None) or dict.fromkeys(call, 0.0)
        self.tally = {k: tally[k] + v for k, v in call.items()}


class BitMaskReLUFunction(torch.autograd.Function):
    """ReLU that saves a 1-bit mask of ``y > 0`` for backward instead of its output (the authors' ReLU).

    Backward ``where(y > 0, g, 0)`` is exactly ``nn.ReLU``'s (``threshold_backward``).
    """

    @staticmethod
    def forward(ctx, x, inplace: bool):
        if inplace:
            ctx.mark_dirty(x)
            y = x.clamp_(min=0)
        else:
            y = x.clamp(min=0)
        ctx.shape = tuple(y.shape)
        ctx.save_for_backward(pack_bits(y > 0))
        return y

    @staticmethod
    def backward(ctx, grad_out):
        bits, = ctx.saved_tensors
        return grad_out.masked_fill(~unpack_bits(bits, ctx.shape), 0), None


class BitMaskReLU(nn.ReLU):
    """``nn.ReLU`` whose autograd keeps a bit mask, not the output: the tensor is freed once the next
    layer (a Back Razor conv, keeping only its pruned copy) is done with it. Exactly ``nn.ReLU``'s
    values and gradients; without grad a plain ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return BitMaskReLUFunction.apply(x, self.inplace)


def coverage(conv: nn.Conv2d, in_hw: Tuple[int, int], out_hw: Tuple[int, int], device=None, dtype=torch.float32
             ) -> torch.Tensor:
    """``(H, W)``: for each input position, how many (output position, kernel offset) pairs read it."""
    ones_out = torch.ones(1, 1, *out_hw, device=device, dtype=dtype)
    ker = torch.ones(1, 1, *conv.kernel_size, device=device, dtype=dtype)
    # unpadded transpose: index i of ``cov`` is input row i - padding (rows < 0 or >= H are padding)
    cov = F.conv_transpose2d(ones_out, ker, stride=conv.stride, dilation=conv.dilation)[0, 0]
    ph, pw = conv.padding
    full = torch.zeros(*in_hw, device=device, dtype=dtype)
    crop = cov[ph:ph + in_hw[0], pw:pw + in_hw[1]]
    full[:crop.shape[0], :crop.shape[1]] = crop
    return full


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)


def convert_back_razor(model: nn.Module, rho: float, skip_first: bool = False, relu_masks: bool = True) -> List[str]:
    """Replace every ``nn.Conv2d`` of ``model`` by a ``BackRazorConv2d`` (weights kept), in place.

    ``skip_first`` leaves the first conv (the stem, whose input is the image) dense. ``relu_masks``
    also replaces every ``nn.ReLU`` module by :class:`BitMaskReLU` (exact; without it the ReLU
    outputs, i.e. the conv inputs, stay saved in full and Back Razor saves no memory). Returns the
    converted convs' names.
    """
    convs = [(n, m) for n, m in model.named_modules() if type(m) is nn.Conv2d]
    if not convs:
        raise ValueError("convert_back_razor found no nn.Conv2d to convert")
    names = []
    for name, mod in convs[1:] if skip_first else convs:
        _replace(model, name, BackRazorConv2d.from_conv(mod, rho))
        names.append(name)
    if relu_masks:
        for name, mod in [(n, m) for n, m in model.named_modules() if type(m) is nn.ReLU]:
            _replace(model, name, BitMaskReLU(inplace=mod.inplace))
    return names


def reset_tally(model: nn.Module) -> None:
    """Forget what every ``BackRazorConv2d`` of ``model`` tallied (call before each step)."""
    for m in model.modules():
        if isinstance(m, BackRazorConv2d):
            m.tally = None


def step_tally(model: nn.Module) -> Dict[str, float]:
    """Sums over every ``BackRazorConv2d`` and training forward since :func:`reset_tally`.

    ``dense_train_flops``: forward + grad-weight (+ grad-input when the conv's input needs grad) of
    those calls; ``skipped_flops``: the grad-weight products of pruned activations; ``elements`` /
    ``kept_elements``: conv input activations; ``bytes_dense`` / ``bytes_kept``: what the convs save
    for backward without / with Back Razor (kept values + the 1-bit mask; the weight not counted).
    """
    keys = ("dense_train_flops", "skipped_flops", "elements", "kept_elements", "bytes_dense", "bytes_kept")
    total = dict.fromkeys(keys, 0.0)
    for m in model.modules():
        if isinstance(m, BackRazorConv2d) and m.tally:
            for k in keys:
                total[k] += m.tally[k]
    return total


def back_razor_stats(model: nn.Module, input_hw, batch: int) -> GatingStats:
    """FLOPs per image of the last training step vs dense, and the pruned activation fraction.

    ``extra['saved_bytes_fraction']`` is not here: measure it with :func:`saved_tensor_bytes`.
    """
    convs = [m for m in model.modules() if isinstance(m, BackRazorConv2d) and m.record is not None]
    if not convs:
        raise ValueError("back_razor_stats: no BackRazorConv2d has run a training forward yet")
    key = (int(input_hw[0]), int(input_hw[1]))
    cache = model.__dict__.setdefault("_br_dense_flops", {})
    if key not in cache:
        shape = (1, getattr(model, "in_chans", 3), *key)
        cache[key] = (dense_model_flops(model, shape, backward=False), dense_model_flops(model, shape, backward=True))
    fwd_dense, train_dense = cache[key]
    skipped = kept_el = total_el = 0.0
    for c in convs:
        r = c.record
        n, cin, h, w = r["in_shape"]
        skipped += 2.0 * (c.out_channels // c.groups) * r["pruned_products"] / n
        kept_el += r["kept_fraction"] * cin * h * w
        total_el += cin * h * w
    return GatingStats("back_razor", fwd_dense, fwd_dense, train_dense, train_dense - skipped,
                       1 - kept_el / total_el, 0.0, {"rho": float(convs[0].rho)})


def saved_tensor_bytes(fn, *args, **kwargs) -> Tuple[object, int]:
    """Run ``fn(*args, **kwargs)`` and return its result and the bytes autograd saved for backward.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``, each storage once (a tensor saved by two
    ops, e.g. a ReLU output that is also a conv input, counts once).
    """
    seen: Dict[Tuple[int, int], int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[(st.data_ptr(), t.device.index or 0)] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, int(sum(seen.values()))
