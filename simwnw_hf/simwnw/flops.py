"""Analytic FLOPs of a ResNet step, dense and under SimWnW masks (paper §5 "Training FLOPs", App. C).

FLOPs, not MACs (one multiply-accumulate = 2 FLOPs), counted like ``torch.utils.flop_counter``:
convolutions and matrix products only (BatchNorm, activations, adds and pooling are not counted).

Unit of work: the (image, input channel, output position) triple of a conv. A triple carries
``2 * kh * kw * Cout / groups`` FLOPs in each pass:

* forward: the partial sum of that input channel's window into all output channels;
* grad-weight ``dW[co, ci, k] += g[co, p] * x[ci, p + k]``: the same products;
* grad-input, scatter form ``dX[ci, p + k] += W[co, ci, k] * g[co, p]``: the same products again.

Dense: all ``B * Cin * Ho * Wo`` triples, i.e. ``2 * kh * kw * Cin / groups * Cout`` per output
position, per pass. Masked: only *active* triples (the channel's window holds a kept pixel; see
``masks.active_inputs``). The skip rules are exact:

* forward: an inactive triple multiplies zeros only;
* grad-weight: a removed output has zero gradient (it is multiplied by 0), and an inactive triple's
  inputs are zero, so its products vanish;
* grad-input: a removed output position has zero gradient, and the gradient reaching a removed
  input pixel is discarded by the input mask; an inactive triple only writes to removed input
  pixels of its channel (or reads zero gradient), so it is skipped.

Grad-input is counted only when autograd computes it (the conv's input requires grad; the stem conv
on the image does not), grad-weight only when the weight requires grad, and no backward at all
under ``torch.no_grad`` (e.g. a momentum encoder). This is what ``FlopCounterMode`` sees for the dense
model.

Overhead: block-matching PSNRs (``BlockMatch.overhead_flops``) + ring PSNRs and per-channel peaks of
waxing (``masks.wax``), reported separately.
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence

import torch
import torch.nn as nn

from .masked_exec import ConvRecord, WaxRecord

__all__ = ["triple_flops", "trace_flops", "dense_model_flops"]


def triple_flops(kernel_size: Sequence[int], out_channels: int, groups: int = 1) -> int:
    """FLOPs of one (image, input channel, output position) triple in one pass."""
    return 2 * int(kernel_size[0]) * int(kernel_size[1]) * (out_channels // groups)


def trace_flops(trace: Iterable) -> Dict[str, float]:
    """Dense, kept and waxing-overhead FLOPs of a ``masked_forward_features`` trace.

    Returns ``dense_flops`` / ``kept_flops`` (forward plus the backward passes autograd will run),
    ``forward_dense_flops`` / ``forward_kept_flops`` (forward only), ``wax_flops`` and
    ``spatial_kept_flops``: what an executor skipping whole output positions (all input channels of
    the window removed) keeps, forward + backward (equal to ``dense_flops`` when records lack
    ``kept_positions``).
    """
    out = dict(dense_flops=0.0, kept_flops=0.0, forward_dense_flops=0.0, forward_kept_flops=0.0, wax_flops=0.0,
               spatial_kept_flops=0.0)
    for rec in trace:  # counts may be 0-d device tensors: accumulate first, read once at the end
        if isinstance(rec, WaxRecord):
            out["wax_flops"] = out["wax_flops"] + rec.overhead_flops
        elif isinstance(rec, ConvRecord):
            per = triple_flops(rec.kernel_size, rec.out_channels, rec.groups)
            passes = 1 + int(rec.weight_grad) + int(rec.input_grad)
            out["forward_dense_flops"] += float(per * rec.dense_triples)
            out["forward_kept_flops"] = out["forward_kept_flops"] + per * rec.active_triples
            out["dense_flops"] += float(per * rec.dense_triples * passes)
            out["kept_flops"] = out["kept_flops"] + per * passes * rec.active_triples
            if rec.kept_positions is None:
                out["spatial_kept_flops"] += float(per * rec.dense_triples * passes)
            else:
                out["spatial_kept_flops"] = out["spatial_kept_flops"] + per * passes * rec.in_channels * rec.kept_positions
    return {k: float(v) for k, v in out.items()}


def dense_model_flops(model: nn.Module, input_shape: Sequence[int], backward: bool = True) -> float:
    """Dense FLOPs of ``model(x)`` (and its backward) for an input of ``input_shape`` (B, C, H, W).

    Shapes come from one forward of a single zero image (hooks on every ``Conv2d`` / ``Linear``);
    the count is linear in the batch. Backward adds grad-weight for every layer whose weight requires
    grad and grad-input for every layer except those fed directly by the image (its input needs no
    grad). Bias additions are not counted (as in ``FlopCounterMode``).
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (B, C, H, W), got {tuple(input_shape)}")
    batch = int(input_shape[0])
    x = torch.zeros(1, *input_shape[1:], device=next(model.parameters()).device)
    total = [0.0]

    def hook(mod, inputs, output):
        inp = inputs[0]
        if isinstance(mod, nn.Conv2d):
            per = triple_flops(mod.kernel_size, mod.out_channels, mod.groups)
            fwd = per * inp.shape[1] * output.shape[-2] * output.shape[-1]
        else:
            fwd = 2 * mod.in_features * mod.out_features * (inp.numel() // inp.shape[-1])
        passes = 1
        if backward:
            passes += int(mod.weight.requires_grad) + int(inp is not x)
        total[0] += float(fwd * passes)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()  # no BatchNorm running-stat updates from the probe
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0] * batch
