"""Plans made in the DataLoader: block matching next to the augmentation, off the training step.

A SimWnW plan depends on the two views' pixels, their geometry and the settings, never on the weights
(:mod:`simwnw_hf.pruning.planners`). :class:`PlanInLoader` wraps a collate function so that each
batch carries the plan its encoder would make (``batch["pair_plan"]``, a :class:`LoaderPlan`). With
``num_workers > 0`` the matching then runs in the worker processes while the previous step trains, and
the step itself no longer pays it: 1.0-1.4% of a dense ResNet-50 step at 224 px on one CPU thread
(``benchmarks/results/matching_overhead.md``). The work is not gone: the FLOPs stay in the plan's
``overhead_flops`` and the worker's CPU seconds in ``seconds`` (the trainer sums them as
``loader_match_s``).

The plan is the same bits as ``plan_pair`` in the step (same function, same inputs); an encoder uses
one only when its own planner equals the one that made it (:func:`simwnw_hf.ssl.pair.plan_pair`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from simwnw_hf.pruning.stats import PairPlan

from .base import two_views

__all__ = ["LoaderPlan", "PlanInLoader", "loader_plan"]

BATCH_KEY = "pair_plan"


def _to(value, device, non_blocking: bool):
    """``value`` with every tensor, also inside (frozen) dataclasses, moved to ``device``."""
    if torch.is_tensor(value):
        return value.to(device, non_blocking=non_blocking)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        moved = {k: _to(v, device, non_blocking) for k, v in fields.items()}
        changed = {k: v for k, v in moved.items() if v is not fields[k]}
        return dataclasses.replace(value, **changed) if changed else value   # settings pass unchanged
    return value


@dataclass(frozen=True)
class LoaderPlan:
    """A batch's plan, the planner that made it and the thread CPU seconds the making took."""

    plan: PairPlan
    planner: Any
    seconds: float

    def to(self, device, non_blocking: bool = False) -> "LoaderPlan":
        """Moved with the batch (Accelerate's ``send_to_device`` calls ``.to`` on what it does not know)."""
        return LoaderPlan(_to(self.plan, device, non_blocking), self.planner, self.seconds)


class PlanInLoader:
    """Collate wrapper adding ``batch["pair_plan"]``: ``planner`` run on the batch's two (global) views.

    ``collate``: the inner collate (e.g. :class:`~simwnw_hf.data.loader.SkipUnreadable`); a batch it
    returns without views (every image unreadable) gets no plan. ``planner``: an encoder's
    ``pair_planner()`` (picklable, so it reaches worker processes).
    """

    def __init__(self, collate: Callable, planner: Callable):
        self.collate, self.planner = collate, planner
        from simwnw_hf.pruning.planners import BlockMatchPlanner, TokenMatchPlanner
        if isinstance(planner, (BlockMatchPlanner, TokenMatchPlanner)):
            # load the compiled matcher here, before DataLoader workers fork (else each pays ~1.4 s CPU)
            from simwnw_hf.simwnw.block_matching import warm_up
            warm_up()

    def __call__(self, samples):
        batch = self.collate(samples)
        if "views" in batch:
            x1, x2, g1, g2 = two_views(batch)
            started = time.thread_time()
            plan = self.planner(x1, x2, g1, g2)
            batch[BATCH_KEY] = LoaderPlan(plan, self.planner, time.thread_time() - started)
        return batch


def loader_plan(batch) -> Optional[LoaderPlan]:
    """The plan the DataLoader made for ``batch``, or None (the step makes it)."""
    return batch.get(BATCH_KEY) if isinstance(batch, dict) else None
