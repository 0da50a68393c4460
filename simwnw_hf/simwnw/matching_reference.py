"""Reference block matcher: the definition that :func:`simwnw_hf.simwnw.block_matching.match_blocks` must equal.

This is the matcher as first built (one PSNR per gathered candidate block, grouped per (image, block)
pair, a NaN cache on each window lattice, diamond search of Zhu & Ma 2000, masks painted by a
scatter-add of every removed pixel). The fast path in ``block_matching`` changes how the work is laid
out (tiles, padding, mask painting, query bookkeeping), never the arithmetic of a PSNR: each candidate's
squared differences are summed as one contiguous ``block * block * C`` row in (row, column, channel)
order, here and there, so the two give bit-identical PSNRs, matches, evaluation counts and masks
(``tests/test_block_matching.py`` holds them equal on random and real images). Kept apart so that speed
work on the fast path cannot silently change the definition.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from simwnw_hf.data.geometry import Geometry
from simwnw_hf.simwnw.block_matching import (
    LARGE_DIAMOND, SMALL_DIAMOND, BlockMatch, _check_inputs, _check_views, _grid_2d, counterpart_top_left,
    default_block_size, psnr_flops, search_lattice,
)

__all__ = ["match_blocks_reference"]

_GATHER_BUDGET = {"cpu": 1 << 19}
_GATHER_BUDGET_DEFAULT = 1 << 25


def _paint_blocks(top_left: torch.Tensor, keep: torch.Tensor, block: int, size: Tuple[int, int]) -> torch.Tensor:
    """Union of the ``block x block`` squares at ``top_left`` (B, nb, 2) where ``keep`` (B, nb)."""
    batch, nb, _ = top_left.shape
    h, w = size
    ar = torch.arange(block, device=top_left.device)
    rows = top_left[..., 0, None] + ar                                    # (B, nb, block)
    cols = top_left[..., 1, None] + ar
    flat = (rows[..., :, None] * w + cols[..., None, :]).reshape(batch, -1)   # (B, nb*block*block)
    votes = keep[..., None].expand(batch, nb, block * block).reshape(batch, -1).to(torch.int32)
    count = torch.zeros(batch, h * w, dtype=torch.int32, device=top_left.device)
    count.scatter_add_(1, flat, votes)
    return (count > 0).view(batch, h, w)


class _PairPSNR:
    """PSNR of view-1 tiles against view-2 candidate blocks, queried by (pair, y, x) lists.

    Rows ("pairs") are (image, block) combinations flattened to ``n = image * nb + block``. Values are
    cached on each pair's window lattice so a point revisited by the diamond search is not recomputed,
    and ``evaluations`` counts exactly the PSNRs computed.
    """

    def __init__(self, x1: torch.Tensor, x2: torch.Tensor, src_yx: torch.Tensor, block: int,
                 mirror: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, step: int):
        batch, _, _, _ = x1.shape
        nb = src_yx.shape[0]
        ar = torch.arange(block, device=x1.device)
        x1c = x1.permute(0, 2, 3, 1)                                      # (B, H1, W1, C) view
        # src_yx is a row-major product grid (``_grid_2d``): cut all tiles with two index_selects
        ys, xs = torch.unique(src_yx[:, 0]), torch.unique(src_yx[:, 1])
        if ys.numel() * xs.numel() != nb:
            raise ValueError("block top-lefts must form a row-major grid (see _grid_2d)")
        strip = x1c.index_select(1, (ys[:, None] + ar).reshape(-1)).index_select(2, (xs[:, None] + ar).reshape(-1))
        tiles = strip.view(batch, ys.numel(), block, xs.numel(), block, -1).permute(0, 1, 3, 2, 4, 5)
        tiles = tiles.reshape(batch, nb, block, block, -1)                 # (B, nb, block, block, C) copy
        if bool(mirror.any()):
            # mirrored images compare their tiles read right to left (a flip mirrors content, module doc)
            tiles[mirror] = tiles[mirror].flip(3)
        self.tiles = tiles.view(batch * nb, -1)                            # (N, block*block*C)
        # View 2 channels-last and flat: one block row of a candidate is a contiguous run of block*C
        # values, so a candidate is gathered as `block` rows of a sliding-window view (no copy made).
        self.h2, self.w2 = x2.shape[-2:]
        self.channels = x2.shape[1]
        flat = x2.permute(0, 2, 3, 1).contiguous().reshape(-1)            # (B*H2*W2*C,)
        run = block * self.channels
        self.runs = flat.as_strided((flat.numel() - run + 1, run), (1, 1))  # (starts, block*C)
        self.nb, self.block, self.step, self.ar = nb, block, step, ar
        self.lo, self.hi = lo.reshape(-1, 2), hi.reshape(-1, 2)           # (N, 2) lattice bounds
        extent = (self.hi - self.lo + 1).amax(dim=0)                      # lattice window (Ly, Lx)
        self.ly, self.lx = int(extent[0]), int(extent[1])
        n = self.tiles.shape[0]
        self.cache = torch.full((n * self.ly * self.lx,), float("nan"), dtype=torch.float32, device=x1.device)
        self.evaluations = 0

    def _compute(self, n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """PSNR for pairs ``n`` (Q,) at lattice points ``k`` (Q, 2); ``n`` sorted (queries of a pair together).

        Queries are grouped per pair and padded to the largest group, so each pair's tile is gathered
        once per group and broadcast against its candidates (gathering a tile copy per query was a
        third of the matcher's memory traffic at 224px). Differences stay exact (no ``|a|^2 + |b|^2 -
        2ab`` expansion), so identical blocks keep MSE 0 and PSNR +inf. Padding slots point at a
        valid block and are discarded.
        """
        pairs, counts = torch.unique_consecutive(n, return_counts=True)
        width = int(counts.max())
        group = torch.repeat_interleave(torch.arange(pairs.numel(), device=n.device), counts)
        slot = torch.arange(n.shape[0], device=n.device) - (torch.cumsum(counts, 0) - counts)[group]
        kk = k * self.step
        rows = (n // self.nb)[:, None] * self.h2 + kk[:, 0, None] + self.ar      # (Q, block) rows of the stacked batch
        starts = torch.zeros(pairs.numel(), width, self.block, dtype=torch.long, device=n.device)
        starts[group, slot] = (rows * self.w2 + kk[:, 1, None]) * self.channels   # flat start of each block row
        per_query = self.tiles.shape[1]
        ssd = torch.empty(pairs.numel(), width, dtype=torch.float32, device=n.device)
        chunk = max(1, _GATHER_BUDGET.get(n.device.type, _GATHER_BUDGET_DEFAULT) // (per_query * width))
        for s in range(0, pairs.numel(), chunk):
            cand = self.runs.index_select(0, starts[s:s + chunk].reshape(-1)).view(-1, width, per_query)
            tile = self.tiles.index_select(0, pairs[s:s + chunk]).unsqueeze(1)     # (a, 1, block*block*C)
            ssd[s:s + chunk] = cand.sub_(tile).square_().sum(dim=2)
        mse = ssd.view(-1).index_select(0, group * width + slot) / per_query
        return 10.0 * torch.log10(1.0 / mse)                                  # PSNR, MAX_I = 1

    def __call__(self, n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """PSNR of pairs ``n`` (...) at lattice points ``k`` (..., 2); ``-inf`` outside the window."""
        shape = n.shape
        n, k = n.reshape(-1), k.reshape(-1, 2)
        lo, hi = self.lo.index_select(0, n), self.hi.index_select(0, n)
        inside = ((k >= lo) & (k <= hi)).all(dim=1)
        rel = (k - lo).clamp_min(0)
        slot = (n * self.ly + rel[:, 0].clamp_max(self.ly - 1)) * self.lx + rel[:, 1].clamp_max(self.lx - 1)
        value = self.cache.index_select(0, slot)
        need = inside & torch.isnan(value)
        if need.any():
            # Slots are distinct: a slot encodes its pair, every query batch holds each pair once with
            # distinct points (a diamond, a window), and points outside the window are never computed.
            idx = need.nonzero().squeeze(1)
            new = self._compute(n[idx], k[idx])
            self.cache[slot[idx]] = new
            value[idx] = new
            self.evaluations += int(idx.numel())
        value = value.masked_fill_(~inside, -math.inf)
        return value.view(shape)


def _diamond_search(score: _PairPSNR, start: torch.Tensor, max_moves: int) -> torch.Tensor:
    """Zhu & Ma diamond search for every pair at once; returns the chosen lattice points (N, 2).

    Large diamond (9 points) recentred on its best point until the centre wins (ties keep the centre,
    so the PSNR strictly increases at each move and no centre repeats), then one small diamond (5
    points). Rows that converged leave the batch; the loop is bounded by the lattice size.
    """
    n_pairs = start.shape[0]
    device = start.device
    large, small = LARGE_DIAMOND.to(device), SMALL_DIAMOND.to(device)
    centre = start.clone()
    active = torch.arange(n_pairs, device=device)
    for _ in range(max_moves):
        if active.numel() == 0:
            break
        points = centre[active, None, :] + large                          # (A, 9, 2)
        values = score(active[:, None].expand(-1, large.shape[0]), points)  # (A, 9)
        best = values.argmax(dim=1)                                       # first max: centre on ties
        moved = best != 0
        centre[active] = points[torch.arange(active.numel(), device=device), best]
        active = active[moved]
    rows = torch.arange(n_pairs, device=device)
    points = centre[:, None, :] + small                                   # (N, 5, 2)
    values = score(rows[:, None].expand(-1, small.shape[0]), points)
    return points[rows, values.argmax(dim=1)]


def _exhaustive_search(score: _PairPSNR) -> torch.Tensor:
    """Every lattice point of every window; returns the first best point in raster order (N, 2)."""
    n_pairs = score.lo.shape[0]
    device = score.lo.device
    oy, ox = torch.meshgrid(torch.arange(score.ly, device=device), torch.arange(score.lx, device=device), indexing="ij")
    offsets = torch.stack([oy, ox], dim=-1).reshape(-1, 2)                # (L, 2)
    points = score.lo[:, None, :] + offsets                              # (N, L, 2)
    rows = torch.arange(n_pairs, device=device)
    values = score(rows[:, None].expand(-1, offsets.shape[0]), points)    # (N, L)
    return points[rows, values.argmax(dim=1)]


def match_blocks_reference(x1: torch.Tensor, x2: torch.Tensor, g1: Geometry, g2: Geometry,
                           block_size: Optional[int] = None, psnr_threshold: float = 20.0,
                           search_window: Optional[int] = None, search_step: int = 1,
                           method: str = "diamond") -> BlockMatch:
    """Reference of :func:`~simwnw_hf.simwnw.block_matching.match_blocks` (same arguments, same result).

    Args:
        x1, x2: (B, C, H, W) views as un-normalised [0, 1] pixels (see ``denormalize``).
        g1, g2: batched geometry dicts of the two views (:mod:`simwnw_hf.data.geometry`).
        block_size: block side; default :func:`default_block_size` of view 1's height.
        psnr_threshold: a pair with PSNR >= this (dB) is similar and removed (paper: 20).
        search_window: side of the square search region in view 2 (default ``2 * block_size``).
        search_step: candidate top-lefts are multiples of this in view 2 (1 for CNNs, patch size for ViTs).
        method: ``"diamond"`` (Zhu & Ma 2000) or ``"exhaustive"`` (every candidate of the same window).
    """
    _check_views(x1, x2)
    block = default_block_size(min(x1.shape[-2:])) if block_size is None else int(block_size)
    window = 2 * block if search_window is None else int(search_window)
    _check_inputs(x1, x2, g1, g2, block, window, int(search_step), method)
    batch, channels, h1, w1 = x1.shape
    h2, w2 = x2.shape[-2:]
    device = x1.device

    src_yx = _grid_2d(h1, w1, block).to(device)                          # (nb, 2)
    counterpart = counterpart_top_left(src_yx, block, g1, g2, (h2, w2)).to(device)   # (B, nb, 2)
    lo, hi, start = search_lattice(counterpart, block, (h2, w2), window, search_step)
    mirror = (g1["flip"].to(torch.bool) != g2["flip"].to(torch.bool)).to(device)      # (B,)
    score = _PairPSNR(x1, x2, src_yx, block, mirror, lo, hi, search_step)
    if method == "diamond":
        best = _diamond_search(score, start.reshape(-1, 2), max_moves=score.ly * score.lx)
    else:
        best = _exhaustive_search(score)
    n_pairs = best.shape[0]
    best_psnr = score(torch.arange(n_pairs, device=device), best)        # cached: no new evaluation
    nb = src_yx.shape[0]
    match_yx = (best * search_step).view(batch, nb, 2)
    best_psnr = best_psnr.view(batch, nb)
    similar = best_psnr >= psnr_threshold
    mask1 = _paint_blocks(src_yx.expand(batch, nb, 2), similar, block, (h1, w1))
    mask2 = _paint_blocks(match_yx, similar, block, (h2, w2))
    removal = 0.5 * (mask1.float().mean() + mask2.float().mean())
    return BlockMatch(
        src_yx=src_yx, match_yx=match_yx, psnr=best_psnr, similar=similar, mask1=mask1, mask2=mask2,
        psnr_evaluations=score.evaluations, removal_ratio=float(removal),
        overhead_flops=score.evaluations * psnr_flops(block, channels), block_size=block,
    )


