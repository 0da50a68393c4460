"""SimWnW block matching between the two augmented views of an image (paper §4.1, App. B, App. C).

The online view (view 1) is cut into ``block x block`` tiles (the last tile of a row/column overlaps its
neighbour when the block does not divide the image). For every tile we find where it came from in
view 2 through the recorded crop/flip geometry (:mod:`simwnw_hf.data.geometry`), put a square search
window of side ``search_window`` (default ``2 * block``: 60x60 for 30x30 blocks, App. B) centred on
that counterpart and clamped inside view 2 ("nearest region" when the counterpart is cropped out), and
look for the best-matching block inside it with the diamond search of Zhu & Ma (2000). Similarity is
PSNR on [0, 1] pixels (MAX_I = 1) over all channels; a pair is *similar* when PSNR >= threshold
(20 dB by default, §5). Similar tiles are removed from view 1 and their matches from view 2.

Everything is batched over images and blocks: a search state is one row per (image, block) pair and
each diamond iteration evaluates the new pattern points of all still-moving rows at once: candidates
are gathered per pair (rows sorted by their number of new points, chunks padded to their widest row)
and compared with the pair's tile by broadcasting, so a tile is read once per iteration rather than
once per candidate.

Reference and exactness: :mod:`simwnw_hf.simwnw.matching_reference` keeps the first implementation as
the definition. A PSNR here is computed with the same arithmetic (one contiguous row of squared
differences in (row, column, channel) order summed by ``torch.sum``), so matches, PSNRs, masks and
evaluation counts are bit-identical (``tests/test_block_matching.py``, random and real images). Why
not a cheaper formulation: at 224px a (image, displacement) pair is shared by 1.3 blocks on average
(2.5 at 32px), so whole-image shifted differences with box sums would redo most of the work per
block; sub-block-sum lower bounds (successive elimination) rule out only 46-78% of the diamond's
non-winning points at 25% of a PSNR's cost; and expansions (``|a|^2 + |b|^2 - 2ab``, FFT or GEMM
correlation) change rounding, so they could only drive a certified search with exact re-checks.
The cost left is the candidate gather plus three elementwise passes over it (memory-bound).

Engines (``engine=``): ``torch`` is the batched search above; ``numba``
(:mod:`~simwnw_hf.simwnw.matching_jit`, the default for float32 CPU views through ``auto``) runs each
pair's search in one compiled loop without the copies, using float64 sums only where a rounding bound
proves they order candidates as the float32 PSNRs do, and this module's arithmetic for ties and for
every reported PSNR, so both engines return the same bits (about a third of the torch engine's time).

Candidate positions live on a lattice: top-left corners that are multiples of ``search_step`` in view 2
(``search_step = 1`` for CNNs; ViT token removal uses ``block = search_step = 16`` so matches land on
the patch grid). Diamond search steps one lattice point at a time.

When the two views have different flips, view-1 tiles are mirrored before being compared: a flip
mirrors content as well as position, and a mirrored tile is what its counterpart in view 2 looks like.

Overhead accounting (App. C): ``psnr_evaluations`` counts the block-pair PSNRs actually computed.
Values are cached per (pair, candidate), so a point shared by two successive diamonds (or revisited)
is computed and counted once; points outside the window are neither computed nor counted. Each PSNR
costs :func:`psnr_flops` = 3 FLOPs per compared element (sub, mul, add) over all channels + 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from simwnw_hf.data.geometry import Geometry, make_geometry, map_points

__all__ = [
    "BlockMatch", "default_block_size", "psnr", "psnr_flops", "block_grid", "counterpart_top_left",
    "search_lattice", "match_blocks", "exhaustive_match", "removal_masks", "match_pixels",
]

METHODS = ("diamond", "exhaustive")
# "numba": the diamond search compiled per pair (matching_jit), certified equal to "torch", the batched
# search in tensor ops; "auto": numba for float32 CPU views (where it runs), torch otherwise.
ENGINES = ("auto", "numba", "torch")

# Zhu & Ma (2000) patterns as (dy, dx) lattice offsets; the centre comes first so that ties keep it.
LARGE_DIAMOND = torch.tensor([[0, 0], [-2, 0], [-1, -1], [-1, 1], [0, -2], [0, 2], [1, -1], [1, 1], [2, 0]])
SMALL_DIAMOND = torch.tensor([[0, 0], [-1, 0], [0, -1], [0, 1], [1, 0]])

# Elements of the (query, block*block*channel) tensor gathered at once. On CPU small chunks stay in
# cache and avoid page-faulting a fresh large buffer per chunk (2^19 was 1.6x faster than 2^23 at
# 224px); accelerators prefer few large kernels, with peak memory still bounded.
_GATHER_BUDGET = {"cpu": 1 << 19}
_GATHER_BUDGET_DEFAULT = 1 << 25


def default_block_size(image_size: int) -> int:
    """Block side used by the paper: 5 for 32px, 30 for 224px, linear in between and beyond (§5)."""
    if image_size < 2:
        raise ValueError(f"image_size must be at least 2, got {image_size}")
    size = 5.0 + (image_size - 32) * (30.0 - 5.0) / (224.0 - 32.0)
    return max(2, int(math.floor(size + 0.5)))


def match_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised (B, C, H, W) views -> [0, 1] pixels for :func:`match_blocks`, channels-last in memory.

    The same values as ``simwnw_hf.data.views.denormalize`` (one multiply and one add per element),
    written in the (row, column, channel) order the matcher reads blocks in, so its channels-last
    copies of both views are free: the layout change rides on the pass that denormalising makes anyway.
    """
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) views, got shape {tuple(x.shape)}")
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    b, c, h, w = x.shape
    out = torch.empty(b, h, w, c, dtype=x.dtype, device=x.device)
    torch.mul(x.permute(0, 2, 3, 1), std_t, out=out)
    return out.add_(mean_t).permute(0, 3, 1, 2)


def psnr(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0, dim=(-3, -2, -1)) -> torch.Tensor:
    """``10 * log10(MAX^2 / MSE)`` over ``dim`` (§4.1); identical inputs give ``+inf``."""
    mse = (a - b).pow(2).mean(dim=dim)
    return 10.0 * torch.log10(max_val ** 2 / mse)


def psnr_flops(block: int, channels: int = 3) -> float:
    """FLOPs of one block-pair PSNR (App. C): a subtraction, a multiplication and an addition per
    element of the ``block x block x channels`` tile, plus 3 for the mean, the ratio and the log."""
    return 3.0 * block * block * channels + 3.0


def block_grid(size: int, block: int) -> torch.Tensor:
    """Top-left coordinates of blocks tiling ``[0, size)``; the last one overlaps when ``block`` does
    not divide ``size`` (§5: "overlapping blocks at the edges")."""
    if block < 1:
        raise ValueError(f"block size must be positive, got {block}")
    if block > size:
        raise ValueError(f"block size {block} is larger than the image side {size}")
    starts = list(range(0, size - block + 1, block))
    if starts[-1] + block < size:
        starts.append(size - block)
    return torch.tensor(starts, dtype=torch.long)


def _grid_2d(height: int, width: int, block: int) -> torch.Tensor:
    """(nb, 2) top-left (y, x) of the blocks of a ``height x width`` view, row-major."""
    ys, xs = block_grid(height, block), block_grid(width, block)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def _size2d(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def counterpart_top_left(src_yx: torch.Tensor, block: int, g1: Geometry, g2: Geometry,
                         size2: Union[int, Sequence[int]]) -> torch.Tensor:
    """Where each view-1 block lands in view 2: (B, nb, 2) float top-left ``(y, x)``.

    The block centre is mapped view 1 -> source -> view 2 (so a flip mirrors the position); the block
    keeps its side. Counterparts that fall (partly) outside view 2 are clamped to the nearest block
    inside it: the "nearest region" searched when the counterpart was cropped out (§4.1).
    """
    h2, w2 = _size2d(size2)
    batch = g1["crop"].shape[0]
    centre = src_yx.to(torch.float64) + block / 2.0                      # (nb, 2)
    cy = centre[:, 0].expand(batch, -1)                                   # (B, nb)
    cx = centre[:, 1].expand(batch, -1)
    g1 = {k: v.to(cy.device) for k, v in g1.items()}
    g2 = {k: v.to(cy.device) for k, v in g2.items()}
    y2, x2 = map_points(cy, cx, g1, g2)                                   # (B, nb) each
    top = (y2 - block / 2.0).clamp(0, h2 - block)
    left = (x2 - block / 2.0).clamp(0, w2 - block)
    return torch.stack([top, left], dim=-1)                               # (B, nb, 2)


def search_lattice(counterpart: torch.Tensor, block: int, size2: Union[int, Sequence[int]],
                   search_window: int, search_step: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate top-lefts of every search window, in lattice units (multiples of ``search_step``).

    The window (side ``search_window``, App. B) is centred on the counterpart block, snapped to whole
    pixels and shifted inside view 2; candidates are the blocks lying inside it whose top-left is a
    multiple of ``search_step``. A window containing no lattice point (possible only when
    ``search_window - block < search_step``) keeps the lattice point nearest to the counterpart.

    Returns ``lo, hi, start``: (..., 2) long lattice indices; candidates are ``k * search_step`` for
    ``lo <= k <= hi`` on each axis, ``start`` is the lattice point nearest to the counterpart.
    """
    size = torch.tensor(_size2d(size2), dtype=torch.float64, device=counterpart.device)
    cp = counterpart.to(torch.float64)
    win_top = torch.floor(cp + (block - search_window) / 2.0 + 0.5)      # (..., 2) pixel top of window
    win_top = torch.minimum(win_top, size - search_window).clamp_min(0)
    last_top = size - block                                               # last valid block top-left
    lo = torch.ceil(win_top / search_step)
    hi = torch.floor(torch.minimum(win_top + search_window - block, last_top) / search_step)
    nearest = torch.minimum(torch.floor(cp / search_step + 0.5), torch.floor(last_top / search_step))
    empty = lo > hi
    lo = torch.where(empty, nearest, lo)
    hi = torch.where(empty, nearest, hi)
    start = torch.maximum(torch.minimum(torch.floor(cp / search_step + 0.5), hi), lo)
    return lo.long(), hi.long(), start.long()


@dataclass
class BlockMatch:
    """Result of matching a batch of view pairs; view 1 is the online view divided into blocks."""

    src_yx: torch.Tensor        # (nb, 2) long: top-left of each block in view 1 (same for all images)
    match_yx: torch.Tensor      # (B, nb, 2) long: top-left of the best matching block in view 2
    psnr: torch.Tensor          # (B, nb) float: PSNR of the best match in dB (+inf for identical blocks)
    similar: torch.Tensor       # (B, nb) bool: psnr >= threshold
    mask1: torch.Tensor         # (B, H1, W1) bool: removed pixels of view 1 (union of similar blocks)
    mask2: torch.Tensor         # (B, H2, W2) bool: removed pixels of view 2 (union of their matches)
    psnr_evaluations: int       # distinct (pair, candidate) PSNRs computed over the whole batch
    removal_ratio: float        # mean over both views and the batch of the removed-pixel fraction
    overhead_flops: float       # psnr_evaluations * psnr_flops(block, channels), App. C
    block_size: Optional[int] = None
    exact_rechecks: int = 0     # numba engine: float32 PSNRs computed to settle ties and report values


def removal_masks(src_yx: torch.Tensor, match_yx: torch.Tensor, similar: torch.Tensor, block: int,
                  size1: Tuple[int, int], size2: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel masks (True = removed) of similar blocks in view 1 and of their matches in view 2."""
    batch, nb = similar.shape
    return (_paint_blocks(src_yx.expand(batch, nb, 2), similar, block, size1),
            _paint_blocks(match_yx, similar, block, size2))


def _mask_mean(mask: torch.Tensor) -> torch.Tensor:
    """``mask.float().mean()`` without the float copy: on CPU a float32 mean is the (exact, integer) sum
    divided by the count in float32, so counting the True entries gives the same bits, 5x faster."""
    return mask.count_nonzero().to(torch.float32) / mask.numel()


def _paint_blocks(top_left: torch.Tensor, keep: torch.Tensor, block: int, size: Tuple[int, int]) -> torch.Tensor:
    """Union of the ``block x block`` squares at ``top_left`` (B, nb, 2) where ``keep`` (B, nb).

    Each kept square adds +1/-1 at its four corners of a (H+1, W+1) difference image; two cumulative
    sums turn that into the number of squares covering each pixel: four writes per block instead of
    one per covered pixel (the per-pixel scatter-add is the reference, ``matching_reference``).
    """
    batch, nb, _ = top_left.shape
    h, w = size
    y, x = top_left[..., 0], top_left[..., 1]                            # (B, nb)
    corners = torch.stack([y * (w + 1) + x, y * (w + 1) + x + block,
                           (y + block) * (w + 1) + x, (y + block) * (w + 1) + x + block], dim=-1)
    sign = torch.tensor([1, -1, -1, 1], dtype=torch.int32, device=top_left.device)
    votes = keep[..., None].to(torch.int32) * sign                       # (B, nb, 4)
    delta = torch.zeros(batch, (h + 1) * (w + 1), dtype=torch.int32, device=top_left.device)
    delta.scatter_add_(1, corners.reshape(batch, -1), votes.reshape(batch, -1))
    # int32 sums (counts stay below H * W blocks): the default int64 cumsum was 7x slower
    count = delta.view(batch, h + 1, w + 1).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    return count[:, :h, :w] > 0


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> contiguous (B, H, W, C); free when ``x`` is channels-last in memory (``match_pixels``)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _runs(xcl: torch.Tensor, block: int) -> torch.Tensor:
    """Contiguous (B, H, W, C) view as overlapping runs of ``block * C`` values of its flattening.

    One block row is one run, so a block is ``block`` rows of this view.
    """
    flat = xcl.reshape(-1)
    run = block * xcl.shape[-1]
    return flat.as_strided((flat.numel() - run + 1, run), (1, 1))


class _PairPSNR:
    """PSNR of view-1 tiles against view-2 candidate blocks, queried as (pair, points) grids.

    Rows ("pairs") are (image, block) combinations flattened to ``n = image * nb + block``. Values are
    cached on each pair's window lattice so a point revisited by the diamond search is not recomputed,
    and ``evaluations`` counts exactly the PSNRs computed.

    One PSNR is one contiguous ``block * block * C`` row of squared differences in (row, column,
    channel) order summed by ``torch.sum``, exactly as in :mod:`~simwnw_hf.simwnw.matching_reference`,
    so values are bit-identical to the reference; what differs is the bookkeeping around it (see
    :meth:`_fill`).
    """

    def __init__(self, x1: torch.Tensor, x2: torch.Tensor, src_yx: torch.Tensor, block: int,
                 mirror: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, step: int,
                 tiles: Optional[torch.Tensor] = None):
        batch = x1.shape[0]
        nb = src_yx.shape[0]
        device = x1.device
        self.block, self.step, self.nb = block, step, nb
        self.ar = torch.arange(block, device=device)
        images = torch.arange(batch, device=device)[:, None]                                   # (B, 1)
        # Tiles in (row, column, channel) order. A mirrored image compares its tiles read right to left
        # (a flip mirrors content, module doc): those come from its flipped copy, at column W - block - x.
        if tiles is None:    # (matching_jit.cut_tiles gives the same values without copying the view)
            x1c = _channels_last(x1)
            left = src_yx[None, :, 1].expand(batch, -1)
            if bool(mirror.any()):
                # flipped along W in the channels-last layout; the tile at column x starts at W - block - x
                x1c = torch.where(mirror.view(batch, 1, 1, 1), x1c.flip(2), x1c)
                left = torch.where(mirror[:, None], x1.shape[-1] - block - left, left)
            tiles = self._gather(_runs(x1c, block), x1.shape, images, src_yx[None, :, 0], left)
        self.tiles = tiles.view(batch * nb, -1)                            # (N, block*block*C)
        self.h2, self.w2 = x2.shape[-2:]
        self.shape2 = x2.shape
        x2c = _channels_last(x2)
        self.x2flat = x2c.reshape(-1)                                     # what the compiled search reads
        self.runs = _runs(x2c, block)
        self.lo, self.hi = lo.reshape(-1, 2), hi.reshape(-1, 2)           # (N, 2) lattice bounds
        extent = (self.hi - self.lo + 1).amax(dim=0)                      # lattice window (Ly, Lx)
        self.ly, self.lx = int(extent[0]), int(extent[1])
        n = self.tiles.shape[0]
        self.cache = torch.full((n * self.ly * self.lx,), float("nan"), dtype=torch.float32, device=x1.device)
        self.evaluations = 0
        self.evaluations_search: Optional[int] = None   # set by the compiled search (matching_jit)
        self.buffer: Optional[torch.Tensor] = None

    def _buffer(self, numel: int) -> torch.Tensor:
        """Candidate buffer reused by every chunk of every query (a fresh one per chunk cost ~10%)."""
        if self.buffer is None or self.buffer.numel() < numel:
            self.buffer = torch.empty(numel, dtype=self.tiles.dtype, device=self.tiles.device)
        return self.buffer[:numel].view(-1, self.runs.shape[1])

    def _starts(self, shape, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """Flat starts (..., block) of the block rows at ``(top, left)`` (...) of images ``image``."""
        _, channels, height, width = shape
        rows = (image * height + top)[..., None] + self.ar
        return (rows * width + left[..., None]) * channels

    def _gather(self, runs: torch.Tensor, shape, image, top, left) -> torch.Tensor:
        """Blocks (..., block * block * C) in (row, column, channel) order, copied out of ``runs``."""
        starts = self._starts(shape, image, top, left)
        return runs.index_select(0, starts.reshape(-1)).view(*starts.shape[:-1], -1)

    def _fill(self, rows: torch.Tensor, points: torch.Tensor, need: torch.Tensor, slot: torch.Tensor) -> None:
        """Compute and cache the PSNRs of ``points`` (A, P, 2) of pairs ``rows`` (A,) where ``need`` (A, P).

        Each pair's new points are moved to the front of its row (one stable sort of the mask), rows
        are sorted by how many new points they have, and chunks are as wide as their widest row, so
        padding is small; a pair's tile is gathered once per chunk and broadcast against its
        candidates. Padding slots repeat the pair's first new point and so write the same value to
        the same cache slot. Differences stay exact (no ``|a|^2 + |b|^2 - 2ab`` expansion), so
        identical blocks keep MSE 0 and PSNR +inf.
        """
        counts = need.sum(dim=1)
        todo = counts.nonzero().squeeze(1)
        counts = counts.index_select(0, todo)
        order = torch.argsort(counts, descending=True, stable=True)
        todo, counts = todo.index_select(0, order), counts.index_select(0, order)
        cols = torch.argsort((~need.index_select(0, todo)).to(torch.int8), dim=1, stable=True)   # new first
        pts = points.index_select(0, todo).gather(1, cols[..., None].expand(-1, -1, 2))          # (A', P, 2)
        slots = slot.index_select(0, todo).gather(1, cols)                                       # (A', P)
        pairs = rows.index_select(0, todo)
        # padding slots repeat the pair's first new point (a valid block; same value, same cache slot)
        valid = torch.arange(pts.shape[1], device=pairs.device) < counts[:, None]              # (A', P)
        pts = torch.where(valid[..., None], pts, pts[:, :1]) * self.step
        slots = torch.where(valid, slots, slots[:, :1])
        starts = self._starts(self.shape2, (pairs // self.nb)[:, None], pts[..., 0], pts[..., 1])   # (A', P, block)
        tiles = self.tiles
        per_query = tiles.shape[1]
        budget = _GATHER_BUDGET.get(pairs.device.type, _GATHER_BUDGET_DEFAULT)
        widths = counts.tolist()
        ssds, writes = [], []
        s = 0
        while s < len(widths):       # only the kernels inside the loop: index arithmetic is done above
            width = widths[s]
            e = min(len(widths), s + max(1, budget // (per_query * width)))
            index = starts[s:e, :width].reshape(-1)
            cand = torch.index_select(self.runs, 0, index, out=self._buffer(index.numel() * self.runs.shape[1]))
            cand = cand.view(e - s, width, per_query)
            ssds.append(cand.sub_(tiles.index_select(0, pairs[s:e]).unsqueeze(1)).square_().sum(dim=2).view(-1))
            writes.append(slots[s:e, :width].reshape(-1))
            s = e
        self._store(torch.cat(ssds), torch.cat(writes))   # padding slots rewrite their pair's first point
        self.evaluations += int(counts.sum())

    def exact_at_slots(self, slots: torch.Tensor) -> None:
        """Compute and cache the PSNRs of distinct, not yet cached cache ``slots`` (K,) (for matching_jit).

        The same arithmetic as :meth:`_fill` (one contiguous row of float32 squared differences per PSNR,
        summed by ``torch.sum``); the squared differences come from the compiled loop, which writes the
        same IEEE values without copying candidates first (these are few: ties and the final matches).
        """
        from simwnw_hf.simwnw.matching_jit import exact_ssd
        per_pair = self.ly * self.lx
        rows = slots // per_pair
        pts = (self.lo.index_select(0, rows) + torch.stack([(slots % per_pair) // self.lx, slots % self.lx], dim=-1))
        pts = pts * self.step
        starts = self._starts(self.shape2, rows // self.nb, pts[:, 0], pts[:, 1])    # (K, block)
        self._store(exact_ssd(self.x2flat, self.tiles, rows, starts), slots)
        self.evaluations += int(slots.shape[0])

    def _store(self, ssd: torch.Tensor, slots: torch.Tensor) -> None:
        """Cache the PSNRs (MAX_I = 1) of sums of squared differences ``ssd`` at ``slots``: the one PSNR
        formula of both the batched search and the exact rechecks, so the two stay the same bits."""
        psnr = 10.0 * torch.log10(1.0 / (ssd / self.tiles.shape[1]))
        self.cache.index_put_((slots,), psnr.to(self.cache.dtype))   # float32 cache, any pixel dtype

    def __call__(self, rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """PSNR (A, P) of pairs ``rows`` (A,) at lattice points ``points`` (A, P, 2); ``-inf`` outside the window."""
        lo, hi = self.lo.index_select(0, rows)[:, None], self.hi.index_select(0, rows)[:, None]
        inside = ((points >= lo) & (points <= hi)).all(dim=2)
        rel = points - lo
        slot = (rows[:, None] * self.ly + rel[..., 0].clamp(0, self.ly - 1)) * self.lx + rel[..., 1].clamp(0, self.lx - 1)
        value = self.cache.index_select(0, slot.reshape(-1)).view(slot.shape)
        need = inside & torch.isnan(value)
        if bool(need.any()):
            # Slots of needed points are distinct: a slot encodes its pair, a query holds each pair
            # once with distinct points (a diamond, a window), points outside the window never count.
            self._fill(rows, points, need, slot)
            value = self.cache.index_select(0, slot.reshape(-1)).view(slot.shape)
        return value.masked_fill_(~inside, -math.inf)


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
        points = centre.index_select(0, active)[:, None, :] + large      # (A, 9, 2)
        best = score(active, points).argmax(dim=1)                        # first max: centre on ties
        moved = (best != 0).nonzero().squeeze(1)
        active = active.index_select(0, moved)
        centre[active] = points[moved, best.index_select(0, moved)]
    rows = torch.arange(n_pairs, device=device)
    points = centre[:, None, :] + small                                   # (N, 5, 2)
    return points[rows, score(rows, points).argmax(dim=1)]


def _exhaustive_search(score: _PairPSNR) -> torch.Tensor:
    """Every lattice point of every window; returns the first best point in raster order (N, 2)."""
    n_pairs = score.lo.shape[0]
    device = score.lo.device
    oy, ox = torch.meshgrid(torch.arange(score.ly, device=device), torch.arange(score.lx, device=device), indexing="ij")
    offsets = torch.stack([oy, ox], dim=-1).reshape(-1, 2)                # (L, 2)
    points = score.lo[:, None, :] + offsets                              # (N, L, 2)
    rows = torch.arange(n_pairs, device=device)
    return points[rows, score(rows, points).argmax(dim=1)]


def _check_views(x1, x2):
    for name, x in (("x1", x1), ("x2", x2)):
        if not torch.is_tensor(x) or x.dim() != 4:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{name} must be a (B, C, H, W) tensor of [0, 1] pixels, got {shape}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor of [0, 1] pixels, got dtype {x.dtype}")
    if x1.shape[0] != x2.shape[0] or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 and x2 must have the same batch size and channels, got {tuple(x1.shape)} and {tuple(x2.shape)}")


def _check_inputs(x1, x2, g1, g2, block, search_window, search_step, method):
    for name, g, x in (("g1", g1, x1), ("g2", g2, x2)):
        if not isinstance(g, dict) or "crop" not in g or "flip" not in g:
            raise ValueError(f"{name} must be a batched geometry dict (keys crop, flip, out_size, source_size)")
        if g["crop"].dim() != 2 or g["crop"].shape[0] != x.shape[0]:
            raise ValueError(f"{name} describes {tuple(g['crop'].shape[:-1])} views but the batch holds {x.shape[0]}; "
                             "pass the batched geometry of the same batch")
        if "out_size" in g and not bool((g["out_size"].to(torch.long).cpu() == torch.tensor(x.shape[-2:])).all()):
            raise ValueError(f"{name}['out_size'] does not match the view size {tuple(x.shape[-2:])}")
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; expected one of {METHODS}")
    if block < 1:
        raise ValueError(f"block_size must be positive, got {block}")
    for name, x in (("x1", x1), ("x2", x2)):
        if block > min(x.shape[-2:]):
            raise ValueError(f"block_size {block} is larger than {name} ({x.shape[-2]}x{x.shape[-1]})")
    if search_window < block:
        raise ValueError(f"search_window {search_window} must be at least the block size {block}")
    if search_step < 1:
        raise ValueError(f"search_step must be a positive integer, got {search_step}")
    # a sum is finite iff every pixel is (pixels are in [0, 1], far from overflow): one cheap reduction
    if not (bool(torch.isfinite(x1.sum())) and bool(torch.isfinite(x2.sum()))):
        raise ValueError("views contain NaN or inf pixels")


def match_blocks(x1: torch.Tensor, x2: torch.Tensor, g1: Geometry, g2: Geometry,
                 block_size: Optional[int] = None, psnr_threshold: float = 20.0,
                 search_window: Optional[int] = None, search_step: int = 1,
                 method: str = "diamond", engine: str = "auto") -> BlockMatch:
    """Match every block of view 1 in view 2 and build the removal masks (§4.1, App. B).

    Args:
        x1, x2: (B, C, H, W) views as un-normalised [0, 1] pixels (see ``denormalize``).
        g1, g2: batched geometry dicts of the two views (:mod:`simwnw_hf.data.geometry`).
        block_size: block side; default :func:`default_block_size` of view 1's height.
        psnr_threshold: a pair with PSNR >= this (dB) is similar and removed (paper: 20).
        search_window: side of the square search region in view 2 (default ``2 * block_size``).
        search_step: candidate top-lefts are multiples of this in view 2 (1 for CNNs, patch size for ViTs).
        method: ``"diamond"`` (Zhu & Ma 2000) or ``"exhaustive"`` (every candidate of the same window).
        engine: how the diamond search runs (:data:`ENGINES`); every engine returns the same bits.
    """
    _check_views(x1, x2)
    if engine not in ENGINES:
        raise ValueError(f"unknown matching engine {engine!r}; expected one of {ENGINES}")
    jit_ok = x1.device.type == "cpu" and x1.dtype == torch.float32 and x2.dtype == torch.float32
    if engine == "numba" and not jit_ok:
        raise ValueError(f"engine='numba' needs float32 CPU views, got {x1.dtype}/{x2.dtype} on {x1.device}; "
                         "use engine='auto' or 'torch'")
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
    jit = None
    if method == "diamond" and engine != "torch" and jit_ok:
        from simwnw_hf.simwnw import matching_jit as jit   # numba compiles on first use (cached on disk)
        if engine == "numba" and not jit.available():
            raise RuntimeError("engine='numba' but numba cannot be used here; install numba or use engine='torch'")
    tiles = jit.cut_tiles(x1, src_yx, mirror, block) if jit is not None else None
    score = _PairPSNR(x1, x2, src_yx, block, mirror, lo, hi, search_step, tiles=tiles)
    best = None
    if jit is not None:
        best = jit.diamond_search(score, start.reshape(-1, 2), max_moves=score.ly * score.lx)
        if best is None:     # numba failed (said once): start the torch search on a clean cache
            score.cache.fill_(float("nan"))
            score.evaluations = 0
            jit = None
    if best is None:
        if method == "diamond":
            best = _diamond_search(score, start.reshape(-1, 2), max_moves=score.ly * score.lx)
        else:
            best = _exhaustive_search(score)
    n_pairs = best.shape[0]
    best_psnr = score(torch.arange(n_pairs, device=device), best[:, None])[:, 0]   # cached: no new evaluation
    if score.evaluations_search is None:
        evaluations, rechecks = score.evaluations, 0
    else:                    # numba: the search's SSDs; exact float32 PSNRs (ties, reported values) apart
        evaluations, rechecks = score.evaluations_search, score.evaluations
    nb = src_yx.shape[0]
    match_yx = (best * search_step).view(batch, nb, 2)
    best_psnr = best_psnr.view(batch, nb)
    similar = best_psnr >= psnr_threshold
    mask1, mask2 = (removal_masks if jit is None else jit.removal_masks)(src_yx, match_yx, similar, block,
                                                                          (h1, w1), (h2, w2))
    removal = 0.5 * (_mask_mean(mask1) + _mask_mean(mask2))
    return BlockMatch(
        src_yx=src_yx, match_yx=match_yx, psnr=best_psnr, similar=similar, mask1=mask1, mask2=mask2,
        psnr_evaluations=evaluations, removal_ratio=float(removal),
        overhead_flops=evaluations * psnr_flops(block, channels), block_size=block, exact_rechecks=rechecks,
    )


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the numba engine's kernels on a tiny match, here.

    Why: the first match of a process pays ~1.4 s CPU for importing numba and loading the kernels, and
    DataLoader workers are fresh processes, so an 8-step run's worker matching cost 3x its steady state.
    ``PlanInLoader`` calls this before the workers fork, so they inherit the loaded kernels.
    """
    from simwnw_hf.simwnw import matching_jit

    if not matching_jit.available():
        return
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    geometry = [{k: v[None] for k, v in make_geometry(0, 0, 8, 8, flip, (8, 8), (8, 8)).items()}
                for flip in (False, True)]
    match_blocks(x, x.flip(-1), geometry[0], geometry[1], block_size=4)


def exhaustive_match(x1: torch.Tensor, x2: torch.Tensor, g1: Geometry, g2: Geometry, **kwargs) -> BlockMatch:
    """Reference for :func:`match_blocks`: every candidate of the same search window is evaluated."""
    if kwargs.get("method", "exhaustive") != "exhaustive":
        raise ValueError("exhaustive_match always uses method='exhaustive'")
    kwargs["method"] = "exhaustive"
    return match_blocks(x1, x2, g1, g2, **kwargs)
