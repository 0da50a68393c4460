"""DGNet-style channel gates for VICReg dense + gated co-training (seed 002, "Unification").

Source read: KrishnaTarun/Unification ``solo/methods/ResCg/mask.py`` (gate + sampler) and
``solo/methods/ResCg/resnet_gating.py`` (block, FLOPs, losses), CAS-CLab/DGNet ``regularization.py``
(the same budget and bound losses). Nothing is copied; what follows is how that code reads:

* gate per BasicBlock: GAP(block input) -> 1x1 conv C_in -> C_in/4 -> BN -> ReLU -> 1x1 conv -> C_out,
  no biases (``bias=-1`` there disables it); one gate value per output channel of conv1, multiplied in
  after conv1 + BN + ReLU, so conv2 sees only the active channels;
* sampler: training adds logistic noise ``log(u + 1e-8) - log(1 - u + 1e-8)``, takes
  ``sigmoid(logits / (2/3))`` and thresholds at 0.5 with a straight-through gradient; evaluation is
  ``logits >= 0`` (no noise);
* FLOPs per image of a block: conv1 ``9 * c * C_in * H * W``, conv2 ``9 * c * C_out * H * W`` (c active
  channels, H x W the block's output map), the downsample dense, plus the gate's two 1x1 convs; the
  budget ratio adds the stem conv to numerator and denominator (their ``flops_conv1``), the fc is 0;
* budget loss ``lambda * (F_real / F_full - t_d)^2`` with F_real the batch mean, lambda = 5;
* bound loss (DGNet ``get_bloss_basic``): per gated layer the density ``d_l`` = batch mean of
  ``sum(mask) / C_out``; target ``s = sqrt(t_d)``; ``gamma * (mean relu(p*s - d_l)^2 +
  mean relu(d_l - 1 + p - p*s)^2)``, gamma = 1, ``p = exp(-0.02 * epoch)`` (their ``ExpAnnealing``
  with T_ini = 0, eta 1 -> 0, alpha = 0.02): at p = 1 every layer is held at s, as p -> 0 the bounds
  open to [0, 1].

Those counts are MACs there; here everything is FLOPs (x2), which leaves every ratio unchanged.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "GATE_TEMPERATURE", "logistic_noise", "sample_gate", "budget_loss", "bound_loss", "anneal_p",
    "gate_flops", "block_flops", "ChannelGate",
]

GATE_TEMPERATURE = 2.0 / 3.0


def logistic_noise(like: torch.Tensor, generator: Optional[torch.Generator] = None, eps: float = 1e-8) -> torch.Tensor:
    """``log u - log(1 - u)``, u ~ U(0, 1): the difference of two Gumbels (binary Gumbel-softmax)."""
    u = torch.rand_like(like, generator=generator)  # rand_like, not rand(shape): traceable by torch.fx
    return torch.log(u + eps) - torch.log(1 - u + eps)


def sample_gate(logits: torch.Tensor, training: bool, temperature: float = GATE_TEMPERATURE,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Hard 0/1 gates with the value of the threshold and (training) the gradient of the sigmoid.

    Training: ``soft = sigmoid((logits + noise) / temperature)``, value ``soft >= 0.5``, gradient
    d soft / d logits (straight-through). ``hard + (soft - soft.detach())`` keeps the value exactly 0/1.
    Evaluation: ``logits >= 0``, no gradient path.
    """
    if not training:
        return (logits >= 0).to(logits.dtype)
    if noise is None:
        noise = logistic_noise(logits)
    soft = torch.sigmoid((logits + noise) / temperature)
    hard = (soft >= 0.5).to(logits.dtype)
    return hard + (soft - soft.detach())


def budget_loss(flops_real: torch.Tensor, flops_full: float, target: float, lam: float = 5.0) -> torch.Tensor:
    """``lam * (flops_real / flops_full - target)^2``; ``flops_real`` differentiable through the gates."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target (kept FLOPs fraction t_d) must be in (0, 1], got {target}")
    return lam * (flops_real / flops_full - target) ** 2


def bound_loss(densities: torch.Tensor, target: float, p: float, gamma: float = 1.0) -> torch.Tensor:
    """DGNet's per-layer bound loss on channel densities ``(L,)`` (see module docstring)."""
    s = math.sqrt(target)
    lower = F.relu(p * s - densities) ** 2
    upper = F.relu(densities - 1 + p - p * s) ** 2
    return gamma * (lower.mean() + upper.mean())


def anneal_p(epoch: float, alpha: float = 0.02) -> float:
    """``exp(-alpha * epoch)``: the bound loss's tightness, 1 at epoch 0."""
    return math.exp(-alpha * epoch)


def gate_flops(in_channels: int, out_channels: int, reduction: int = 4) -> float:
    """FLOPs of one image through a gate's two 1x1 convs on the pooled 1x1 map (GAP not counted)."""
    mid = in_channels // reduction
    return 2.0 * (in_channels * mid + mid * out_channels)


def block_flops(active: torch.Tensor, in_channels: int, planes: int, out_hw: Sequence[int],
                downsample: bool, kernel: int = 3) -> torch.Tensor:
    """Forward FLOPs per image of a gated BasicBlock with ``active`` channels (tensor, any shape).

    conv1 computes only the active output channels, conv2 reads only the active input channels, the
    1x1 downsample is dense. Differentiable in ``active`` (the budget loss's gradient path).
    """
    hw = float(out_hw[0] * out_hw[1])
    k2 = float(kernel * kernel)
    conv1 = 2.0 * k2 * in_channels * active * hw
    conv2 = 2.0 * k2 * active * planes * hw
    ds = 2.0 * in_channels * planes * hw if downsample else 0.0
    return conv1 + conv2 + ds


class ChannelGate(nn.Module):
    """Squeeze-excitation gate network + sampler: block input ``(N, C_in, H, W)`` -> mask ``(N, C_out)``."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4,
                 temperature: float = GATE_TEMPERATURE, norm_layer=nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}  # timm's factory kwargs (device="meta" included)
        if in_channels // reduction < 1:
            raise ValueError(f"gate reduction {reduction} leaves no channels of {in_channels}")
        mid = in_channels // reduction
        self.in_channels, self.out_channels, self.reduction = in_channels, out_channels, reduction
        self.temperature = temperature
        self.fc1 = nn.Conv2d(in_channels, mid, 1, bias=False, **dd)
        self.bn = norm_layer(mid, **dd)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(mid, out_channels, 1, bias=False, **dd)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean((2, 3), keepdim=True)
        return self.fc2(self.act(self.bn(self.fc1(z)))).flatten(1)

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        return sample_gate(self.logits(x), self.training, self.temperature, noise)

    def flops(self) -> float:
        return gate_flops(self.in_channels, self.out_channels, self.reduction)
