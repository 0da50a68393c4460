"""Run a GIL-releasing compiled loop over shares of a range on torch's intra-op thread count.

Why: a numba loop is single-threaded, while the dense step it is measured against uses every thread
torch is given; waxing's one-read kernel (``wax_jit``) alone was 2x slower than torch's ``amax`` at 2
threads. Each share writes disjoint outputs (images), so plain Python threads are enough (numba's
``prange`` pool is not safe under concurrent callers, and it would add a second thread pool). Block
matching's search was tried split over pairs the same way and gained nothing measurable at 2 threads
(50 vs 47 ms per 224 px batch of 8, 12 interleaved rounds), so it stays on one thread.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

import torch

__all__ = ["run_split"]

T = TypeVar("T")
_POOL: Optional[tuple] = None   # (pid, executor): threads do not survive fork, so one pool per process


def run_split(call: Callable[[int, int], T], total: int) -> list[T]:
    """``[call(lo, hi)]`` over contiguous shares ``[lo, hi)`` of ``range(total)``, one per thread.

    ``min(torch.get_num_threads(), total)`` shares; this thread runs the first (no extra runnable thread
    beside torch's own), a small pool the rest. Results are in share order. ``call`` must release the GIL
    (``numba.njit(nogil=True)``) for the shares to overlap.
    """
    global _POOL
    threads = min(torch.get_num_threads(), total)
    if threads <= 1:
        return [call(0, total)]
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1]._max_workers < threads - 1:
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="simwnw-jit"))
    bounds = [total * i // threads for i in range(threads + 1)]
    jobs = [_POOL[1].submit(call, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    first = call(bounds[0], bounds[1])
    return [first, *(job.result() for job in jobs)]
