"""Momentum (EMA) encoders for BYOL, MoCo and DINO."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def make_momentum_copy(module: nn.Module) -> nn.Module:
    """Frozen deep copy that only ever changes through :func:`update_momentum`."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """``ema = m * ema + (1 - m) * model`` for parameters; buffers (BN stats) are copied."""
    for p, p_ema in zip(model.parameters(), model_ema.parameters()):
        p_ema.mul_(m).add_(p.detach(), alpha=1.0 - m)
    for b, b_ema in zip(model.buffers(), model_ema.buffers()):
        b_ema.copy_(b)


def cosine_schedule(progress: float, start: float, end: float) -> float:
    """Cosine ramp from ``start`` (progress 0) to ``end`` (progress 1), e.g. BYOL's 0.996 -> 1."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
