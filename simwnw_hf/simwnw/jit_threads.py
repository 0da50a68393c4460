"""Run a GIL-releasing compiled loop over shares of a range on torch's intra-op thread count.

Why: a numba loop is single-threaded, while the dense step it is measured against uses every thread
torch is given; waxing's one-read kernel (``wax_jit``) alone was 2x slower than torch's ``amax`` at 2
threads. Each share writes disjoint outputs (images for waxing, block pairs for the matching's diamond
search, ``matching_jit.diamond_search``), so the shares need no locking. (The search split over a
Python pool gained nothing at 2 threads, 50 vs 47 ms per 224 px batch of 8; on torch's own team it
runs beside, not behind, torch's spinning worker.)

Where the shares run: on torch's own OpenMP team where torch uses GNU OpenMP (``libgomp`` in
``torch/lib``, the Linux wheels), by calling ``GOMP_parallel`` with a ctypes callback; else on a small
Python thread pool. Why not always the pool: after every parallel op torch's OpenMP workers spin for
a while on their core before sleeping, and a pool thread scheduled there shares the core with a
spinning worker: inside real ResNet-50 224 px b8 steps at 2 threads, waxing took 140 ms per step on the
pool and 110 ms on torch's team (``benchmarks/wax_in_situ.py --compare split``, run N of
``benchmarks/results/simwnw_step.md``). In a forked child (a DataLoader worker) the parent's OpenMP
team does not exist and GNU OpenMP is not fork-safe, so a child always uses the pool.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

import torch

__all__ = ["run_split"]

T = TypeVar("T")
_POOL: Optional[tuple] = None   # (pid, executor): threads do not survive fork, so one pool per process
_POOL_PREFIX = "simwnw-jit"
_IMPORT_PID = os.getpid()
_JOBS: dict = {}  # key -> (call, bounds, results): what each OpenMP team member runs
_KEYS = itertools.count(1)  # from 1: a c_void_p of 0 reaches the callback as None
_LOCK = threading.Lock()
_OMP: Optional[tuple] = None  # (GOMP_parallel, omp_get_thread_num, callback) once loaded
_OMP_TRIED = False


def _omp_body(key):
    """One OpenMP team member: its share of the job ``key`` (exceptions are kept, raised by the caller)."""
    call, bounds, results = _JOBS[key]
    i = _OMP[1]()
    try:
        results[i] = (True, call(bounds[i], bounds[i + 1]))
    except BaseException as err:  # noqa: BLE001  (re-raised in the calling thread)
        results[i] = (False, err)


def _torch_gomp() -> Optional[tuple]:
    """``GOMP_parallel`` and ``omp_get_thread_num`` of the libgomp torch runs on, or None."""
    global _OMP, _OMP_TRIED
    if _OMP_TRIED:
        return _OMP
    _OMP_TRIED = True
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    if not os.path.exists(path) or not torch.backends.openmp.is_available():
        return None
    try:
        lib = ctypes.CDLL(path)  # already loaded by torch: the same library, the same thread pools
        fn_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        parallel = lib.GOMP_parallel
        parallel.argtypes = [fn_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        parallel.restype = None
        thread_num = lib.omp_get_thread_num
        thread_num.restype = ctypes.c_int
        _OMP = (parallel, thread_num, fn_type(_omp_body))
    except (OSError, AttributeError):
        _OMP = None
    return _OMP


def _run_omp(omp, call, bounds) -> list:
    threads = len(bounds) - 1
    results: list = [None] * threads
    with _LOCK:
        key = next(_KEYS)
        _JOBS[key] = (call, bounds, results)
    try:
        omp[0](omp[2], key, threads, 0)  # ctypes releases the GIL; each member takes it to start its share
    finally:
        with _LOCK:
            del _JOBS[key]
    if any(r is None for r in results):  # the runtime gave fewer threads: run what was left here
        results = [r if r is not None else (True, call(bounds[i], bounds[i + 1])) for i, r in enumerate(results)]
    for ok, value in results:
        if not ok:
            raise value
    return [value for _, value in results]


def run_split(call: Callable[[int, int], T], total: int) -> list[T]:
    """``[call(lo, hi)]`` over contiguous shares ``[lo, hi)`` of ``range(total)``, one per thread.

    ``min(torch.get_num_threads(), total)`` shares; this thread runs the first (no extra runnable thread
    beside torch's own), torch's OpenMP workers or a small pool the rest (module docstring). Results
    are in share order. ``call`` must release the GIL (``numba.njit(nogil=True)``) for the shares to
    overlap. A ``call`` may itself call ``run_split``: OpenMP gives a nested region one thread, and a
    pool thread runs the nested shares itself (waiting on its own pool would never end).
    """
    global _POOL
    threads = min(torch.get_num_threads(), total)
    if threads <= 1:
        return [call(0, total)]
    bounds = [total * i // threads for i in range(threads + 1)]
    omp = _torch_gomp() if os.getpid() == _IMPORT_PID else None
    if omp is not None:
        return _run_omp(omp, call, bounds)
    if threading.current_thread().name.startswith(_POOL_PREFIX):
        return [call(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1]._max_workers < threads - 1:
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix=_POOL_PREFIX))
    jobs = [_POOL[1].submit(call, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    first = call(bounds[0], bounds[1])
    return [first, *(job.result() for job in jobs)]
