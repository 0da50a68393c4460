"""Encode the two views of a batch: a plan once per step, then a forward per encoder.

Every SSL framework sends its two (global) views through this module, and only through it:

    plan = plan_pair(backbone, x1, x2, g1, g2, prune, made=loader_plan(batch))  # once per step
    f1, f2, stats = encode_pair(backbone, x1, x2, plan)         # online encoder
    t1, t2, t_stats = encode_pair(momentum_backbone, x1, x2, plan)  # momentum encoder, same plan
    step_stats = plan_stats(plan) + stats + t_stats             # matching overhead counted once

A plain timm backbone (or a pruning-aware one with pruning off, or ``prune=False``) gets ``plan=None``
and encodes each view on its own (separate calls, so BatchNorm statistics stay per view as in the
SimSiam/BYOL reference code). A pruning-aware encoder implements the contract of docs/DESIGN.md
("Pair pruning contract"):

  * ``configure_pair_pruning(settings)`` takes a :mod:`simwnw_hf.pruning.settings` object and sets
    ``pair_pruning_enabled``; ``pair_settings`` holds the resolved settings;
  * ``plan_pair(x1, x2, g1, g2) -> PairPlan``: what to remove (matching runs here, without gradient);
  * ``pair_planner()``: the same computation as a picklable value (or None when the plan needs no
    pixels), so the DataLoader can make the plan in its workers (:mod:`simwnw_hf.ssl.loader_plan`);
  * ``forward_pair(x1, x2, plan) -> (f1, f2, PairStats)``: pooled pre-logits features of both views,
    and the FLOPs it ran; ``plan=None`` runs both views dense through the same path;
  * ``set_progress(p)`` when a method follows training progress (SimPrune's window).

``x1``/``x2`` are normalised with the encoder's ``pretrained_cfg`` mean/std (the trainer guarantees it),
so the encoder can recover [0, 1] pixels for PSNR. Features are ``forward_head(forward_features(x),
pre_logits=True)`` on both the dense and the pair path, whatever ``num_classes`` the backbone has.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Tuple

import torch
import torch.nn as nn

from simwnw_hf.data.geometry import Geometry
from simwnw_hf.pruning.stats import PairPlan, PairStats

from .loader_plan import LoaderPlan

__all__ = ["PairPlan", "PairStats", "supports_pair_pruning", "pair_planner", "plan_pair", "plan_stats", "encode_pair",
           "encode_view"]


def supports_pair_pruning(encoder: nn.Module) -> bool:
    """True when the encoder has pruning configured and would prune a pair of views."""
    return callable(getattr(encoder, "forward_pair", None)) and bool(getattr(encoder, "pair_pruning_enabled", False))


def pair_planner(encoder: nn.Module):
    """The encoder's ``pair_planner()`` (what its ``plan_pair`` computes, as a picklable value), or None
    when it has none or its pruning plans nothing from pixels."""
    return encoder.pair_planner() if callable(getattr(encoder, "pair_planner", None)) else None


def plan_pair(encoder: nn.Module, x1: torch.Tensor, x2: torch.Tensor, g1: Geometry | None = None,
              g2: Geometry | None = None, prune: bool = True, made: Optional[LoaderPlan] = None
              ) -> Optional[PairPlan]:
    """The encoder's plan for this pair, or None (dense) when not asked to prune or it cannot.

    ``made``: the plan the DataLoader already made for this batch (``loader_plan(batch)``,
    :mod:`simwnw_hf.ssl.loader_plan`); used instead of matching again when it was made by a planner
    equal to the encoder's (same settings and normalisation) for this many pairs, refused otherwise.
    A plan made here records the wall time its making took (``PairPlan.seconds``, in the step's stats as
    ``plan_seconds``); one from the DataLoader keeps 0, since it cost the step nothing.
    """
    if not (prune and supports_pair_pruning(encoder)):
        return None
    if made is None:
        started = time.perf_counter()
        plan = encoder.plan_pair(x1, x2, g1, g2)
        return dataclasses.replace(plan, seconds=time.perf_counter() - started)
    planner = pair_planner(encoder)
    if made.planner != planner:
        raise ValueError(f"the batch's pair plan was made by {made.planner!r}, but this encoder plans with "
                         f"{planner!r}; build the DataLoader's PlanInLoader from this encoder's pair_planner()")
    if made.plan.pairs != x1.shape[0]:
        raise ValueError(f"the batch's pair plan is for {made.plan.pairs} pairs, the views hold {x1.shape[0]}")
    return made.plan


def plan_stats(plan: Optional[PairPlan]) -> PairStats:
    """The cost of making ``plan`` (add it once per step); empty for a dense step."""
    return plan.stats if plan is not None else PairStats()


def encode_view(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logits features of one view (timm: ``forward_head(forward_features(x), pre_logits=True)``)."""
    if callable(getattr(encoder, "forward_head", None)) and callable(getattr(encoder, "forward_features", None)):
        return encoder.forward_head(encoder.forward_features(x), pre_logits=True)
    return encoder(x)


def encode_pair(encoder: nn.Module, x1: torch.Tensor, x2: torch.Tensor,
                plan: Optional[PairPlan] = None) -> Tuple[torch.Tensor, torch.Tensor, PairStats]:
    """Features of both views: ``forward_pair`` with the plan, or two dense calls when ``plan`` is None."""
    if plan is not None:
        if not callable(getattr(encoder, "forward_pair", None)):
            raise ValueError(f"{type(encoder).__name__} cannot run a pair plan (it has no forward_pair)")
        return encoder.forward_pair(x1, x2, plan)
    return encode_view(encoder, x1), encode_view(encoder, x2), PairStats()
