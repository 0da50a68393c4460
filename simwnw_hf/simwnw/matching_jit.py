"""Diamond search as one compiled loop per pair (numba), certified to choose what the torch path chooses.

Why: the batched torch diamond search (:mod:`~simwnw_hf.simwnw.block_matching`) spends about 1% of a
dense ResNet-50 224 px step (issue 10 asks for 0.5%), and profiling shows why: a candidate block is
copied out of the view, then subtracted, squared and summed in three more passes (memory-bound), and 26
diamond iterations with a long tail each pay ~30 small tensor ops of bookkeeping. Here every pair runs
its whole search in compiled code: a candidate's sum of squared differences is one loop over the view
and the tile (no copy), and the bookkeeping is scalar code.

Exactness: the torch path is the definition (its PSNR of a block pair is one float32 ``torch.sum`` of
the float32 squared differences, bit-identical to :mod:`~simwnw_hf.simwnw.matching_reference`). This
loop sums the same float32 differences in float64 (any order, vectorised), which is not bit-identical
to ``torch.sum``, so it never reports its own values: it only decides comparisons it can *prove* go
the same way. Both sums lie within ``gamma = n u / (1 - n u)`` (``u = 2**-24``, ``n`` terms) of the
exact sum of the same non-negative terms (the float64 one far closer), so when a pattern point's float64
sum exceeds the smallest one by more than the factor :func:`certified_ratio` (1 + 4.2e-4 for 30x30 RGB
blocks, 0.0018 dB), that point's torch PSNR is strictly lower (by more than any rounding of the
log) and it cannot be the torch path's choice. When more than one point stays within that factor (ties,
flat regions), the driver asks the torch path for those points' exact PSNRs and the loop picks the
first maximum among them, as ``argmax`` does. The final PSNR of each pair is always the torch path's.
So matches, PSNRs, masks and evaluation counts equal the torch path's bit for bit
(``tests/test_block_matching.py``); the exact PSNRs computed on the way are counted apart
(``BlockMatch.exact_rechecks``), not as evaluations of the search.

numba is a dependency; where it cannot be imported (or compiling fails) :func:`available` says so and
``match_blocks`` keeps the torch path, with one warning.
"""

from __future__ import annotations

import threading
import warnings
from typing import Optional

import numpy as np
import torch

from .jit_threads import run_split

__all__ = ["available", "certified_ratio", "cut_tiles", "diamond_search", "exact_ssd", "removal_masks"]

_U32 = 2.0 ** -24
_NUMBA_ERROR: Optional[str] = None
try:  # numba is a dependency; a broken install must still leave the torch path working
    import numba
except Exception as err:  # noqa: BLE001
    numba = None
    _NUMBA_ERROR = f"{type(err).__name__}: {err}"

_WARNED = False


def available() -> bool:
    """Whether the compiled search can run (numba imports and its first compile did not fail)."""
    return numba is not None and _NUMBA_ERROR is None


def _warn_once(reason: str) -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(f"SimWnW block matching uses the torch diamond search ({reason}); same matches, "
                      "about three times the time", RuntimeWarning, stacklevel=3)


_SCRATCH = threading.local()


def _scratch(name: str, numel: int, dtype) -> np.ndarray:
    """A 1-D buffer of ``numel`` reused across calls (per thread, grow-only).

    Why: a match allocates several MB (tiles, SSD cache, squared differences); fresh allocations of
    that size are fresh pages, and their page faults were ~10% of a 224 px match here.
    """
    pool = _SCRATCH.__dict__.setdefault("pool", {})
    buf = pool.get(name)
    if buf is None or buf.size < numel or buf.dtype != np.dtype(dtype):
        buf = pool[name] = np.empty(numel, dtype=dtype)
    return buf[:numel]


def certified_ratio(terms: int) -> float:
    """Factor by which a float64 SSD must exceed the pattern's smallest to prove its torch PSNR lower.

    With ``g`` the bound on the relative error of a float32 sum of ``terms`` non-negative values (plus
    2u for the squares and slack) and 1e-12 for the float64 one: a point whose float64 SSD exceeds
    ``m * ratio`` has a torch SSD more than ``1 + 1e-4`` times the torch SSD of the point achieving
    ``m``, i.e. a PSNR lower by more than 4e-4 dB, far above the few float32 ulps of the PSNR formula.
    """
    nu = (terms + 2) * _U32
    g = nu / (1.0 - nu)
    e64 = 1e-12
    return (1.0 + g) / (1.0 - g) * (1.0 + e64) / (1.0 - e64) * (1.0 + 1e-4)


def _absolute_slack(terms: int) -> float:
    """SSDs this small (float32 underflow of squares, overflow of 1/MSE) are always settled exactly."""
    return terms * 2.0 ** -100


# Zhu & Ma patterns, centre first (same order as block_matching.LARGE_DIAMOND / SMALL_DIAMOND).
_LARGE = np.array([[0, 0], [-2, 0], [-1, -1], [-1, 1], [0, -2], [0, 2], [1, -1], [1, 1], [2, 0]], dtype=np.int64)
_SMALL = np.array([[0, 0], [-1, 0], [0, -1], [0, 1], [1, 0]], dtype=np.int64)


def _search_py(x2f, tiles, image, lo, hi, centre, phase, large_done, final, approx, exact, req,
               ly, lx, step, block, channels, height2, width2, max_moves, ratio, slack, large, small,
               n_lo, n_hi):
    """Advance every unfinished pair ``n_lo <= n < n_hi`` until it ends or needs exact PSNRs.

    Arrays: ``x2f`` view 2 channels-last, flat float32; ``tiles`` (N, block * block * C) float32 view-1
    tiles (mirrored where the flips differ); ``image`` (N,) image of each pair; ``lo``/``hi``/``centre``/
    ``final`` (N, 2) lattice points; ``phase`` (N,) 0 = large diamond, 1 = small, 2 = done;
    ``large_done`` (N,) large-diamond evaluations so far (the torch loop runs at most ``max_moves``);
    ``approx`` (N * ly * lx) float64 SSD cache (NaN = not computed), ``exact`` the torch path's float32
    PSNR cache with the same slots (NaN = not computed). Pairs needing exact values write their slots
    to ``req`` and keep their state; a pair that ends asks for its final point's exact PSNR the same
    way. A call asks for at most 9 values per pair, written from ``req[9 * n_lo]`` on, so calls on
    disjoint pair ranges touch disjoint memory and can run at once. Returns (SSDs computed, exact values
    requested, pairs left waiting for them).
    """
    run = block * channels
    row_stride = width2 * channels
    evaluations = 0
    requested = 0
    blocked = 0
    vals = np.empty(9, dtype=np.float64)
    slots = np.empty(9, dtype=np.int64)
    inside = np.zeros(9, dtype=np.bool_)
    first = 9 * n_lo
    for n in range(n_lo, n_hi):
        while phase[n] < 2:
            pattern = large if phase[n] == 0 else small
            points = pattern.shape[0]
            smallest = np.inf
            for q in range(points):
                py = centre[n, 0] + pattern[q, 0]
                px = centre[n, 1] + pattern[q, 1]
                inside[q] = lo[n, 0] <= py <= hi[n, 0] and lo[n, 1] <= px <= hi[n, 1]
                if not inside[q]:
                    continue
                slot = (n * ly + (py - lo[n, 0])) * lx + (px - lo[n, 1])
                slots[q] = slot
                v = approx[slot]
                if np.isnan(v):
                    base = ((image[n] * height2 + py * step) * width2 + px * step) * channels
                    acc = 0.0
                    tile = tiles[n]
                    for i in range(block):
                        # slices, not offsets: numba then knows the indices are in range and vectorises
                        cand = x2f[base + i * row_stride: base + i * row_stride + run]
                        ref = tile[i * run: i * run + run]
                        for k in range(run):
                            d = cand[k] - ref[k]      # float32, as the torch path
                            acc += np.float64(d) * np.float64(d)
                    v = acc
                    approx[slot] = v
                    evaluations += 1
                vals[q] = v
                if v < smallest:
                    smallest = v
            limit = smallest * ratio + slack
            winner = -1
            count = 0
            for q in range(points):
                if inside[q] and vals[q] <= limit:
                    count += 1
                    if winner < 0:
                        winner = q
            if count > 1:       # not settled by the bound: the torch path's PSNRs decide (first maximum)
                missing = 0
                for q in range(points):
                    if inside[q] and vals[q] <= limit and np.isnan(exact[slots[q]]):
                        req[first + requested + missing] = slots[q]
                        missing += 1
                if missing > 0:
                    requested += missing
                    break
                winner = -1
                best = -np.inf
                for q in range(points):
                    if inside[q] and vals[q] <= limit:
                        e = exact[slots[q]]
                        if winner < 0 or e > best:
                            winner = q
                            best = e
            py = centre[n, 0] + pattern[winner, 0]
            px = centre[n, 1] + pattern[winner, 1]
            if phase[n] == 0:
                large_done[n] += 1
                if winner == 0:
                    phase[n] = 1
                else:
                    centre[n, 0] = py
                    centre[n, 1] = px
                    if large_done[n] >= max_moves:
                        phase[n] = 1
            else:
                final[n, 0] = py
                final[n, 1] = px
                phase[n] = 2
                if np.isnan(exact[slots[winner]]):   # the reported PSNR is the torch path's: ask for it now
                    req[first + requested] = slots[winner]
                    requested += 1
        if phase[n] < 2:
            blocked += 1
    return evaluations, requested, blocked


def _cut_tiles_py(x1f, batch, height, width, channels, src_yx, mirror, block, tiles):
    """View-1 tiles into ``tiles`` (B * nb, block * block * C) in (row, column, channel) order.

    A mirrored image's tile is read right to left (a flip mirrors content): column ``j`` of the tile
    is column ``x + block - 1 - j`` of the view, channels in their order (``_PairPSNR``'s flipped copy).
    """
    nb = src_yx.shape[0]
    run = block * channels
    for b in range(batch):
        for k in range(nb):
            y, x = src_yx[k, 0], src_yx[k, 1]
            tile = tiles[b * nb + k]
            for i in range(block):
                row = ((b * height + y + i) * width + x) * channels
                dst = tile[i * run:(i + 1) * run]
                src = x1f[row:row + run]
                if not mirror[b]:
                    for k in range(run):     # a loop, not slice assignment (5x slower per row in numba)
                        dst[k] = src[k]
                    continue
                for j in range(block):
                    for c in range(channels):
                        dst[j * channels + c] = src[(block - 1 - j) * channels + c]


def _squared_differences_py(x2f, tiles, rows, starts, run, out):
    """``out[q]`` = the float32 squared differences of query ``q``'s candidate and tile (``_PairPSNR._fill``).

    IEEE float32 subtract and multiply, no fast-math: the same values as ``cand.sub_(tile).square_()``,
    so ``out.sum(dim=1)`` by torch is bit-identical to the torch path's PSNR sums.
    """
    for q in range(rows.shape[0]):
        tile = tiles[rows[q]]
        dst = out[q]
        for i in range(starts.shape[1]):
            cand = x2f[starts[q, i]:starts[q, i] + run]
            ref = tile[i * run:(i + 1) * run]
            seg = dst[i * run:(i + 1) * run]
            for k in range(run):
                d = cand[k] - ref[k]
                seg[k] = d * d


def _paint_py(top_left, keep, block, mask):
    """``mask`` (B, H, W) True on the union of the ``block`` squares at ``top_left`` (B, nb, 2) where ``keep``."""
    for b in range(keep.shape[0]):
        for k in range(keep.shape[1]):
            if keep[b, k]:
                y, x = top_left[b, k, 0], top_left[b, k, 1]
                mask[b, y:y + block, x:x + block] = True


_search = _cut_tiles = _paint = _squared_differences = None
if numba is not None:
    try:
        _search = numba.njit(cache=True, nogil=True, fastmath={"reassoc"})(_search_py)
        _cut_tiles = numba.njit(cache=True, nogil=True)(_cut_tiles_py)
        _squared_differences = numba.njit(cache=True, nogil=True)(_squared_differences_py)
        _paint = numba.njit(cache=True, nogil=True)(_paint_py)
    except Exception as err:  # noqa: BLE001
        _NUMBA_ERROR = f"{type(err).__name__}: {err}"


def cut_tiles(x1: torch.Tensor, src_yx: torch.Tensor, mirror: torch.Tensor, block: int) -> Optional[torch.Tensor]:
    """``_PairPSNR``'s view-1 tiles (B * nb, block * block * C), or None where numba cannot run."""
    global _NUMBA_ERROR
    if not available():
        return None
    batch, channels, height, width = x1.shape
    x1f = x1.detach().permute(0, 2, 3, 1).contiguous().reshape(-1)     # free for match_pixels' layout
    size = (batch * src_yx.shape[0], block * block * channels)
    tiles = torch.from_numpy(_scratch("tiles", size[0] * size[1], np.float32)).view(size)   # float32: jit_ok
    try:
        _cut_tiles(x1f.numpy(), batch, height, width, channels, src_yx.numpy(), mirror.numpy(), block, tiles.numpy())
    except Exception as err:  # noqa: BLE001  (a compile failure: say it once, use the torch path)
        _NUMBA_ERROR = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        _warn_once(f"compiling the tile cut failed: {_NUMBA_ERROR[:200]}")
        return None
    return tiles


def exact_ssd(x2flat: torch.Tensor, tiles: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor,
              chunk_elements: int = 1 << 16) -> torch.Tensor:
    """(K,) SSDs of candidates (flat block-row ``starts`` (K, block) into the channels-last view 2) against
    tiles ``rows`` (K,), bit-identical to the torch path: the float32 squared differences of each query
    as one contiguous row, summed by ``torch.sum``. In chunks of one reused buffer (cache-sized)."""
    run = tiles.shape[1] // starts.shape[1]
    per = tiles.shape[1]
    step = max(1, chunk_elements // per)
    x2n, tn, rn, sn = x2flat.detach().numpy(), tiles.detach().numpy(), rows.numpy(), starts.numpy()
    out = []
    for s in range(0, rows.shape[0], step):
        e = min(rows.shape[0], s + step)
        buf = _scratch("squares", (e - s) * per, np.float32).reshape(e - s, per)
        _squared_differences(x2n, tn, rn[s:e], sn[s:e], run, buf)
        out.append(torch.from_numpy(buf).sum(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=tiles.dtype)


def removal_masks(src_yx: torch.Tensor, match_yx: torch.Tensor, similar: torch.Tensor, block: int,
                  size1, size2):
    """``block_matching.removal_masks`` painted block by block (the same union of squares)."""
    batch, nb = similar.shape
    keep = similar.numpy()
    masks = []
    for top_left, (h, w) in ((src_yx.expand(batch, nb, 2).contiguous(), size1), (match_yx, size2)):
        mask = torch.zeros(batch, h, w, dtype=torch.bool)
        _paint(top_left.numpy(), keep, block, mask.numpy())
        masks.append(mask)
    return masks[0], masks[1]


def diamond_search(score, start: torch.Tensor, max_moves: int) -> Optional[torch.Tensor]:
    """The chosen lattice points (N, 2) of ``block_matching._diamond_search(score, start, max_moves)``.

    ``score`` is the torch path's ``_PairPSNR`` (float32 CPU views): it supplies the tiles, the window
    lattice and, for the comparisons the bound cannot settle, exact PSNRs through its own cache (its
    ``evaluations`` then count those exact values). ``score.evaluations_search`` is set to the number of
    distinct SSDs the search computed, which equals what the torch path counts. Returns None (the caller
    falls back to the torch path) when the compiled loop is not available.
    """
    global _NUMBA_ERROR
    if not available():
        _warn_once(f"numba unavailable: {_NUMBA_ERROR}")
        return None
    n = score.tiles.shape[0]
    terms = score.tiles.shape[1]
    image = (torch.arange(n) // score.nb).numpy()
    lo, hi = score.lo.numpy(), score.hi.numpy()
    centre = start.clone().numpy()
    phase = np.zeros(n, dtype=np.int8)
    large_done = np.zeros(n, dtype=np.int64)
    final = np.zeros((n, 2), dtype=np.int64)
    approx = _scratch("approx", n * score.ly * score.lx, np.float64)
    approx.fill(np.nan)
    exact = score.cache.numpy()          # shares memory: exact values the torch path fills appear here
    req = np.empty(n * 9, dtype=np.int64)
    _, channels, height2, width2 = score.shape2
    args = (score.x2flat.detach().numpy(), score.tiles.detach().numpy(), image, lo, hi, centre, phase, large_done, final,
            approx, exact, req, score.ly, score.lx, score.step, score.block, channels, height2, width2,
            int(max_moves), certified_ratio(terms), _absolute_slack(terms), _LARGE, _SMALL)
    evaluations = 0
    try:
        while True:
            shares = run_split(lambda n_lo, n_hi: (n_lo, *_search(*args, n_lo, n_hi)), n)
            evaluations += sum(done for _, done, _, _ in shares)
            asked = [req[9 * n_lo: 9 * n_lo + requested] for n_lo, _, requested, _ in shares if requested]
            if asked:
                score.exact_at_slots(torch.from_numpy(np.concatenate(asked)))
            if not any(blocked for *_, blocked in shares):
                break
    except Exception as err:  # noqa: BLE001  (a compile failure: say it once, use the torch path)
        _NUMBA_ERROR = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        _warn_once(f"compiling the search failed: {_NUMBA_ERROR[:200]}")
        return None
    if not bool((phase == 2).all()):
        raise RuntimeError("compiled diamond search stopped with unfinished pairs")  # never: each call settles
    score.evaluations_search = evaluations
    return torch.from_numpy(final)
