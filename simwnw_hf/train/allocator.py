"""Keep glibc's malloc from handing a CPU training step's memory back to the kernel between steps.

Why: a CPU step allocates and frees its activations and gradients (tens of MB each) every step. glibc
returns freed memory at the top of its heaps to the kernel (trimming) and serves large blocks from fresh
``mmap`` s, so the next step touches new pages: every 4 KiB page is a minor page fault, zeroed by the
kernel inside the convolution or kernel that first writes it. Measured in one process on a 2-vCPU
Intel VM (ResNet-50, 224 px, batch 8, 2 threads, 4 batches cycled, 8 interleaved repeats,
``benchmarks/malloc_tuning.py``, ``benchmarks/results/simwnw_step.md`` run M): with glibc's defaults
122-158 k faults and 0.32-0.45 s of system time per dense step, 136-208 k / 0.34-0.61 s per SimWnW
step; tuned, none (0.01 s). Wall time: in one run (a scratch predecessor of the same script) the dense step went 4.93 -> 4.36 s and the SimWnW
step 5.57 -> 4.69 s, in a second run both stayed within the machine's noise (4.56 -> 4.67 s, 4.83 ->
5.08 s). PyTorch's CPU launcher (``torch.backends.xeon.run_cpu``) treats the same cost by preloading
tcmalloc or jemalloc where it finds one; here it is ``mallopt`` on the running process: no preload, no
install.

The cost: memory freed by a step stays in the process for the next one (resident memory stays at the
peak the step reaches anyway). Blocks above 32 MiB (glibc's largest mmap threshold) still come from
fresh mappings. Nothing is changed where the user chose an allocator: another allocator preloaded, or
glibc's malloc settings given in the environment.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # <malloc.h>
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2); larger values are refused
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: effectively no trimming
TOP_PAD = 64 * 2**20
_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")


def tune_malloc(environ=None) -> tuple[bool, str]:
    """Turn glibc's trimming off and fix its mmap threshold at 32 MiB, unless the user chose otherwise.

    Returns ``(applied, why)``: ``why`` says what was set, or why nothing was (not glibc, another
    allocator in ``LD_PRELOAD``, malloc settings in the environment, ``mallopt`` refused).
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False, "not glibc: malloc left as it is"
    preload = env.get("LD_PRELOAD", "")
    for name in _PRELOADED:
        if name in preload:
            return False, f"{name} is preloaded: malloc left as it is"
    chosen = [k for k in _ENV if k in env] + (["GLIBC_TUNABLES"] if "glibc.malloc" in env.get("GLIBC_TUNABLES", "")
                                              else [])
    if chosen:
        return False, f"{', '.join(chosen)} set in the environment: malloc left as it is"
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = [libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD), libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                libc.mallopt(_M_TOP_PAD, TOP_PAD)]
    except (OSError, AttributeError) as exc:
        return False, f"mallopt unavailable ({exc}): malloc left as it is"
    if not all(done):
        return False, "mallopt refused the settings: malloc left as it is"
    return True, "glibc malloc keeps freed memory for the next step (no trimming, 32 MiB mmap threshold)"
