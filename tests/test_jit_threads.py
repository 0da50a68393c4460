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


def _nested_shares() -> list:
    """``run_split`` over 2 shares at 2 threads, each share calling ``run_split`` over 4 itself:
    [(outer share's thread, [(lo, hi, thread) of its nested shares])]."""
    def inner(lo, hi):
        return lo, hi, threading.get_ident()

    def outer(lo, hi):
        return threading.get_ident(), jit_threads.run_split(inner, 4)
    return jit_threads.run_split(outer, 2)


def _check_nested(out: list, all_stay: bool) -> None:
    for i, (outer_thread, shares) in enumerate(out):
        assert [(lo, hi) for lo, hi, _ in shares] == [(0, 2), (2, 4)]
        if all_stay or i > 0:  # in a team member or a pool thread: no other thread is asked
            assert {t for _, _, t in shares} == {outer_thread}


def test_a_share_may_call_run_split_itself():
    """A nested call gets every share back. On OpenMP the nested region has one thread and the caller
    runs the shares the runtime did not (``_run_omp``'s fallback). On the pool (a forked child, as a
    DataLoader worker) the pool thread runs them itself: waiting on its own pool would hang, which
    the child's alarm turns into a failure."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if jit_threads._torch_gomp() is not None:
            _check_nested(_nested_shares(), all_stay=True)
        pid = os.fork()
        if pid == 0:
            signal.alarm(30)
            try:
                _check_nested(_nested_shares(), all_stay=False)
                code = 0
            except BaseException:  # noqa: BLE001  (reported through the exit code)
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        torch.set_num_threads(before)
    assert os.waitstatus_to_exitcode(status) == 0
