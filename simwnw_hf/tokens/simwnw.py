"""SimWnW token removal for ViTs (SimWnW paper App. A.4).

"ViT naturally divides the image into many tokens, typically in the size of 16x16. Therefore,
removing similar blocks can be directly achieved by removing similar input tokens, resulting in a
reduced input sequence length." We run the CNN block matcher
(:func:`simwnw_hf.simwnw.block_matching.match_blocks`) with ``block = search_step = patch size``: every
view-1 patch is a block, its search window sits around its geometric counterpart in view 2 (§4.1,
App. B: window side ``2 * patch`` by default) and candidates lie on view 2's patch grid, so a match *is*
a view-2 token. A pair with PSNR >= threshold (20 dB, §5) is similar: the view-1 token and the view-2
token it matched are dropped before the first block.

Variable lengths without padding: samples differ in how many similar tokens they have. The samples
of a view are sorted by the number of tokens they need (their dissimilar tokens) and cut into chunks:
by default (``groups="auto"``) where the estimated time is least, tokens run plus a fixed cost per
chunk call (:func:`split_by_cost`); with ``groups = N``, ``N`` equal chunks (:func:`split_by_need`).
Each chunk is one tensor in which every sample keeps ``k`` = the largest need in the chunk (at least
1). A sample that needs fewer keeps its least similar similar tokens (lowest PSNR) to fill up to
``k``; a dissimilar token is never dropped. No padding token or attention mask exists; the waste is
those fill tokens and the cost of each extra call (``groups = 1``: one tensor, ``k`` = the batch
maximum, so a single sample with nothing similar cancels the saving of the whole batch; ``groups =
B``: no fill token, one chunk per sample, which on ViT-Ti at batch 8 ran 0.17 above its FLOPs ratio
as one call per chunk and 0.07 packed). The chunks of a view run through the blocks packed (per-token
layers once, attention per chunk: :mod:`simwnw_hf.models.vit_packed`), or one call each where the
blocks cannot be packed, and the features are put back in batch order. The two views are split
independently (a view-2 token can be the match of several view-1 tokens, so view 2 usually loses
fewer tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch

from simwnw_hf.data.geometry import Geometry
from simwnw_hf.simwnw.block_matching import BlockMatch, match_blocks

from .base import GroupResult, PairTokenPruner, TokenGroup
from .gather import keep_tokens

__all__ = ["TokenMatch", "token_scores", "keep_least_similar", "split_by_need", "split_by_cost", "match_tokens", "SimWnWTokenDrop"]


@dataclass
class TokenMatch:
    """Which patch tokens of each view to keep, and the matching that decided it."""

    keep1: torch.Tensor      # (B, k1) long: kept view-1 patch tokens, ascending (one group: k1 = batch max)
    keep2: torch.Tensor      # (B, k2) long: kept view-2 patch tokens, ascending
    score1: torch.Tensor     # (B, N1) float: PSNR of each view-1 token's best match
    score2: torch.Tensor     # (B, N2) float: best PSNR of the view-1 tokens matched to each view-2 token
    similar1: torch.Tensor   # (B, N1) bool: view-1 tokens with a similar match
    similar2: torch.Tensor   # (B, N2) bool: view-2 tokens matched by a similar view-1 token
    match: BlockMatch


def token_scores(match: BlockMatch, grid2: Tuple[int, int], patch: int):
    """Per-token similarity of both views from a patch-aligned block match.

    View 1: the PSNR of its best match. View 2: the highest PSNR of the view-1 tokens that matched it
    (``-inf`` when none did). Returns ``score1 (B, N1), score2 (B, N2), similar1, similar2``.
    """
    batch, nb = match.psnr.shape
    if bool((match.match_yx % patch).any()):
        raise ValueError("block matches are not on the patch grid; match with search_step = patch size")
    gw2 = grid2[1]
    target = (match.match_yx[..., 0] // patch) * gw2 + match.match_yx[..., 1] // patch      # (B, nb) view-2 token
    n2 = grid2[0] * grid2[1]
    score1 = match.psnr.float()
    score2 = torch.full((batch, n2), float("-inf"), device=score1.device)
    score2.scatter_reduce_(1, target, score1, reduce="amax")                                 # (B, N2)
    hits = torch.zeros(batch, n2, dtype=torch.int32, device=score1.device)
    hits.scatter_add_(1, target, match.similar.to(torch.int32))                             # (B, N2)
    return score1, score2, match.similar, hits > 0


def keep_least_similar(score: torch.Tensor, similar: torch.Tensor, min_keep: int = 1) -> torch.Tensor:
    """Indices (B, k) of the ``k`` least similar tokens per sample, ascending.

    ``k = max(min_keep, max_b #dissimilar_b)``: every dissimilar token is kept (its score is below
    every similar token's), and samples with fewer dissimilar tokens fill up with their least similar
    ones. score: (B, N) float; similar: (B, N) bool.
    """
    n = score.shape[1]
    k = min(n, max(int(min_keep), int((~similar).sum(dim=1).max()) if similar.numel() else 0))
    # lexicographic (similar, score): two stable sorts; dissimilar tokens always come first
    order = torch.argsort(torch.nan_to_num(score, nan=float("inf")), dim=1, stable=True)        # (B, N)
    order = order.gather(1, torch.argsort(similar.gather(1, order).to(torch.int8), dim=1, stable=True))
    order = order[:, :k]                                                                     # (B, k)
    return order.sort(dim=1).values


def split_by_need(similar: torch.Tensor, groups: int) -> List[torch.Tensor]:
    """Sample indices sorted by the number of dissimilar tokens, cut into ``groups`` near-equal chunks."""
    if groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups}")
    order = torch.argsort((~similar).sum(dim=1), stable=True)                              # (B,) ascending need
    return [chunk for chunk in torch.tensor_split(order, min(groups, order.numel())) if chunk.numel()]


def split_by_cost(similar: torch.Tensor, call_tokens: float, prefix: int = 1, min_keep: int = 1
                  ) -> List[torch.Tensor]:
    """Sample indices sorted by need, cut where it is cheapest to run: the chunks that minimise
    ``sum over chunks (samples x (prefix + largest need)) + call_tokens x chunks``.

    Why: a chunk costs more than its tokens: its own attention call per block, and, where chunks are
    not packed (:mod:`simwnw_hf.models.vit_packed`), its own call through every layer (small matrix
    products, per-call weight-gradient accumulation, dispatch). ``call_tokens`` is that cost in tokens
    run through all blocks. 24 was chosen on ViT-Ti, batch 8, at 224 px (``--call-token-arms`` of
    ``benchmarks/token_pruning_step.py``, ``benchmarks/results/token_pruning_step.md``): with packed
    chunks 8, 12 and 24 tokens were within the run-to-run spread at 1 CPU thread (0.888-0.913 of the
    dense step) and 24 the best of 8, 24 and 48 at 2 threads (0.920 vs 0.942, 0.927); unpacked, 24 was
    best of 6-48 at 1 thread (a scratch run). 0 gives one chunk per distinct need
    (no fill token), a huge value one chunk. Exact optimum over contiguous cuts of the sorted samples
    (any optimal partition can be made contiguous: a chunk's cost depends only on its largest need), by
    dynamic programming in O(B^2) (0.2 ms for B = 8, 5 ms for B = 256 here); ties go to fewer, larger
    chunks.
    """
    if not call_tokens >= 0:
        raise ValueError(f"call_tokens must be >= 0, got {call_tokens}")
    need = (~similar).sum(dim=1).clamp(min=min(int(min_keep), similar.shape[1]))
    order = torch.argsort(need, stable=True)                                                # (B,) ascending need
    batch = order.numel()
    if batch == 0:
        return []
    # the DP is B small steps of scalar bookkeeping: on the CPU whatever device the masks are on
    width = (need[order] + int(prefix)).to("cpu", torch.float64)                            # (B,) tokens per sample
    best = torch.zeros(batch + 1, dtype=torch.float64)                                      # best[j]: samples [0, j)
    cut = torch.zeros(batch + 1, dtype=torch.long)
    for j in range(1, batch + 1):
        start = torch.arange(j, dtype=torch.float64)                                        # chunk [i, j) for i < j
        cost = best[:j] + (j - start) * width[j - 1] + float(call_tokens)
        i = int(torch.argmin(cost))                                                         # first minimum: largest chunk
        best[j], cut[j] = cost[i], i
    bounds, j = [], batch
    while j > 0:
        bounds.append(j)
        j = int(cut[j])
    bounds = [0, *reversed(bounds)]
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def match_tokens(pixels1: torch.Tensor, pixels2: torch.Tensor, g1: Geometry, g2: Geometry, patch: int,
                 psnr_threshold: float = 20.0, search_window: Optional[int] = None,
                 search_method: str = "diamond", min_keep: int = 1) -> TokenMatch:
    """Match the patches of two views of [0, 1] pixels and choose the tokens to keep (App. A.4)."""
    for name, x in (("view 1", pixels1), ("view 2", pixels2)):
        if x.shape[-2] % patch or x.shape[-1] % patch:
            raise ValueError(f"{name} is {x.shape[-2]}x{x.shape[-1]}, not a multiple of the patch size {patch}")
    match = match_blocks(pixels1, pixels2, g1, g2, block_size=patch, psnr_threshold=psnr_threshold,
                         search_window=search_window, search_step=patch, method=search_method)
    grid2 = (pixels2.shape[-2] // patch, pixels2.shape[-1] // patch)
    score1, score2, similar1, similar2 = token_scores(match, grid2, patch)
    return TokenMatch(keep1=keep_least_similar(score1, similar1, min_keep),
                      keep2=keep_least_similar(score2, similar2, min_keep), score1=score1, score2=score2,
                      similar1=similar1, similar2=similar2, match=match)


@dataclass(frozen=True)
class SimWnWTokenDrop(PairTokenPruner):
    """Drop the tokens of similar patch pairs from both views before ``blocks[0]`` (App. A.4)."""

    psnr_threshold: float = 20.0
    search_window: Optional[int] = None     # default 2 * patch (App. B)
    search_method: str = "diamond"
    min_keep: int = 1
    groups: Union[int, str] = "auto"        # "auto": split_by_cost; an int: that many equal chunks per view
    group_call_tokens: float = 24.0         # "auto": the cost of one more chunk, in tokens (split_by_cost)

    name = "simwnw"
    needs_pixels = True

    def plan(self, pixels1, pixels2, g1, g2, patch) -> Tuple[TokenMatch, float]:
        with torch.no_grad():
            sel = match_tokens(pixels1, pixels2, g1, g2, patch, self.psnr_threshold, self.search_window,
                               self.search_method, self.min_keep)
        return sel, float(sel.match.overhead_flops)

    def before_blocks(self, t1, t2, decision: TokenMatch, num_prefix_tokens) -> GroupResult:
        if not isinstance(decision, TokenMatch):
            raise ValueError("SimWnW token removal needs the TokenMatch of plan_pair; got "
                             f"{type(decision).__name__}")
        views = []
        for t, score, similar in ((t1, decision.score1, decision.similar1), (t2, decision.score2, decision.similar2)):
            chunks = []
            if self.groups == "auto":
                split = split_by_cost(similar, self.group_call_tokens, num_prefix_tokens, self.min_keep)
            else:
                split = split_by_need(similar, self.groups)
            for index in split:
                keep = keep_least_similar(score[index], similar[index], self.min_keep)          # (b, k)
                chunks.append(TokenGroup(index, keep_tokens(t[index], keep, num_prefix_tokens)))
            views.append(chunks)
        stats = {"removal_ratio": float(decision.match.removal_ratio) * t1.shape[0]}
        return views[0], views[1], stats
