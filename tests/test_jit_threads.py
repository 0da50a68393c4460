"""``jit_threads.run_split``: contiguous shares covering the range once, in order, on torch's thread count."""

import os
import signal
import threading

import pytest
import torch

from simwnw_hf.simwnw import jit_threads


@pytest.mark.parametrize("threads,total", [(1, 7), (2, 7), (3, 2), (4, 9), (2, 1)])
def test_shares_cover_the_range_in_order(threads, total):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seen = jit_threads.run_split(lambda lo, hi: (lo, hi, threading.get_ident()), total)
    finally:
        torch.set_num_threads(before)
    assert len(seen) == min(threads, total)
    assert seen[0][0] == 0 and seen[-1][1] == total
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(seen, seen[1:]))
    assert seen[0][2] == threading.get_ident()  # the caller's thread runs the first share
    if len(seen) > 1:
        assert {s[2] for s in seen[1:]} != {threading.get_ident()}


def test_pool_is_rebuilt_in_a_forked_child():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        jit_threads.run_split(lambda lo, hi: hi - lo, 4)  # the parent's pool exists
        pid = os.fork()
        if pid == 0:  # a DataLoader worker: the parent's pool threads do not exist here
            signal.alarm(30)  # a stale pool would wait forever: fail instead
            ok = jit_threads.run_split(lambda lo, hi: hi - lo, 4) == [2, 2]
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        torch.set_num_threads(before)
    assert os.waitstatus_to_exitcode(status) == 0


def test_shares_run_on_torchs_openmp_team_and_errors_reach_the_caller():
    """Where torch runs on GNU OpenMP, share ``i`` is team member ``i`` (torch's workers, not a pool),
    and an exception in any share is raised in the calling thread."""
    omp = jit_threads._torch_gomp()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if omp is not None:
            assert jit_threads.run_split(lambda lo, hi: omp[1](), 6) == [0, 1]

        def fail_second(lo, hi):
            if lo > 0:
                raise ValueError(f"share {lo}-{hi}")
            return hi - lo
        with pytest.raises(ValueError, match="share 3-6"):
            jit_threads.run_split(fail_second, 6)
        assert jit_threads.run_split(lambda lo, hi: hi - lo, 6) == [3, 3]  # nothing left behind
    finally:
        torch.set_num_threads(before)
    if omp is None:
        pytest.skip("torch does not run on GNU OpenMP here: the pool path was tested")
