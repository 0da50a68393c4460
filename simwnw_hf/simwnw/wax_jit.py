"""Spatial waxing's whole decision in one compiled pass per image (numba), with a torch twin.

Why: spatial waxing (``lean_exec.wax_spatial_compact``) runs at every waxing point (about 30 a ResNet-50
step). In tensor ops it is a ring distance by dilations, a listing of the band, gathers of both views'
activations, a peak pass, per-ring block sums by ``index_add`` and masks grown by scatters: a few dozen
small ops per call, each a pass over a (B, H*W) or (B, C, P) tensor plus its dispatch. Profiled in a
ResNet-50 224 px step (2 threads, AMD VM, run L of ``benchmarks/results/simwnw_step.md``) the small ops
were about 45 ms and the one-read kernel for the errors and the MAX 58 ms of the waxing's 86-120 ms.
Here one loop per image does all of it: ring distance, band, one read of each (channel, pixel) row of
both maps for the channel's MAX and the band pixels' errors, ring-by-ring block decisions and mask
growth; the images are split over torch's thread count (``jit_threads.run_split``).

The numbers are those of ``masks.wax(decision="spatial")``: differences and scaled squares in the maps'
dtype (float32), summed over channels and over a block's pixels in float64 (the reference sums in
float32 in its own order, so a sum within rounding of the threshold could be decided differently; the
masks are compared with the reference in ``tests/test_wax_jit.py`` and ``tests/test_lean_exec.py``).
Maps holding NaN are not decided alike (the loop's maximum skips NaN; ``amax`` returns it).

numba is a dependency; where it cannot be imported or compile, or the maps are not CPU float32,
:func:`spatial_wax` returns None and the caller runs the tensor-op twin (one warning if numba is broken).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch

from .jit_threads import run_split
from .masks import Correspondence

__all__ = ["SpatialGrowth", "inverse_peak", "ring_errors_torch", "spatial_wax", "zero_grown_"]

_ERROR: Optional[str] = None
try:  # a broken numba install must leave waxing working (the torch twin)
    import numba
    import numpy as np
except Exception as err:  # noqa: BLE001
    numba = None
    _ERROR = f"{type(err).__name__}: {err}"


def _row_max_py(row1, row2):
    """max of two float32 rows and 0 (a maximum does not round: any order gives the same number)."""
    m = np.float32(0.0)
    for j in range(row1.shape[0]):
        m = max(m, max(row1[j], row2[j]))
    return m


def _row_abs_max_py(row1, row2):
    """max |a| of two float32 rows."""
    m = np.float32(0.0)
    for j in range(row1.shape[0]):
        m = max(m, max(abs(row1[j]), abs(row2[j])))
    return m


def _spatial_wax_py(a1, a2, inv, own_peak, nonneg, p1, p2, valid, owner, target, h, w, max_rings, nb, limit,
                    grow1, grow2, tested, b0, b1):
    """Spatial waxing of images ``b0 <= b < b1``: ``grow1``/``grow2`` (B, H*W) marks and ``tested`` (B,).

    Per image: the Chebyshev distance to the positions removed in view 1 (``p1``), capped at
    ``max_rings + 1`` and found ring by ring as ``masks.ring_distance`` (ring ``k``: not reached yet,
    a neighbour on ring ``k - 1``); the band of ring pixels with a counterpart (``valid``); one read
    of both maps (B, C, H*W), channel-outer, for the channel's MAX (``own_peak``; ``nonneg``: the maps
    are >= 0, so ``max a``) or ``1 / MAX`` from ``inv`` (B, C), and the normalised squared errors of
    the band pixels whose counterpart is kept in view 2 (``p2``); then ring by ring, per owning block,
    the error sum against ``limit`` (``10^(-threshold/10) * C``) times the tested pixels, and the
    pixels of passing blocks marked in ``grow1`` and at their counterparts in ``grow2``.
    """
    hw = h * w
    far = max_rings + 1
    dist = np.empty(hw, np.int64)
    band = np.empty(hw, np.int64)
    tg = np.empty(hw, np.int64)
    ok = np.empty(hw, np.bool_)
    acc = np.empty(hw, np.float64)
    alive = np.empty(nb, np.bool_)
    se = np.empty(nb, np.float64)
    cnt = np.empty(nb, np.int64)
    for b in range(b0, b1):
        for q in range(hw):
            dist[q] = 0 if p1[b, q] else far
        for k in range(1, max_rings + 1):
            for y in range(h):
                for x in range(w):
                    if dist[y * w + x] != far:
                        continue
                    for yy in range(max(y - 1, 0), min(y + 2, h)):
                        for xx in range(max(x - 1, 0), min(x + 2, w)):
                            if dist[yy * w + xx] == k - 1:
                                dist[y * w + x] = k
        n = 0
        comparable = 0
        for q in range(hw):
            if 1 <= dist[q] <= max_rings and valid[b, q]:
                band[n] = q
                tg[n] = target[b, q]
                ok[n] = not p2[b, tg[n]]
                comparable += ok[n]
                acc[n] = 0.0
                n += 1
        if comparable > 0:  # else nothing to read: no error enters a decision
            for c in range(a1.shape[1]):
                row1 = a1[b, c]
                row2 = a2[b, c]
                if own_peak:
                    m = _row_max(row1, row2) if nonneg else _row_abs_max(row1, row2)
                    iv = np.float32(1.0) / m if m > 0 else np.float32(0.0)  # a dead channel adds no error
                else:
                    iv = inv[b, c]
                for r in range(n):
                    if ok[r]:
                        d = (row1[band[r]] - row2[tg[r]]) * iv  # the maps' dtype, as the reference
                        acc[r] += d * d
        for j in range(nb):
            alive[j] = True
        count = 0
        for k in range(1, max_rings + 1):
            for j in range(nb):
                se[j] = 0.0
                cnt[j] = 0
            for r in range(n):
                o = owner[b, band[r]]
                if ok[r] and dist[band[r]] == k and alive[o]:  # tested: ring k of a still-growing block
                    se[o] += acc[r]
                    cnt[o] += 1
            for j in range(nb):
                count += cnt[j]
                if not se[j] <= limit * cnt[j]:  # as the reference's test; a block with no tested pixel passes
                    alive[j] = False
            for r in range(n):
                if dist[band[r]] == k and alive[owner[b, band[r]]]:
                    grow1[b, band[r]] = True
                    grow2[b, tg[r]] = True  # two pixels may share one counterpart
        tested[b] = count


def _zero_grown_py(y, before, after, b0, b1):
    """Zero ``y[b, :, q]`` (B, C, H*W) where ``after[b, q]`` and not ``before[b, q]``, images ``b0 <= b < b1``."""
    hw = y.shape[2]
    grown = np.empty(hw, np.int64)
    for b in range(b0, b1):
        n = 0
        for q in range(hw):
            if after[b, q] and not before[b, q]:
                grown[n] = q
                n += 1
        for c in range(y.shape[1]):
            row = y[b, c]
            for r in range(n):
                row[grown[r]] = 0.0


_kernel = _row_max = _row_abs_max = _zero_grown = None
if numba is not None:
    try:
        # nnan/nsz let LLVM vectorise the maximum (exact in any order; NaN maps are not decided alike anyway)
        _row_max = numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})(_row_max_py)
        _row_abs_max = numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})(_row_abs_max_py)
        _kernel = numba.njit(cache=True, nogil=True)(_spatial_wax_py)
        _zero_grown = numba.njit(cache=True, nogil=True)(_zero_grown_py)
    except Exception as err:  # noqa: BLE001
        _ERROR = f"{type(err).__name__}: {err}"
_WARNED = False


class SpatialGrowth(NamedTuple):
    """What one spatial waxing call adds: positions of both views and how many ring pixels it tested."""

    grow1: torch.Tensor  # (B, H*W) bool: pixels of view 1 that passed
    grow2: torch.Tensor  # (B, H*W) bool: their counterparts in view 2
    tested: int  # ring pixels whose error entered a decision (each over all C channels)


def _first_line(err: Exception) -> str:
    """``Type: first line of the message`` (200 characters at most), for the one fallback warning."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def inverse_peak(pk: torch.Tensor) -> torch.Tensor:
    """``1 / MAX``, 0 for a dead channel (MAX = 0): it adds no error (as ``masks.wax``)."""
    return torch.where(pk > 0, 1.0 / pk, torch.zeros_like(pk))


def ring_errors_torch(a1: torch.Tensor, a2: torch.Tensor, inv: torch.Tensor, img: torch.Tensor,
                      pos: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """(n,) normalised squared errors summed over channels, in tensor ops (the twin's errors; any device).

    ``a1``/``a2``: (B, C, N) maps; ``inv``: (B, C|1) ``1 / MAX``; ``img``/``pos``/``tgt``: (n,) image,
    view-1 pixel and view-2 counterpart of each tested pixel.
    """
    g1 = a1.transpose(1, 2)[img, pos]   # (n, C)
    g2 = a2.transpose(1, 2)[img, tgt]
    return ((g1 - g2) * inv[img]).square().sum(dim=1)


def spatial_wax(a1: torch.Tensor, a2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, corr: Correspondence,
                hw: tuple[int, int], psnr_threshold: float, max_rings: int, inv: Optional[torch.Tensor] = None,
                nonneg: bool = False) -> Optional[SpatialGrowth]:
    """The growth of ``masks.wax(decision="spatial")`` by the compiled loop, or None where it cannot run.

    ``a1``/``a2``: (B, C, H*W) float32 CPU maps; ``p1``/``p2``: (B, H*W) bool positions removed in every
    channel; ``corr`` at ``hw`` = (H, W); ``inv``: (B, C|1) ``1 / MAX`` (``peak="map"``), or None for the
    per-channel MAX taken in the same read (``peak="channel"``; ``nonneg``: the maps are >= 0).
    None (the caller runs its tensor-op twin): not CPU float32, or numba unavailable (said once).
    """
    global _ERROR, _WARNED
    cpu = a1.device.type == "cpu" and a1.dtype == a2.dtype == torch.float32
    if not cpu:
        return None
    if _kernel is None or _ERROR is not None:
        if not _WARNED:
            _WARNED = True
            warnings.warn(f"SimWnW waxing uses tensor ops (numba unavailable: {_ERROR})", RuntimeWarning, stacklevel=3)
        return None
    bsz, ch = a1.shape[:2]
    grow1 = torch.zeros(bsz, hw[0] * hw[1], dtype=torch.bool)
    grow2 = torch.zeros_like(grow1)
    tested = torch.zeros(bsz, dtype=torch.int64)
    own_peak = inv is None
    inv_c = torch.zeros(1, 1) if own_peak else inv.to(torch.float32).expand(bsz, ch).contiguous()
    limit = 10.0 ** (-psnr_threshold / 10.0) * ch
    args = (a1.numpy(), a2.numpy(), inv_c.numpy(), own_peak, bool(nonneg), p1.contiguous().numpy(),
            p2.contiguous().numpy(), corr.valid.contiguous().numpy(), corr.owner.contiguous().numpy(),
            corr.target.contiguous().numpy(), int(hw[0]), int(hw[1]), int(max_rings), int(corr.num_blocks),
            float(limit), grow1.numpy(), grow2.numpy(), tested.numpy())
    try:
        run_split(lambda b0, b1: _kernel(*args, b0, b1), bsz)
    except Exception as err:  # noqa: BLE001  (a compile failure: say it once, use tensor ops from now on)
        _ERROR = _first_line(err)
        return spatial_wax(a1, a2, p1, p2, corr, hw, psnr_threshold, max_rings, inv, nonneg)
    return SpatialGrowth(grow1, grow2, int(tested.sum()))


def zero_grown_(y: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> bool:
    """Write 0 into ``y`` (B, C, H, W) at the positions ``after`` removes and ``before`` did not, in place.

    ``before``/``after``: (B, 1, H, W) bool. For a ``y`` that is already 0 where ``before`` removed, this
    is ``y.mul_(~after)`` (``lean_exec.zero_relu_output_``) without a full pass: waxing grows masks by a
    thin band, and the multiply read and wrote every (channel, pixel) of both views at every waxing
    point. Runs outside autograd (no version bump; for outputs kept as aliases by a ReLU's backward).
    False (nothing written; the caller multiplies) where it cannot run: numba unavailable, not a
    contiguous CPU float32 map, masks not (B, 1, H, W).
    """
    bsz, ch, h, w = y.shape
    if (_zero_grown is None or _ERROR is not None or y.device.type != "cpu" or y.dtype != torch.float32
            or not y.is_contiguous() or before.shape != (bsz, 1, h, w) or after.shape != (bsz, 1, h, w)):
        return False
    args = (y.detach().view(bsz, ch, h * w).numpy(), before.reshape(bsz, h * w).contiguous().numpy(),
            after.reshape(bsz, h * w).contiguous().numpy())
    run_split(lambda b0, b1: _zero_grown(*args, b0, b1), bsz)
    return True
