"""Token pruning for ViTs in two-view SSL: SimWnW token removal, SimPrune, and the EViT baseline.

One module per mechanism (pure tensor functions + a frozen pruner object with the hooks of
:class:`~simwnw_hf.tokens.base.PairTokenPruner`); :func:`build_pair_pruner` picks one by name.
The ViT that runs them is :class:`simwnw_hf.models.vit.SimWnWVisionTransformer`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from .base import PairTokenPruner, PruneResult, TokenGroup  # noqa: F401
from .evit import EViT
from .flops import ViTFlops, flop_counter, vit_flops  # noqa: F401
from .gather import keep_tokens  # noqa: F401
from .simprune import SimPrune
from .simwnw import SimWnWTokenDrop

PRUNING_METHODS = ("simwnw", "simprune", "evit")


def build_pair_pruner(method: str = "simwnw", depth: int = 12, psnr_threshold: float = 20.0,
                      search_window: Optional[int] = None, prune_layers: Sequence[int] = (4, 7, 10),
                      keep_rate: float = 0.8, difficulty_span: float = 0.5,
                      search_method: str = "diamond", token_groups: int = 4) -> PairTokenPruner:
    """Validated pruner for ``method``; settings another method uses are accepted and ignored.

    ``prune_layers`` are 0-based block indices: tokens are pruned at the input of ``blocks[l]``, so the
    default ``(4, 7, 10)`` prunes after the 4th, 7th and 10th blocks ran on the full sequence.
    """
    if method not in PRUNING_METHODS:
        raise ValueError(f"unknown token-pruning method {method!r}; choose one of {PRUNING_METHODS}")
    if method == "simwnw":
        if not math.isfinite(float(psnr_threshold)):
            raise ValueError(f"psnr_threshold must be a finite number of dB, got {psnr_threshold}")
        if int(token_groups) < 1:
            raise ValueError(f"token_groups must be a positive integer, got {token_groups}")
        if search_window is not None and int(search_window) < 1:
            raise ValueError(f"search_window must be a positive number of pixels, got {search_window}")
        return SimWnWTokenDrop(psnr_threshold=float(psnr_threshold),
                               search_window=None if search_window is None else int(search_window),
                               search_method=search_method, groups=int(token_groups))
    if not 0.0 < float(keep_rate) <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    layers = tuple(sorted({int(layer) for layer in prune_layers}))
    if not layers or layers[0] < 0 or layers[-1] >= depth:
        raise ValueError(f"prune_layers must be block indices in [0, {depth - 1}], got {tuple(prune_layers)}")
    if method == "evit":
        return EViT(prune_layers=layers, keep_rate=float(keep_rate))
    if not 0.0 <= float(difficulty_span) <= 1.0:
        raise ValueError(f"difficulty_span must be in [0, 1], got {difficulty_span}")
    return SimPrune(prune_layers=layers, keep_rate=float(keep_rate), difficulty_span=float(difficulty_span))


__all__ = ["PairTokenPruner", "TokenGroup", "SimWnWTokenDrop", "SimPrune", "EViT", "build_pair_pruner", "PRUNING_METHODS",
           "ViTFlops", "vit_flops", "flop_counter", "keep_tokens"]
