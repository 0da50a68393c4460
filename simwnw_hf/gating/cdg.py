"""Contrastive Dual Gating (CDG) and Structured CDG (SCDG) convolutions (seed 003, on CGNet).

Sources: the CDG poster (``shared/seeds/003_*.txt``; no public code) and CGNet, read in
cornell-zhang/dnn-gating ``utils/cg_utils.py`` (``CGConv2d``, ``SparseGreaterThan``) and
``cg-cifar10.py`` (threshold loss, ``--use_group --sparse_bp -pt 4 -gi 0 -gt 1 --alpha 2``). A conv's
output is the base path's partial sum plus the conditional path's, the latter kept only where the gate
is on::

    Y_b = conv(X, W * B)          B: (C_out, C_in) base-path mask, 1/p of each row's input channels
    Y_c = conv(X, W * (1 - B))
    M   = step(sigmoid(alpha * (normalize(S(Y_b)) - tau)) - 1/2)      hard 0/1
    out = Y_b + M * Y_c           (= CGNet's ``Y * d + Y_p * (1 - d)``)

Choices the poster leaves open, and how they are made here (also docs/GATING.md):

1. *normalize*: BatchNorm without affine on the saliency (CGNet's ``self.bn``), one per contrastive
   branch, since the two branches' base paths differ and so do their statistics.
2. *tau*: one learnable threshold per output channel (per channel group for SCDG), shared by both
   branches, initialised at 0 (CGNet ``-gi 0``); :func:`threshold_loss` is CGNet's
   ``1e-4 * sum((tau - 1)^2)`` pull towards the target threshold 1 (``-gt 1``), which raises sparsity.
3. *alpha*: 2 (CGNet's slope of the sigmoid, only its gradient matters).
4. *straight-through*: CGNet's ``sparse_bp`` variant: forward value ``M``, gradient of the sigmoid
   passed only where ``M = 1``. So the conditional path is needed only where the gate is on, in the
   forward and in the backward (the basis of the training FLOPs count).
5. *diagonal / inverse diagonal*: input and output channels are split into p equal groups (p = 4, the
   poster's "# of gating groups"). Branch 0's base path for output group g is input group g (the block
   diagonal of the (out group, in group) grid, CGNet's ``use_group``); branch 1's is input group
   ``p - 1 - g`` (the anti-diagonal). With p even the two never share a cell, so for every output
   channel the branches' base paths read disjoint input channels. Odd p is refused (the centre cell
   would be shared).
6. *SCDG groups*: "spatial feature group size 8 x 1 x 1" read as 8 consecutive output channels x 1 x 1
   position: the base output is averaged over each group of 8 channels (``S`` = AvgPool over channels)
   before the normalisation, and one decision covers the 8 channels at a position (8x fewer indices).
7. *which layers*: every 3x3 conv inside the residual blocks (:func:`convert_cdg`); the stem (3 input
   channels) and the 1x1 downsamples stay dense, as in CGNet.
8. *inference*: one branch (0 unless set) runs; its FLOPs are the reported inference FLOPs.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn

from simwnw_hf.simwnw.flops import dense_model_flops

from .stats import GatingStats, conv_flops

__all__ = ["base_path_mask", "sparse_step_ste", "channel_group_mean", "CDGConv2d", "convert_cdg",
           "cdg_branch", "forward_branch", "threshold_loss", "cdg_stats"]


def base_path_mask(in_channels: int, out_channels: int, groups: int, branch: int) -> torch.Tensor:
    """``(C_out, C_in)`` bool: which input channels feed each output channel's base path."""
    if groups < 2 or groups % 2:
        raise ValueError(f"CDG needs an even number of channel groups >= 2, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"channels ({in_channels} in, {out_channels} out) must split into {groups} groups")
    if branch not in (0, 1):
        raise ValueError(f"branch must be 0 or 1, got {branch}")
    ig, og = in_channels // groups, out_channels // groups
    mask = torch.zeros(out_channels, in_channels, dtype=torch.bool)
    for g in range(groups):
        src = g if branch == 0 else groups - 1 - g
        mask[g * og:(g + 1) * og, src * ig:(src + 1) * ig] = True
    return mask


def sparse_step_ste(s: torch.Tensor) -> torch.Tensor:
    """Value ``s > 1/2`` (0/1); gradient ``ds`` where the step is 1, 0 elsewhere (CGNet sparse_bp)."""
    hard = (s > 0.5).to(s.dtype)
    return hard + (s - s.detach()) * hard


def channel_group_mean(y: torch.Tensor, group: int) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C / group, H, W)``: mean over consecutive groups of ``group`` channels."""
    n, c, h, w = y.shape
    if c % group:
        raise ValueError(f"{c} channels do not split into groups of {group}")
    return y.view(n, c // group, group, h, w).mean(2)


class CDGConv2d(nn.Conv2d):
    """A conv with a dense base path and a gated conditional path, one mask per contrastive branch.

    ``forward(x, branch)`` runs branch 0 or 1 (None: ``self.branch``). ``gating_enabled = False`` makes it
    a plain conv (``F.conv2d``, bit-exact). The last forward of each branch leaves its conditional-path
    density (fraction of kept output positions) in ``self.density[branch]`` for :func:`cdg_stats`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, padding_mode: str = "zeros", *, gate_groups: int = 4,
                 structured_group: Optional[int] = None, alpha: float = 2.0, tau_init: float = 0.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        if groups != 1:
            raise ValueError("CDGConv2d supports groups=1 convolutions only")
        if structured_group is not None and out_channels % structured_group:
            raise ValueError(f"{out_channels} output channels do not split into SCDG groups of {structured_group}")
        self.gate_groups, self.structured_group, self.alpha = gate_groups, structured_group, alpha
        n_gate = out_channels // (structured_group or 1)
        self.tau = nn.Parameter(torch.full((1, n_gate, 1, 1), float(tau_init)))
        self.norm = nn.ModuleList([nn.BatchNorm2d(n_gate, affine=False) for _ in range(2)])
        masks = torch.stack([base_path_mask(in_channels, out_channels, gate_groups, b) for b in (0, 1)])
        self.register_buffer("base_mask", masks, persistent=False)
        self.branch = 0
        self.gating_enabled = True
        self.density: Dict[int, torch.Tensor] = {}
        self.out_hw = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> "CDGConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, **kwargs)
        new = new.to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def gate(self, y_base: torch.Tensor, branch: int) -> torch.Tensor:
        """Hard mask ``(N, C_out, H, W)`` from the base output."""
        sal = y_base if self.structured_group is None else channel_group_mean(y_base, self.structured_group)
        m = sparse_step_ste(torch.sigmoid(self.alpha * (self.norm[branch](sal) - self.tau)))
        if self.structured_group is not None:
            m = m.repeat_interleave(self.structured_group, dim=1)
        return m

    def forward(self, x: torch.Tensor, branch: Optional[int] = None) -> torch.Tensor:
        if not self.gating_enabled:
            return super().forward(x)
        b = self.branch if branch is None else int(branch)
        if b not in (0, 1):
            raise ValueError(f"branch must be 0 or 1, got {b}")
        wb = self.weight * self.base_mask[b][:, :, None, None].to(self.weight.dtype)
        y_base = self._conv_forward(x, wb, self.bias)
        y_cond = self._conv_forward(x, self.weight - wb, None)
        m = self.gate(y_base, b)
        self.density[b] = m.detach().mean()
        self.out_hw = tuple(y_base.shape[-2:])
        return y_base + m * y_cond


def convert_cdg(model: nn.Module, gate_groups: int = 4, structured_group: Optional[int] = None,
                alpha: float = 2.0, tau_init: float = 0.0) -> List[str]:
    """Replace every 3x3 conv inside ``model``'s residual stages (``layer*``) by a ``CDGConv2d``, in place.

    Weights are copied, so the converted model with gating disabled is the original. Returns the names.
    ``structured_group=8`` gives SCDG.
    """
    names = []
    for name, mod in list(model.named_modules()):
        if (isinstance(mod, nn.Conv2d) and not isinstance(mod, CDGConv2d) and tuple(mod.kernel_size) == (3, 3)
                and name.startswith("layer") and mod.groups == 1):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], CDGConv2d.from_conv(
                mod, gate_groups=gate_groups, structured_group=structured_group, alpha=alpha, tau_init=tau_init))
            names.append(name)
    if not names:
        raise ValueError("convert_cdg found no 3x3 convs under layer1..layer4; it expects a timm ResNet")
    return names


def _cdg_convs(model: nn.Module) -> List[CDGConv2d]:
    return [m for m in model.modules() if isinstance(m, CDGConv2d)]


@contextlib.contextmanager
def cdg_branch(model: nn.Module, branch: int) -> Iterator[nn.Module]:
    """Run every ``CDGConv2d`` of ``model`` on ``branch`` inside the block (restored after)."""
    convs = _cdg_convs(model)
    old = [c.branch for c in convs]
    for c in convs:
        c.branch = int(branch)
    try:
        yield model
    finally:
        for c, b in zip(convs, old):
            c.branch = b


def forward_branch(model: nn.Module, x: torch.Tensor, branch: int) -> torch.Tensor:
    """``model.forward_features(x)`` with the CDG masks of contrastive branch ``branch`` (0 or 1)."""
    with cdg_branch(model, branch):
        return model.forward_features(x)


def threshold_loss(model: nn.Module, target: float = 1.0, weight: float = 1e-4) -> torch.Tensor:
    """CGNet's ``weight * sum((tau - target)^2)`` over every CDG threshold."""
    taus = [c.tau for c in _cdg_convs(model)]
    return weight * sum(((t - target) ** 2).sum() for t in taus)


def cdg_stats(model: nn.Module, input_hw: Sequence[int], branches: Sequence[int] = (0, 1)) -> GatingStats:
    """FLOPs per image (mean over ``branches``' last forwards) vs the dense model, and conditional sparsity.

    Dense counts come from ``simwnw.flops.dense_model_flops`` (the whole model: stem, downsamples, fc).
    Per CDG conv, the conditional path's share ``(C_in - C_in/p) / C_in`` of the conv is skipped where the
    mask is off, in the forward and (sparse straight-through) in both backward passes.
    """
    convs = _cdg_convs(model)
    if not convs:
        raise ValueError("cdg_stats: the model has no CDGConv2d (call convert_cdg first)")
    records = []
    for c in convs:
        have = [b for b in branches if b in c.density]
        if not have or c.out_hw is None:
            raise ValueError("cdg_stats: run a forward of each branch first")
        records.append((c, sum(float(c.density[b]) for b in have) / len(have), c.out_hw))
    key = (int(input_hw[0]), int(input_hw[1]))
    cache = model.__dict__.setdefault("_cdg_dense_flops", {})
    if key not in cache:
        shape = (1, 3 if not hasattr(model, "in_chans") else model.in_chans, *key)
        # counted on a copy with gating off, so the counting forward leaves no trace in BN statistics
        twin = copy.deepcopy(model).eval()
        for c in _cdg_convs(twin):
            c.gating_enabled = False
        cache[key] = (dense_model_flops(twin, shape, backward=False), dense_model_flops(twin, shape, backward=True))
    fwd_dense, train_dense = cache[key]
    skipped_fwd = cond_total = cond_kept = 0.0
    extra = {}
    for i, (c, dens, hw) in enumerate(records):
        cin_cond = c.in_channels - c.in_channels // c.gate_groups
        cond = conv_flops(*c.kernel_size, cin_cond, c.out_channels, hw[0] * hw[1])
        skipped_fwd += (1 - dens) * cond
        cond_total += cond
        cond_kept += dens * cond
        extra[f"density_{i}"] = dens
    extra["index_reduction"] = float(records[0][0].structured_group or 1)
    method = "scdg" if records[0][0].structured_group else "cdg"
    return GatingStats(method, fwd_dense, fwd_dense - skipped_fwd, train_dense, train_dense - 3 * skipped_fwd,
                       1 - cond_kept / cond_total, 0.0, extra)
