"""FLOPs, sparsity and losses of a ``DualGateResNet`` step, from the masks of ``forward_dual``.

Forward (inference) FLOPs follow the authors' analytic count (``dualgate`` module docstring). The
training count is what an executor skipping the off channels can actually skip under the
straight-through gate, per gated block with ``c`` of ``C`` channels on:

* conv1 forward: dense. The gate's gradient ``dL/dm_c = sum(g_c * a_c)`` needs the activation ``a_c``
  of *every* channel, including the ones switched off (and the gated BN's batch statistics see all).
* conv1 grad-input / grad-weight: ``c / C`` (the mask zeroes the gradient of off channels).
* conv2 forward / grad-weight: ``c / C`` (its off input channels are zeros).
* conv2 grad-input: dense (``dL/dm_c`` needs ``g_c`` on off channels too).
* downsample and stem: dense; the stem conv has no grad-input (its input is the image).
* gate convs: all three passes, dense.

The paper's "FLOPs reduction" is the inference count (``forward_ratio``); the VICReg step runs one
view through the gated path and one through the dense path, :func:`pair_step_stats` adds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .dualgate import anneal_p, block_flops, bound_loss, budget_loss
from .stats import GatingStats, conv_flops

__all__ = ["BlockGeometry", "dualgate_geometry", "dualgate_flops_real", "dualgate_losses",
           "dualgate_stats", "pair_step_stats"]


@dataclass(frozen=True)
class BlockGeometry:
    name: str
    in_channels: int
    planes: int
    out_hw: Tuple[int, int]
    downsample: bool
    gate_flops: float


def dualgate_geometry(model: nn.Module, input_hw: Sequence[int]) -> Tuple[float, List[BlockGeometry]]:
    """Stem forward FLOPs per image and each gated block's shapes, for a ``(H, W)`` input (cached)."""
    key = (int(input_hw[0]), int(input_hw[1]))
    cache = model.__dict__.setdefault("_dualgate_geometry", {})
    if key in cache:
        return cache[key]
    shapes: Dict[str, Tuple[int, int]] = {}  # block output map = its conv2 output (forward_dual skips block hooks)
    blocks = dict(model.named_modules())
    names = [n for n, m in blocks.items() if m in set(model.gated_blocks())]
    hooks = [blocks[n].conv2.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[-2:])))
             for n in names]
    stem_hw = []
    hooks.append(model.conv1.register_forward_hook(lambda m, i, o: stem_hw.append(tuple(o.shape[-2:]))))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            # the gated path: the registered model always has it (the dense BN is training-time state)
            model.forward_dual(torch.zeros(1, model.in_chans, *key, device=p.device, dtype=p.dtype), gated=True)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    c1 = model.conv1
    stem = conv_flops(*c1.kernel_size, c1.in_channels, c1.out_channels, stem_hw[0][0] * stem_hw[0][1], c1.groups)
    geo = [BlockGeometry(n, blocks[n].conv1.in_channels, blocks[n].conv1.out_channels, shapes[n],
                         blocks[n].downsample is not None, blocks[n].gate.flops()) for n in names]
    cache[key] = (stem, geo)
    return cache[key]


def dualgate_flops_real(model: nn.Module, masks: Sequence[torch.Tensor], input_hw: Sequence[int]
                        ) -> Tuple[torch.Tensor, float]:
    """Batch-mean forward FLOPs per image of the gated path (differentiable) and of the dense path.

    Both include the stem conv; the real one includes every gate (the budget loss's F_real / F_full).
    """
    stem, geo = dualgate_geometry(model, input_hw)
    if len(masks) != len(geo):
        raise ValueError(f"got {len(masks)} masks for {len(geo)} gated blocks; pass forward_dual(x, gated=True)'s masks")
    real = torch.zeros((), device=masks[0].device) + stem
    full = stem
    for g, m in zip(geo, masks):
        real = real + block_flops(m.sum(1), g.in_channels, g.planes, g.out_hw, g.downsample).mean() + g.gate_flops
        full += float(block_flops(torch.tensor(float(g.planes)), g.in_channels, g.planes, g.out_hw, g.downsample))
    return real, full


def dualgate_losses(model: nn.Module, masks: Sequence[torch.Tensor], input_hw: Sequence[int], target: float,
                    epoch: float, lam: float = 5.0, gamma: float = 1.0, alpha: float = 0.02,
                    p: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(budget_loss, bound_loss)`` of one gated forward; add both to the SSL loss.

    ``p``: the bound loss's tightness; None: the authors' ``anneal_p(epoch, alpha)``
    (``DualGateSettings.bound_p`` gives it for a run-scaled schedule).
    """
    real, full = dualgate_flops_real(model, masks, input_hw)
    densities = torch.stack([m.mean() for m in masks])
    return budget_loss(real, full, target, lam), bound_loss(densities, target, anneal_p(epoch, alpha) if p is None else p, gamma)


@torch.no_grad()
def dualgate_stats(model: nn.Module, masks: Sequence[torch.Tensor], input_hw: Sequence[int]) -> GatingStats:
    """FLOPs per image of one gated forward(+backward) vs the dense path, and channel sparsity."""
    stem, geo = dualgate_geometry(model, input_hw)
    if len(masks) != len(geo):
        raise ValueError(f"got {len(masks)} masks for {len(geo)} gated blocks")
    fwd_dense = fwd_act = stem
    train_dense = train_act = 2 * stem  # forward + grad-weight; no grad-input into the image
    on = total = 0.0
    extra = {}
    for g, m in zip(geo, masks):
        hw = g.out_hw[0] * g.out_hw[1]
        frac = float(m.float().mean())
        conv1 = conv_flops(3, 3, g.in_channels, g.planes, hw)
        conv2 = conv_flops(3, 3, g.planes, g.planes, hw)
        ds = conv_flops(1, 1, g.in_channels, g.planes, hw) if g.downsample else 0.0
        fwd_dense += conv1 + conv2 + ds
        fwd_act += frac * (conv1 + conv2) + ds + g.gate_flops
        train_dense += 3 * (conv1 + conv2 + ds)
        train_act += conv1 * (1 + 2 * frac) + conv2 * (1 + 2 * frac) + 3 * ds + 3 * g.gate_flops
        on += frac * g.planes
        total += g.planes
        extra[f"density_{g.name}"] = frac
    overhead = sum(g.gate_flops for g in geo)
    return GatingStats("dualgate", fwd_dense, fwd_act, train_dense, train_act, 1.0 - on / total, overhead, extra)


def pair_step_stats(gated: GatingStats) -> GatingStats:
    """Per-image FLOPs of a VICReg dual step: one view dense, one view gated, vs two dense views."""
    return GatingStats("dualgate_pair", 2 * gated.forward_dense, gated.forward_dense + gated.forward_actual,
                       2 * gated.train_dense, gated.train_dense + gated.train_actual, gated.sparsity,
                       gated.overhead_flops, dict(gated.extra))
