"""glibc malloc tuning for CPU training (simwnw_hf/train/allocator.py): applied, or left alone with a reason."""

import os
import platform
import subprocess
import sys

import pytest

from simwnw_hf.train.allocator import tune_malloc

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="glibc only")

# three 30 MB tensors allocated, written and freed per round; minor page faults of the last two of six
# rounds (the first ones may land on pages never touched before)
_ROUNDS = """
import resource, sys, torch
from simwnw_hf.train.allocator import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc({})[0]
faults = []
for _ in range(6):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ts = [torch.empty(30 * 2**20 // 4).fill_(1.0) for _ in range(3)]
    del ts
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sum(faults[4:]))
"""


def _faults(mode: str) -> int:
    # glibc's defaults adapt to the first frees, so "default" pins them at their starting values: every
    # block above 128 KiB is a fresh mapping and the heap is trimmed above 128 KiB free
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072") if mode == "default" \
        else {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_malloc_stops_refaulting_freed_memory():
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 40_000  # 2 rounds x 90 MB of fresh 4 KiB pages
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


@pytest.mark.parametrize("flag", [True, False])
def test_trainer_tunes_malloc_on_cpu_unless_told_not_to(tmp_path, monkeypatch, capsys, flag):
    import simwnw_hf.train.trainer as trainer
    from test_training import tiny

    calls = []
    monkeypatch.setattr(trainer, "tune_malloc", lambda: calls.append(1) or (True, "tuned for the test"))
    trainer.train(tiny(tmp_path, max_steps=1, save_every=1, malloc_tuning=flag))
    assert calls == ([1] if flag else [])
    assert ("tuned for the test; --no-malloc-tuning keeps glibc's defaults" in capsys.readouterr().out) is flag
