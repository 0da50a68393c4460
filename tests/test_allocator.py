"""glibc malloc tuning for CPU training (simwnw_hf/train/allocator.py): applied, or left alone with a reason."""

import platform
import subprocess
import sys

import pytest

from simwnw_hf.train.allocator import tune_malloc

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="glibc only")

# three 30 MB tensors allocated, written and freed per round; minor page faults of the last two rounds
_ROUNDS = """
import resource, sys, torch
from simwnw_hf.train.allocator import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc({})[0]
faults = []
for _ in range(4):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ts = [torch.empty(30 * 2**20 // 4).fill_(1.0) for _ in range(3)]
    del ts
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sum(faults[2:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_malloc_stops_refaulting_freed_memory():
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 10_000  # glibc trims 90 MB freed at the top of the heap: the next round faults it in again
    assert tuned < default / 10


@pytest.mark.parametrize("env, named", [
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "jemalloc"),
])
def test_user_choice_is_left_alone(env, named):
    applied, why = tune_malloc(env)
    assert not applied and named in why


@glibc
def test_applies_without_user_settings():
    applied, why = tune_malloc({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})  # not a malloc setting
    assert applied and "no trimming" in why
