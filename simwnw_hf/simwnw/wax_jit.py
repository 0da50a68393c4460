"""Ring-pixel errors of spatial waxing in one compiled pass (numba), with a torch twin.

Why: spatial waxing (``lean_exec.wax_spatial_compact``) compares, for every ring pixel it tests, the two
views' activations in all channels. In tensor ops that is two gathers of (image, channel, pixel) values,
a subtract, a scale, a square and a channel sum, five passes over B x C x P values; profiled in a
ResNet-50 224 px step (2 threads) it was the largest part of waxing (about 70 of 200 ms). The loop here
reads each value once, in the maps' own (channel, pixel) order, and keeps only one number per pixel.

Both functions return ``sum_c ((a1[b, c, p] - a2[b, c, t]) * inv[b, c]) ** 2`` per tested pixel: the
differences and scaled squares in the maps' dtype, as the reference ``masks.wax`` computes them, summed
over channels (numba: in float64, then rounded once; torch: its own float reduction). The reference's
channel sum rounds in yet another order, so neither is bit-identical to it; the waxing decisions they
feed are compared with the reference in ``tests/test_lean_exec.py`` (identical masks).

numba is a dependency; where it cannot be imported or compile, :func:`ring_errors` uses the torch twin.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .jit_threads import run_split
from .masks import wax_peak

__all__ = ["inverse_peak", "peak_and_ring_errors", "ring_errors", "ring_errors_torch"]

_ERROR: Optional[str] = None
try:  # a broken numba install must leave waxing working (the torch twin)
    import numba
    import numpy as np
except Exception as err:  # noqa: BLE001
    numba = None
    _ERROR = f"{type(err).__name__}: {err}"


def _ring_errors_py(a1, a2, inv, starts, pos, tgt, acc, out, b0, b1):
    """``out[r]`` for the pixels ``starts[b]:starts[b + 1]`` of images ``b0 <= b < b1`` (``pos`` in
    view 1, ``tgt`` in view 2).

    Channel-outer, pixel-inner: each (image, channel) row of both maps is read once, in order (pixels
    come sorted), and ``acc`` (float64) collects the channel sum of every pixel.
    """
    per_channel = inv.shape[1] > 1
    for r in range(starts[b0], starts[b1]):
        acc[r] = 0.0
    for b in range(b0, b1):
        s, e = starts[b], starts[b + 1]
        if s == e:
            continue
        for c in range(a1.shape[1]):
            row1 = a1[b, c]
            row2 = a2[b, c]
            iv = inv[b, c] if per_channel else inv[b, 0]
            for r in range(s, e):
                q = (row1[pos[r]] - row2[tgt[r]]) * iv    # the maps' dtype, as the reference
                acc[r] += q * q
    for r in range(starts[b0], starts[b1]):
        out[r] = acc[r]


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


def _peak_ring_errors_py(a1, a2, starts, pos, tgt, nonneg, peak, acc, out, b0, b1):
    """``peak[b, c]`` (the per-channel MAX of both maps) and ``out`` with ``inv = 1 / peak``, in one read,
    for images ``b0 <= b < b1`` (float32 maps).

    Each (image, channel) row of both maps is scanned once for its maximum (``max |a|``, or ``max a``
    when ``nonneg``); the row is then still in cache for the errors of that image's pixels.
    """
    for r in range(starts[b0], starts[b1]):
        acc[r] = 0.0
    for b in range(b0, b1):
        s, e = starts[b], starts[b + 1]
        for c in range(a1.shape[1]):
            row1 = a1[b, c]
            row2 = a2[b, c]
            m = _row_max(row1, row2) if nonneg else _row_abs_max(row1, row2)
            peak[b, c] = m
            iv = np.float32(1.0) / m if m > 0 else np.float32(0.0)   # torch.where(pk > 0, 1 / pk, 0)
            for r in range(s, e):
                q = (row1[pos[r]] - row2[tgt[r]]) * iv
                acc[r] += q * q
    for r in range(starts[b0], starts[b1]):
        out[r] = acc[r]


_kernel = _peak_kernel = _row_max = _row_abs_max = None
if numba is not None:
    try:
        # nnan/nsz let LLVM vectorise the maximum (exact in any order; NaN maps are not decided alike anyway)
        _row_max = numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})(_row_max_py)
        _row_abs_max = numba.njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})(_row_abs_max_py)
        _kernel = numba.njit(cache=True, nogil=True)(_ring_errors_py)
        _peak_kernel = numba.njit(cache=True, nogil=True)(_peak_ring_errors_py)
    except Exception as err:  # noqa: BLE001
        _ERROR = f"{type(err).__name__}: {err}"
_WARNED = False


def _by_images(kernel, batch: int, *args) -> None:
    """``kernel(*args, b0, b1)`` over shares of the images, on torch's thread count (``jit_threads``).

    The maps are read at memory speed and torch's own ``amax`` uses every thread: one compiled thread
    alone was 2x slower than it at 2 threads. Each image's outputs are disjoint.
    """
    run_split(lambda b0, b1: kernel(*args, b0, b1), batch)


def _first_line(err: Exception) -> str:
    """``Type: first line of the message`` (200 characters at most), for the one fallback warning."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def _starts(img: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch + 1,) first row of each image's pixels in ``img``-sorted lists."""
    starts = torch.zeros(batch + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(img, minlength=batch), 0, out=starts[1:])
    return starts


def ring_errors_torch(a1: torch.Tensor, a2: torch.Tensor, inv: torch.Tensor, img: torch.Tensor,
                      pos: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """(n,) normalised squared errors summed over channels, in tensor ops (any device).

    ``a1``/``a2``: (B, C, N) maps; ``inv``: (B, C|1) ``1 / MAX``; ``img``/``pos``/``tgt``: (n,) image,
    view-1 pixel and view-2 counterpart of each tested pixel.
    """
    g1 = a1.transpose(1, 2)[img, pos]   # (n, C)
    g2 = a2.transpose(1, 2)[img, tgt]
    return ((g1 - g2) * inv[img]).square().sum(dim=1)


def ring_errors(a1: torch.Tensor, a2: torch.Tensor, inv: torch.Tensor, img: torch.Tensor, pos: torch.Tensor,
                tgt: torch.Tensor) -> torch.Tensor:
    """:func:`ring_errors_torch` by the compiled loop for CPU float32/float64 maps; ``img`` must be sorted.

    Falls back to the torch twin (one warning if numba is broken) elsewhere: CUDA tensors, other dtypes.
    """
    global _ERROR, _WARNED
    cpu = a1.device.type == "cpu" and a1.dtype in (torch.float32, torch.float64) and a1.dtype == a2.dtype
    if not cpu or _kernel is None or _ERROR is not None:
        if cpu and not _WARNED:
            _WARNED = True
            warnings.warn(f"SimWnW waxing uses tensor ops for ring errors (numba unavailable: {_ERROR})",
                          RuntimeWarning, stacklevel=3)
        return ring_errors_torch(a1, a2, inv, img, pos, tgt)
    n = pos.shape[0]
    out = torch.empty(n, dtype=a1.dtype)
    if n == 0:
        return out
    try:
        _by_images(_kernel, a1.shape[0], a1.numpy(), a2.numpy(), inv.to(a1.dtype).contiguous().numpy(),
                   _starts(img, a1.shape[0]).numpy(), pos.numpy(), tgt.numpy(), np.empty(n, dtype=np.float64),
                   out.numpy())
    except Exception as err:  # noqa: BLE001  (a compile failure: say it once, use tensor ops from now on)
        _ERROR = _first_line(err)
        return ring_errors(a1, a2, inv, img, pos, tgt)
    return out


def inverse_peak(pk: torch.Tensor) -> torch.Tensor:
    """``1 / MAX``, 0 for a dead channel (MAX = 0): it adds no error (as ``masks.wax``)."""
    return torch.where(pk > 0, 1.0 / pk, torch.zeros_like(pk))


def peak_and_ring_errors(a1: torch.Tensor, a2: torch.Tensor, img: torch.Tensor, pos: torch.Tensor,
                         tgt: torch.Tensor, nonneg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-channel peak (B, C), :func:`ring_errors` with ``inv = 1 / peak``) in one read of the maps.

    Why: the peak needs a pass over both maps anyway, and the maps are too large to stay in cache
    between two passes; the compiled loop computes a row's maximum and then that row's ring errors.
    The peak is ``masks.wax_peak(a1, a2, "channel", nonneg)`` exactly (a maximum does not round);
    maps holding NaN are not decided alike (the loop's maximum skips NaN; ``amax`` returns it).
    """
    global _ERROR
    compiled = _peak_kernel is not None and _ERROR is None
    if compiled and a1.device.type == "cpu" and a1.dtype == a2.dtype == torch.float32 and a1.shape[2] > 0:
        n = pos.shape[0]
        out = torch.empty(n, dtype=a1.dtype)
        peak = torch.empty(a1.shape[:2], dtype=a1.dtype)
        try:
            _by_images(_peak_kernel, a1.shape[0], a1.numpy(), a2.numpy(), _starts(img, a1.shape[0]).numpy(),
                       pos.numpy(), tgt.numpy(), bool(nonneg), peak.numpy(), np.empty(n, dtype=np.float64),
                       out.numpy())
            return peak, out
        except Exception as err:  # noqa: BLE001  (said once by ring_errors below)
            _ERROR = _first_line(err)
    pk = wax_peak(a1, a2, "channel", nonneg)
    return pk, ring_errors(a1, a2, inverse_peak(pk), img, pos, tgt)
