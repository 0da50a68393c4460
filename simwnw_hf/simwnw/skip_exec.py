"""Skipping 1x1 convolutions at removed positions, chosen per layer by a measured cost model.

The lean executor (``lean_exec``) runs every convolution densely on maps that are zero where
removed, so it can never be faster than dense. This module really skips removed work where that
pays on the machine at hand:

* :func:`skip_conv1x1` computes a 1x1 convolution at the kept output positions only: the kept
  rows of the (position, channel) matrix are gathered, multiplied with the weight, and scattered
  into a zero map. Autograd then skips the same rows in backward (grad-input and grad-weight are
  matrix products over kept rows only). Outputs at removed positions are exactly 0, as in the
  reference (a 1x1 window at a removed position holds only zeros; a bias is zeroed there too).
* 3x3 and larger convolutions are not skipped. Gathering tiles with halos (SBNet style) or
  im2col at kept positions was measured slower than dense on this kind of CPU for the layers where
  masks remove much (64 channels at 56x56 or 32x32) until about 60% removal (issue 10).
* :class:`SkipCostModel` decides per layer: for a conv's shape, the batch, the thread count and
  the kept share (rounded up to a tenth), it times dense and skipping forward+backward on random
  data once (a short calibration, a few hundred milliseconds per new case) and caches the answer.
  A layer is skipped only when skipping measured at least ``margin`` faster, so the choice never
  makes a step slower than the lean path by more than timing noise. Layers too small to repay
  the bookkeeping (under ``min_macs`` multiply-adds) and layers keeping more than ``max_kept`` of
  their positions are never calibrated: skipping cannot win there.

The skipping executor (``auto``) is the fused executor with this choice per 1x1 conv
(``models.resnet_pair``); tests hold it equal to the reference (``tests/test_skip_exec.py``).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["skip_conv1x1", "SkipCostModel", "is_skippable_conv"]


def is_skippable_conv(conv: nn.Module) -> bool:
    """A plain 1x1 convolution (any stride, no padding, groups 1): the kind :func:`skip_conv1x1` runs."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and conv.groups == 1
            and tuple(conv.dilation) == (1, 1) and not isinstance(conv.padding, str)
            and tuple(conv.padding) == (0, 0))


def skip_conv1x1(conv: nn.Conv2d, x: torch.Tensor, out_removed: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` computed at kept output positions only; 0 at ``out_removed`` (B, 1, Ho, Wo).

    ``x`` must be zero at removed positions (the lean executor's invariant), so the skipped
    outputs are the dense conv's outputs there (0, or the bias, which the reference zeroes).
    """
    sh, sw = conv.stride
    xs = x[:, :, ::sh, ::sw] if (sh, sw) != (1, 1) else x
    bsz, cin, ho, wo = xs.shape
    cout = conv.out_channels
    keep = (~out_removed).reshape(-1).nonzero().squeeze(1)  # flat (image, position) indices
    rows = xs.permute(0, 2, 3, 1).reshape(bsz * ho * wo, cin).index_select(0, keep)
    out = rows @ conv.weight.view(cout, cin).t()
    if conv.bias is not None:
        out = out + conv.bias
    y = out.new_zeros(bsz * ho * wo, cout).index_copy(0, keep, out)
    return y.view(bsz, ho, wo, cout).permute(0, 3, 1, 2).contiguous()


CaseKey = Tuple[int, int, int, int, int, int, int, int, str]


@dataclass
class SkipCostModel:
    """Per-(layer shape, kept tenth) choice between the dense conv and :func:`skip_conv1x1`.

    ``decisions`` maps a case to ``(dense_ms, skip_ms)`` as measured; :meth:`use_skip` answers from
    it and measures a new case once. One model lives per process (``default_cost_model``); its
    cases are specific to this machine, thread count and dtype.
    """

    margin: float = 0.9  # skip only when it took at most this share of the dense time
    max_kept: float = 0.8  # above this kept share skipping was never faster (benchmarks/results/simwnw_step.md)
    min_macs: float = 5e7  # forward multiply-adds of the dense layer below which skipping never repays
    repeats: int = 3
    decisions: Dict[CaseKey, Tuple[float, float]] = field(default_factory=dict)

    def case(self, conv: nn.Conv2d, x: torch.Tensor, kept: float) -> CaseKey:
        tenth = min(10, max(1, math.ceil(kept * 10 - 1e-9)))
        return (x.shape[0], conv.in_channels, conv.out_channels, x.shape[2], x.shape[3], conv.stride[0],
                torch.get_num_threads(), tenth, str(x.dtype))

    def use_skip(self, conv: nn.Conv2d, x: torch.Tensor, out_removed: torch.Tensor) -> bool:
        if not is_skippable_conv(conv) or out_removed.shape[1] != 1:
            return False
        ho, wo = out_removed.shape[-2:]
        if x.shape[0] * ho * wo * conv.in_channels * conv.out_channels < self.min_macs:
            return False
        kept = 1.0 - float(out_removed.float().mean())
        if kept > self.max_kept:
            return False
        key = self.case(conv, x, kept)
        if key not in self.decisions:
            with torch.enable_grad():  # the choice is for training steps: time forward + backward
                self.decisions[key] = self._measure(conv, x, key[7] / 10)
        dense_ms, skip_ms = self.decisions[key]
        return skip_ms <= self.margin * dense_ms

    def _measure(self, conv: nn.Conv2d, x: torch.Tensor, kept: float) -> Tuple[float, float]:
        """Median forward+backward milliseconds of dense and skipping at ``kept``, interleaved."""
        gen = torch.Generator().manual_seed(0)
        probe = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, bias=False,
                          device=x.device, dtype=x.dtype)
        probe.weight = nn.Parameter(conv.weight.detach().clone())
        bsz, _, h, w = x.shape
        ho, wo = (h - 1) // conv.stride[0] + 1, (w - 1) // conv.stride[1] + 1
        removed = (torch.rand(bsz, 1, ho, wo, generator=gen) >= kept).to(x.device)  # random positions at that share
        up = removed.repeat_interleave(conv.stride[0], 2).repeat_interleave(conv.stride[1], 3)[..., :h, :w]
        data = (torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) * (~up)).detach()
        grad = torch.randn(bsz, conv.out_channels, ho, wo, generator=gen, dtype=x.dtype).to(x.device)

        def sync():  # accelerator kernels run asynchronously: time them to completion
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)

        def run(skip: bool) -> float:
            xi = data.clone().requires_grad_(True)
            sync()
            t0 = time.perf_counter()
            y = skip_conv1x1(probe, xi, removed) if skip else F.conv2d(xi, probe.weight, None, probe.stride)
            y.backward(grad)
            sync()
            return time.perf_counter() - t0

        run(False), run(True)  # warm-up
        dense, skip = [], []
        for _ in range(self.repeats):
            dense.append(run(False))
            skip.append(run(True))
        return 1e3 * statistics.median(dense), 1e3 * statistics.median(skip)


default_cost_model = SkipCostModel()
