"""The three hooks a pair token pruner offers the ViT's pair path, as no-ops.

``plan`` decides before the network what to remove (SimWnW token removal matches patches there; it
runs once per step and its result is shared by online and momentum encoders), ``before_blocks``
applies that decision to the embedded tokens, and ``at_block`` prunes inside the network (SimPrune,
EViT decide from the activations of the encoder that runs, so they have no plan).

A pruner is a small frozen settings object, not an ``nn.Module``: it has no weights and no state; the
training progress and the tokens travel in the arguments and the return values (ToMe-style: a
pruner that prunes nothing returns its inputs, so the pair path never branches).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from simwnw_hf.data.geometry import Geometry

__all__ = ["PairTokenPruner", "PruneResult", "GroupResult", "TokenGroup"]


class TokenGroup(NamedTuple):
    """Samples of a batch that share one sequence length, run through the blocks as one tensor."""

    index: Optional[torch.Tensor]   # (b,) long: their positions in the batch; None = the whole batch in order
    tokens: torch.Tensor            # (b, P + k, D)


# (tokens of view 1, tokens of view 2, stats of this pruning step: overhead_flops and method ratios)
PruneResult = Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]
# the same with each view split into groups of equal length (SimWnW token removal)
GroupResult = Tuple[List[TokenGroup], List[TokenGroup], Dict[str, float]]


class PairTokenPruner:
    """Base pruner: prunes nothing."""

    name = "none"
    needs_pixels = False            # plan wants [0, 1] pixels and the geometry of both views
    prune_layers: Tuple[int, ...] = ()

    def plan(self, pixels1: torch.Tensor, pixels2: torch.Tensor, g1: Geometry, g2: Geometry,
             patch: int) -> Tuple[Optional[Any], float]:
        """``(decision, overhead FLOPs)`` made before the network from the pixels; ``(None, 0)``: none."""
        return None, 0.0

    def before_blocks(self, t1: torch.Tensor, t2: torch.Tensor, decision: Optional[Any],
                      num_prefix_tokens: int) -> GroupResult:
        """Prune the embedded (pos-embedded) tokens (B, P + N, D) of both views before ``blocks[0]``.

        Samples may end up with different lengths; they come back as groups of equal length.
        """
        return [TokenGroup(None, t1)], [TokenGroup(None, t2)], {}

    def at_block(self, block: nn.Module, t1: torch.Tensor, t2: torch.Tensor, progress: float,
                 num_prefix_tokens: int) -> PruneResult:
        """Prune the tokens entering ``block`` (called for the blocks in ``prune_layers`` only)."""
        return t1, t2, {}
