"""Kept-position BatchNorm as fused kernels: the lean executor's BN forward and backward, compiled.

Why: after the lean formulation, the SimWnW step's extra time over dense was mostly memory-bound
elementwise passes, and kept BatchNorm was the largest of them (``benchmarks/results/simwnw_step.md``,
"fused kernels"). In eager PyTorch its forward is six passes over the activation (sum, square, sum,
affine, mask, ReLU) and its backward five (ReLU gate, two reductions, two multiply-adds, mask); the
native BatchNorm it replaces fuses more. Written as one expression each and compiled by Inductor
(``torch.compile(dynamic=True)``), each becomes one reduction pass and one elementwise pass: about
half the time of native BatchNorm + ReLU on this CPU, for the same numbers (1e-14 relative in float64).

The compiled functions are pure (no in-place writes, no autograd): ``lean_exec._KeptBatchNorm``
calls them inside its forward and backward. Where compiling fails (no C++ compiler, an unsupported
device or dtype), :class:`FusedKernel` says so in one warning and uses the eager kernels from then
on: the same numbers, the lean executor's speed.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

__all__ = ["kept_bn_forward", "kept_bn_backward", "FusedKernel"]


def kept_bn_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor,
                    n: torch.Tensor, eps: float, relu: bool):
    """Training BatchNorm over the kept positions of ``x`` (zero where removed), masked, ReLU if ``relu``.

    ``keep``: (B, 1, H, W) float keep map; ``n``: its sum, at least 1. Sums over all positions equal
    sums over kept ones because removed positions are zero. Returns ``(y, mean, var, invstd)``
    (``var`` biased, as BatchNorm normalises with).
    """
    c = x.shape[1]
    mean = x.sum(dim=(0, 2, 3)) / n
    var = ((x * x).sum(dim=(0, 2, 3)) / n - mean * mean).clamp_min(0)
    invstd = torch.rsqrt(var + eps)
    scale = invstd * weight
    shift = bias - mean * scale
    y = (x * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)) * keep
    if relu:
        y = y.clamp_min(0)
    return y, mean, var, invstd


def kept_bn_backward(gy: torch.Tensor, out: Optional[torch.Tensor], x: torch.Tensor, keep: torch.Tensor,
                     mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor, n: torch.Tensor, relu: bool):
    """Gradients of :func:`kept_bn_forward`: ``(dx, dweight, dbias)``, ``dx`` zero where removed.

    ``out``: the forward's output (ReLU's gate, after any in-place zeroing by
    ``lean_exec.zero_relu_output_``); unused without ``relu``. ``dx = w*invstd * (g - sum g / n -
    xhat * sum(g*xhat) / n)`` at kept positions, ``g`` the output gradient there.
    """
    c = x.shape[1]
    g = torch.where(out <= 0, 0.0, gy) if relu else gy * keep  # ReLU's threshold_backward; y > 0 only where kept
    sum_g = g.sum(dim=(0, 2, 3))
    sum_gxhat = ((g * x).sum(dim=(0, 2, 3)) - mean * sum_g) * invstd
    w = invstd * weight
    c2 = -w * invstd * sum_gxhat / n
    c3 = -w * sum_g / n - c2 * mean
    dx = (g * w.view(1, c, 1, 1) + x * c2.view(1, c, 1, 1) + c3.view(1, c, 1, 1)) * keep
    return dx, sum_gxhat, sum_g


class FusedKernel:
    """``fn`` compiled by Inductor with dynamic shapes on first use; ``fallback`` for good if that fails.

    Arguments are passed detached: parameters would make Dynamo treat their shapes as static (one
    graph per channel count). ``fallback`` takes the same arguments and returns the same values.
    """

    def __init__(self, fn: Callable, fallback: Callable, name: str):
        self.fn, self.fallback, self.name = fn, fallback, name
        self._compiled: Optional[Callable] = None
        self.failed: Optional[str] = None

    def __call__(self, *args):
        if self.failed is None:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self.fn, dynamic=True)
                return self._compiled(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
            except Exception as err:  # noqa: BLE001  (any compiler failure: fall back, never fail the step)
                self.failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                warnings.warn(f"SimWnW fused kernel {self.name} could not be compiled ({self.failed[:200]}); "
                              "using the eager lean kernels (same numbers, slower)", RuntimeWarning, stacklevel=2)
        return self.fallback(*args)

