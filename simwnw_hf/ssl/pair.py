"""Encode the two views of a batch, letting a pruning-aware encoder see both at once.

Every SSL framework sends its views through :func:`encode_pair`. A plain timm backbone encodes each
view on its own (separate calls, so BatchNorm statistics stay per view as in the SimSiam/BYOL
reference code). An encoder that implements ``forward_pair`` (SimWnW ResNets, token-pruning ViTs)
receives both views and their crop/flip geometry together, because similarity between the views is
what it prunes on, and returns what it saved in a stats dict.

Contract of ``forward_pair(x1, x2, g1, g2) -> (f1, f2, stats)``:
  * ``x1``/``x2``: normalised views (B, C, H, W), normalised with the encoder's ``pretrained_cfg``
    mean/std (the trainer guarantees it), so the encoder can recover [0, 1] pixels for PSNR;
  * ``f1``/``f2``: pooled pre-logits features (B, num_features), as ``encoder(x)`` with ``num_classes=0``;
  * ``stats``: floats for this call, summed by the caller over calls of a step:
    ``dense_flops`` / ``kept_flops`` (backbone FLOPs for both views without / with pruning, forward plus
    backward when grad is enabled), ``overhead_flops`` (matching/PSNR work), and the method's own
    ratios (``removal_ratio`` or ``kept_token_ratio``) weighted by ``pairs`` (number of image pairs).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn

from simwnw_hf.data.geometry import Geometry

PairStats = Dict[str, float]

RATIO_KEYS = ("removal_ratio", "kept_token_ratio")


def supports_pair_pruning(encoder: nn.Module) -> bool:
    """True when the encoder has pruning configured and would prune a pair of views."""
    return callable(getattr(encoder, "forward_pair", None)) and bool(getattr(encoder, "pair_pruning_enabled", False))


def encode_pair(encoder: nn.Module, x1: torch.Tensor, x2: torch.Tensor,
                g1: Geometry | None = None, g2: Geometry | None = None,
                prune: bool = True) -> Tuple[torch.Tensor, torch.Tensor, PairStats]:
    """Features of both views; pruning happens only when asked for and the encoder supports it."""
    if prune and supports_pair_pruning(encoder):
        if g1 is None or g2 is None:
            raise ValueError("pair pruning needs the crop/flip geometry of both views; "
                             "build the dataset with TwoViewTransform (it records it)")
        return encoder.forward_pair(x1, x2, g1, g2)
    return encoder(x1), encoder(x2), {}


def merge_stats(total: PairStats, new: PairStats) -> PairStats:
    """Sum stats of several encoder calls (ratios arrive pre-weighted by ``pairs``)."""
    for key, value in new.items():
        total[key] = total.get(key, 0.0) + float(value)
    return total


def finalize_stats(total: PairStats) -> PairStats:
    """Turn pair-weighted ratio sums into means."""
    out = dict(total)
    pairs = out.pop("pairs", 0.0)
    for key in RATIO_KEYS:
        if key in out:
            out[key] = out[key] / pairs if pairs else 0.0
    return out
