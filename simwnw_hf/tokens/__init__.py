"""Token pruning for ViTs in two-view SSL: SimWnW token removal, SimPrune, and the EViT baseline.

One module per mechanism (pure tensor functions + a frozen pruner object with the hooks of
:class:`~simwnw_hf.tokens.base.PairTokenPruner`); :func:`build_pair_pruner` picks one by name.
The ViT that runs them is :class:`simwnw_hf.models.vit.SimWnWVisionTransformer`.
"""

from __future__ import annotations

from simwnw_hf.pruning.settings import TOKEN_PRUNING_METHODS, TokenPruningSettings

from .base import PairTokenPruner, PruneResult, TokenGroup  # noqa: F401
from .evit import EViT
from .flops import ViTFlops, flop_counter, vit_flops  # noqa: F401
from .gather import keep_tokens  # noqa: F401
from .simprune import SimPrune
from .simwnw import SimWnWTokenDrop

PRUNING_METHODS = TOKEN_PRUNING_METHODS  # old name


def build_pair_pruner(settings: TokenPruningSettings, depth: int = 12) -> PairTokenPruner:
    """The pruner of ``settings`` for a ViT with ``depth`` blocks (settings of other methods are ignored).

    ``prune_layers`` are 0-based block indices: tokens are pruned at the input of ``blocks[l]``, so the
    default ``(4, 7, 10)`` prunes after the 4th, 7th and 10th blocks ran on the full sequence.
    """
    if not isinstance(settings, TokenPruningSettings):
        raise TypeError(f"build_pair_pruner takes TokenPruningSettings, got {type(settings).__name__}")
    if settings.method == "simwnw":
        return SimWnWTokenDrop(psnr_threshold=settings.psnr_threshold, search_window=settings.search_window,
                               search_method=settings.search_method, groups=settings.token_groups,
                               group_call_tokens=settings.group_call_tokens)
    layers = settings.prune_layers
    if layers[-1] >= depth:
        raise ValueError(f"prune_layers must be block indices in [0, {depth - 1}], got {layers}")
    if settings.method == "evit":
        return EViT(prune_layers=layers, keep_rate=settings.keep_rate)
    return SimPrune(prune_layers=layers, keep_rate=settings.keep_rate, difficulty_span=settings.difficulty_span)


__all__ = ["PairTokenPruner", "TokenGroup", "SimWnWTokenDrop", "SimPrune", "EViT", "build_pair_pruner", "PRUNING_METHODS",
           "TokenPruningSettings", "ViTFlops", "vit_flops", "flop_counter", "keep_tokens"]
