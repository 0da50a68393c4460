"""Spatial waxing's compiled ring errors (``simwnw.wax_jit``) == their tensor-op twin and the peak definition.

The waxing decisions these feed are held equal to the reference ``masks.wax`` in ``test_lean_exec.py``
(both engines); here the numbers themselves: the peak exactly, the errors to float rounding, the same bits
for any thread split, and the fallback when numba cannot be used.
"""

import warnings

import pytest
import torch

from simwnw_hf.simwnw import wax_jit
from simwnw_hf.simwnw.masks import wax_peak

pytestmark = pytest.mark.skipif(wax_jit._kernel is None, reason="numba unavailable")


def _case(b=5, c=37, n=61, pixels=150, seed=0, relu=False, empty_image=True):
    g = torch.Generator().manual_seed(seed)
    a1 = torch.randn(b, c, n, generator=g)
    a2 = a1 + 0.2 * torch.randn(b, c, n, generator=g)
    a1[:, 3] = 0
    a2[:, 3] = 0  # a dead channel: MAX 0, no error
    if relu:
        a1, a2 = a1.relu(), a2.relu()
    img = torch.randint(0, b, (pixels,), generator=g)
    if empty_image:
        img[img == 1] = 2  # an image without pixels
    img = img.sort().values  # pixels come grouped by image
    pos = torch.randint(0, n, (pixels,), generator=g)
    tgt = torch.randint(0, n, (pixels,), generator=g)
    return a1, a2, img, pos, tgt


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_peak_and_ring_errors_equal_definition(relu, threads):
    a1, a2, img, pos, tgt = _case(relu=relu)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pk, err = wax_jit.peak_and_ring_errors(a1, a2, img, pos, tgt, nonneg=relu)
    finally:
        torch.set_num_threads(before)
    want_pk = wax_peak(a1, a2, "channel", relu)
    assert torch.equal(pk, want_pk)  # a maximum does not round
    want = wax_jit.ring_errors_torch(a1, a2, wax_jit.inverse_peak(want_pk), img, pos, tgt)
    torch.testing.assert_close(err, want, rtol=2e-6, atol=0)
    # spelled out: one pixel's error over channels
    r = 7
    b, p, t = int(img[r]), int(pos[r]), int(tgt[r])
    inv = wax_jit.inverse_peak(want_pk)
    by_hand = sum(float(((a1[b, c, p] - a2[b, c, t]) * inv[b, c]) ** 2) for c in range(a1.shape[1]))
    assert float(err[r]) == pytest.approx(by_hand, rel=1e-6)


def test_thread_split_gives_the_same_bits():
    a1, a2, img, pos, tgt = _case(b=8, c=64, n=200, pixels=900, seed=3)
    inv = wax_jit.inverse_peak(wax_peak(a1, a2, "map"))
    out = {}
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            out[threads] = (wax_jit.peak_and_ring_errors(a1, a2, img, pos, tgt),
                            wax_jit.ring_errors(a1, a2, inv, img, pos, tgt))
        finally:
            torch.set_num_threads(before)
    assert torch.equal(out[1][0][0], out[2][0][0]) and torch.equal(out[1][0][1], out[2][0][1])
    assert torch.equal(out[1][1], out[2][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ring_errors_with_map_peak_equal_twin(dtype):
    a1, a2, img, pos, tgt = _case(seed=1)
    a1, a2 = a1.to(dtype), a2.to(dtype)
    inv = wax_jit.inverse_peak(wax_peak(a1, a2, "map"))  # (B, 1): one MAX per map
    assert inv.shape == (a1.shape[0], 1)
    got = wax_jit.ring_errors(a1, a2, inv, img, pos, tgt)
    assert got.dtype == dtype
    torch.testing.assert_close(got, wax_jit.ring_errors_torch(a1, a2, inv, img, pos, tgt),
                               rtol=2e-6 if dtype == torch.float32 else 1e-12, atol=0)
    assert wax_jit.ring_errors(a1, a2, inv, img[:0], pos[:0], tgt[:0]).shape == (0,)


def test_without_numba_one_warning_and_the_twin(monkeypatch):
    a1, a2, img, pos, tgt = _case(seed=2)
    monkeypatch.setattr(wax_jit, "_kernel", None)
    monkeypatch.setattr(wax_jit, "_peak_kernel", None)
    monkeypatch.setattr(wax_jit, "_WARNED", False)
    with pytest.warns(RuntimeWarning, match="tensor ops for ring errors"):
        pk, err = wax_jit.peak_and_ring_errors(a1, a2, img, pos, tgt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        again = wax_jit.ring_errors(a1, a2, wax_jit.inverse_peak(pk), img, pos, tgt)
    assert torch.equal(pk, wax_peak(a1, a2, "channel"))
    assert torch.equal(err, again)
    assert torch.equal(err, wax_jit.ring_errors_torch(a1, a2, wax_jit.inverse_peak(pk), img, pos, tgt))


def test_strided_maps_as_from_channels_last():
    """Maps of a channels_last model flatten to (B, C, N) views with channel stride 1: same numbers."""
    a1, a2, img, pos, tgt = _case(seed=4)
    s1, s2 = a1.transpose(1, 2).contiguous().transpose(1, 2), a2.transpose(1, 2).contiguous().transpose(1, 2)
    assert not s1.is_contiguous()
    pk, err = wax_jit.peak_and_ring_errors(s1, s2, img, pos, tgt)
    want_pk, want = wax_jit.peak_and_ring_errors(a1, a2, img, pos, tgt)
    assert torch.equal(pk, want_pk) and torch.equal(err, want)
