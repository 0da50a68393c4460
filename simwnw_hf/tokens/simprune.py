"""SimPrune: cross-branch token pruning for SSL ViTs (Li et al., ICLR 2025, "Mutual Effort for
Efficiency"; seeds/004 abstract).

The two branches of an SSL step see two views of one image, so many tokens of one branch have a
near-duplicate in the other; SimPrune prunes such *pairs*, one token from each branch, so both
branches keep the same number of tokens and run in lockstep block by block. Our reconstruction (the
abstract gives the idea, not the formulas), applied at the input of ``blocks[l]`` for every ``l`` in
``prune_layers``:

1. **Similarity.** Cosine similarity between every online (view-1) patch token and every view-2 patch
   token, computed on the block's ``norm1`` output: the exact input of the attention's key/query
   projection. We do not project to keys, which would add ``2 N D^2`` FLOPs per branch per layer; the
   cosine matrix costs ``2 N^2 D`` (reported as overhead). Prefix (cls/reg) tokens are never pruned.
2. **Pairing** (:func:`match_pairs`). Each online token is paired with its most similar token of the
   other branch, one-to-one: every unpaired online token proposes to its most similar *unpaired*
   view-2 token, each view-2 token accepts its most similar proposer (ties: lowest index), and the
   rounds repeat until everyone is paired. Round one pairs every token whose best partner is not
   contested; later rounds only settle collisions.
3. **Difficulty-aware window** (:func:`difficulty_offset`). Pairs are ranked by similarity,
   rank 0 = most similar ("easy": the branches agree there). With ``n`` patch tokens and
   ``r = n - ceil(keep_rate * n)`` pairs to prune, the pruned pairs are the ranks ``[o, o + r)`` with
   ``o = round(progress * span * (n - r))``. At the start of training (``progress = 0``) the ``r``
   most similar pairs go; as training proceeds the window slides down the ranking towards less similar
   ("harder") pairs, reaching ``[span * (n - r), span * (n - r) + r)`` at the end. ``span = 1`` would end
   on the least similar pairs; the default ``0.5`` stops midway (our choice: the abstract does not give
   the schedule's end point). ``progress`` comes from the trainer through ``set_progress``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F

from .base import PairTokenPruner, PruneResult
from .gather import indices_from_mask, keep_tokens

__all__ = ["cross_similarity", "cross_similarity_flops", "match_pairs", "prune_count", "difficulty_offset",
           "simprune_select", "SimPrune"]


@torch.no_grad()
def cross_similarity(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every view-1 token with every view-2 token: (B, n1, D), (B, n2, D) -> (B, n1, n2)."""
    return torch.bmm(F.normalize(y1.float(), dim=-1), F.normalize(y2.float(), dim=-1).transpose(1, 2))


def cross_similarity_flops(batch: int, n1: int, n2: int, dim: int) -> float:
    """Matmul FLOPs of :func:`cross_similarity`."""
    return 2.0 * batch * n1 * n2 * dim


@torch.no_grad()
def match_pairs(sim: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One-to-one pairing of online tokens with their most similar free token of the other branch.

    sim: (B, n, n) -> partner (B, n) long (view-2 index paired with each view-1 token), pair_sim (B, n).

    Rounds as in the module doc. A free row's proposal stays valid until its column is taken (columns
    only disappear), so after the first full argmax only the rows that just lost their column look
    again: a round costs O(B n) plus one row argmax per loser, not a pass over the (B, n, n) matrix.
    """
    batch, n, n2 = sim.shape
    if n != n2:
        raise ValueError(f"SimPrune pairs tokens one-to-one; the branches hold {n} and {n2} tokens")
    device = sim.device
    ninf = float("-inf")
    work = sim.float().clone()                                      # taken columns become -inf
    rows = torch.arange(n, device=device).expand(batch, n)          # (B, n) row index of each proposal
    partner = torch.full((batch, n), -1, dtype=torch.long, device=device)
    row_free = torch.ones(batch, n, dtype=torch.bool, device=device)
    choice = work.argmax(dim=2)                                     # (B, n) proposals; ties: lowest column
    value = work.gather(2, choice[..., None])[..., 0]               # (B, n) their similarity
    for _ in range(n):                      # every round pairs at least one token of each unfinished sample
        if not bool(row_free.any()):
            break
        offer = torch.where(row_free, value, torch.full_like(value, ninf))
        best = torch.full((batch, n), ninf, device=device).scatter_reduce(1, choice, offer, "amax")
        top = row_free & (offer == best.gather(1, choice))          # best offer of its column (maybe tied)
        first = torch.full((batch, n), n, dtype=torch.long, device=device).scatter_reduce(
            1, choice, torch.where(top, rows, torch.full_like(rows, n)), "amin")
        win = top & (first.gather(1, choice) == rows)               # ties: lowest row index
        b_idx, i_idx = win.nonzero(as_tuple=True)
        j_idx = choice[b_idx, i_idx]
        partner[b_idx, i_idx] = j_idx
        row_free[b_idx, i_idx] = False
        work[b_idx, :, j_idx] = ninf                                # (k, n): column j of sample b is taken
        lost = row_free & torch.isneginf(work.gather(2, choice[..., None])[..., 0])
        lb, li = lost.nonzero(as_tuple=True)
        if lb.numel():
            again = work[lb, li]                                    # (L, n) rows of the losers
            choice[lb, li] = again.argmax(dim=1)
            value[lb, li] = again.gather(1, choice[lb, li][:, None])[:, 0]
    return partner, sim.gather(2, partner[..., None])[..., 0]


def prune_count(n: int, keep_rate: float) -> int:
    """Pairs pruned out of ``n`` tokens per branch: ``n - ceil(keep_rate * n)`` (at least one token stays)."""
    return n - min(n, max(1, math.ceil(keep_rate * n)))


def difficulty_offset(n: int, r: int, progress: float, span: float = 0.5) -> int:
    """Start rank of the pruning window ``[o, o + r)`` over pairs ranked by similarity (see module doc)."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if not 0.0 <= span <= 1.0:
        raise ValueError(f"difficulty span must be in [0, 1], got {span}")
    return int(round(progress * span * (n - r)))


@torch.no_grad()
def simprune_select(sim: torch.Tensor, keep_rate: float, progress: float = 0.0, span: float = 0.5):
    """Patch tokens each branch keeps after pruning the window of similar pairs.

    sim: (B, n, n) -> keep1 (B, n - r), keep2 (B, n - r) ascending, and the pruned pairs
    ``(pruned1, pruned2)`` (B, r) in ranking order.
    """
    batch, n, _ = sim.shape
    r = prune_count(n, keep_rate)
    partner, pair_sim = match_pairs(sim)
    rank = torch.argsort(pair_sim, dim=1, descending=True, stable=True)                # (B, n) easiest first
    o = difficulty_offset(n, r, progress, span)
    pruned1 = rank[:, o:o + r]                                                         # (B, r) view-1 tokens
    pruned2 = partner.gather(1, pruned1)                                               # (B, r) their partners
    keep1 = torch.ones(batch, n, dtype=torch.bool, device=sim.device).scatter_(1, pruned1, False)
    keep2 = torch.ones(batch, n, dtype=torch.bool, device=sim.device).scatter_(1, pruned2, False)
    return indices_from_mask(keep1), indices_from_mask(keep2), (pruned1, pruned2)


@dataclass(frozen=True)
class SimPrune(PairTokenPruner):
    """SimPrune at the input of ``blocks[l]`` for ``l`` in ``prune_layers``; both branches together."""

    prune_layers: Tuple[int, ...] = (4, 7, 10)
    keep_rate: float = 0.8
    difficulty_span: float = 0.5

    name = "simprune"

    def at_block(self, block, t1, t2, progress, num_prefix_tokens) -> PruneResult:
        p = num_prefix_tokens
        if t1.shape[1] != t2.shape[1]:
            raise ValueError(f"SimPrune needs both branches in lockstep; got {t1.shape[1]} and {t2.shape[1]} tokens")
        n = t1.shape[1] - p
        if prune_count(n, self.keep_rate) == 0:
            return t1, t2, {}
        with torch.no_grad():
            sim = cross_similarity(block.norm1(t1[:, p:].detach()), block.norm1(t2[:, p:].detach()))   # (B, n, n)
            keep1, keep2, _ = simprune_select(sim, self.keep_rate, progress, self.difficulty_span)
        overhead = cross_similarity_flops(t1.shape[0], n, n, t1.shape[2])
        return keep_tokens(t1, keep1, p), keep_tokens(t2, keep2, p), {"overhead_flops": overhead}
