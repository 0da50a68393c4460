"""Planners: what an encoder's ``plan_pair`` computes, as small picklable values apart from the model.

A SimWnW plan depends on the two views' pixels, their crop/flip geometry and the settings, never on
weights. Holding that computation in a frozen dataclass (settings + the normalisation the views went
through) lets the same code run in the encoder's ``plan_pair`` and in a DataLoader worker process
(:mod:`simwnw_hf.ssl.loader_plan`), and makes "was this plan made the way this encoder would make it?"
an equality test between two planners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from simwnw_hf.data.geometry import Geometry
from simwnw_hf.simwnw.block_matching import match_blocks, match_pixels

from .settings import SimWnWSettings, TokenPruningSettings
from .stats import PairPlan

__all__ = ["BlockMatchPlanner", "TokenMatchPlanner"]


def _floats(values) -> Tuple[float, ...]:
    """A ``pretrained_cfg`` mean/std (list, tuple, numpy) as a tuple of floats: hashable, comparable, picklable."""
    return tuple(float(v) for v in values)


def _pixels(x: torch.Tensor, mean: Tuple[float, ...], std: Tuple[float, ...]) -> torch.Tensor:
    """Normalised views -> [0, 1] pixels (PSNR, MAX_I = 1), laid out as the matcher reads them."""
    if len(mean) != x.shape[1]:
        raise ValueError(f"pretrained_cfg mean has {len(mean)} channels, the views have {x.shape[1]}")
    return match_pixels(x.detach(), mean, std)


@dataclass(frozen=True)
class BlockMatchPlanner:
    """SimWnW on CNNs: block matching of the two views (paper §4.1) with ``settings``.

    ``settings`` may leave the block size and search window open; they are resolved for the view size
    of each call and the plan records the resolved ones. ``mean``/``std``: the views' normalisation
    (the model's ``pretrained_cfg``).
    """

    settings: SimWnWSettings
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor, g1: Geometry, g2: Geometry) -> PairPlan:
        settings = self.settings.resolve(x1.shape[-2])
        with torch.no_grad():
            match = match_blocks(_pixels(x1, self.mean, self.std), _pixels(x2, self.mean, self.std), g1, g2,
                                 block_size=settings.block_size, psnr_threshold=settings.psnr_threshold,
                                 search_window=settings.search_window)
        return PairPlan(method=settings.method, settings=settings, match=match,
                        overhead_flops=float(match.overhead_flops), pairs=int(x1.shape[0]))


@dataclass(frozen=True)
class TokenMatchPlanner:
    """SimWnW token removal on ViTs (App. A.4): patch-aligned matching of ``patch`` px tokens."""

    settings: TokenPruningSettings
    patch: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "patch", int(self.patch))
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor, g1: Geometry, g2: Geometry) -> PairPlan:
        from simwnw_hf.tokens import build_pair_pruner   # tokens imports this package's settings

        pruner = build_pair_pruner(self.settings)
        decision, overhead = pruner.plan(_pixels(x1, self.mean, self.std), _pixels(x2, self.mean, self.std),
                                         g1, g2, self.patch)
        return PairPlan(method=pruner.name, settings=self.settings, match=decision,
                        overhead_flops=float(overhead), pairs=int(x1.shape[0]))
