"""Spatial waxing's compiled decision loop (``simwnw.wax_jit.spatial_wax``) == the definition and its twin.

``masks.wax(decision="spatial")`` defines the growth; ``lean_exec._spatial_growth_torch`` is the tensor-op
twin that runs where numba cannot. Here: identical grown positions and tested counts on block-matched and
random masks (both peaks, ReLU maps, dead channels, images without a ring, odd sizes, 1 to 3 rings), the
same bits for any thread split, channels_last (strided) maps, and the fallback when numba cannot be used.
The executors that call it are held equal to the reference in ``test_lean_exec.py``.
"""

import warnings

import pytest
import torch

from simwnw_hf.simwnw import wax_jit
from simwnw_hf.simwnw.lean_exec import _spatial_growth_torch
from simwnw_hf.simwnw.masks import block_correspondence, wax, wax_peak

pytestmark = pytest.mark.skipif(wax_jit._kernel is None, reason="numba unavailable")


def _case(b=4, c=24, size=30, feat=(15, 13), block=6, seed=0, relu=False, noise=0.15):
    """Random similar blocks of a size x size image pair, their correspondence at ``feat``, maps and masks."""
    g = torch.Generator().manual_seed(seed)
    nby, nbx = size // block, size // block
    src = torch.stack(torch.meshgrid(torch.arange(nby) * block, torch.arange(nbx) * block, indexing="ij"), -1)
    src = src.reshape(-1, 2)
    nb = src.shape[0]
    match = (src[None] + torch.randint(-4, 5, (b, nb, 2), generator=g)).clamp(0, size - block)
    similar = torch.rand(b, nb, generator=g) < 0.4
    similar[1] = False  # an image with nothing removed: no ring
    corr = block_correspondence(src, match, similar, block, (size, size), feat)
    h, w = feat
    r1 = torch.rand(b, 1, h, w, generator=g) < 0.25
    r2 = torch.rand(b, 1, h, w, generator=g) < 0.25
    r1[1] = False
    a1 = torch.randn(b, c, h, w, generator=g)
    a2 = a1 + noise * torch.randn(b, c, h, w, generator=g) * torch.rand(1, c, 1, 1, generator=g) * 3
    a1[:, 3] = 0
    a2[:, 3] = 0  # a dead channel: MAX 0, no error
    if relu:
        a1, a2 = a1.relu(), a2.relu()
    return a1, a2, r1, r2, corr


def _growth(fn, a1, a2, r1, r2, corr, thr, rings, peak="channel", relu=False):
    b, c, h, w = a1.shape
    f1, f2 = a1.reshape(b, c, h * w), a2.reshape(b, c, h * w)
    inv = None if peak == "channel" else wax_jit.inverse_peak(wax_peak(f1, f2, peak, relu))
    return fn(f1, f2, r1.reshape(b, h * w), r2.reshape(b, h * w), corr, (h, w), thr, rings, inv, relu)


@pytest.mark.parametrize("peak,relu", [("channel", False), ("channel", True), ("map", False)])
@pytest.mark.parametrize("rings", [1, 2, 3])
def test_growth_equals_definition_and_twin(peak, relu, rings):
    grew = 0
    for seed, thr in ((0, 10.0), (1, 20.0), (2, 30.0), (3, 15.0)):
        a1, a2, r1, r2, corr = _case(seed=seed, relu=relu)
        c = a1.shape[1]
        got = _growth(wax_jit.spatial_wax, a1, a2, r1, r2, corr, thr, rings, peak, relu)
        twin = _growth(_spatial_growth_torch, a1, a2, r1, r2, corr, thr, rings, peak, relu)
        ref = wax(a1, a2, r1, r2, corr, thr, rings, decision="spatial", peak=peak)
        b, _, h, w = a1.shape
        assert torch.equal(r1.reshape(b, -1) | got.grow1, ref.removed1[:, 0].reshape(b, -1))
        assert torch.equal(r2.reshape(b, -1) | got.grow2, ref.removed2[:, 0].reshape(b, -1))
        assert torch.equal(got.grow1, twin.grow1) and torch.equal(got.grow2, twin.grow2)
        assert got.tested * c == float(ref.compared_pairs) and got.tested == twin.tested
        assert not got.grow1[1].any()  # no removed position: no ring
        grew += int(bool(got.grow1.any()))
    assert grew >= 2  # some thresholds grew masks, some did not


def test_passing_and_failing_rings_by_hand():
    """One 1 x 6 image: removed pixel 0, ring 1 = pixel 1, ring 2 = pixel 2, counterpart = same pixel."""
    a1 = torch.tensor([[[0.0, 1.0, 1.0, 0.5, 0.0, 0.0]]])
    a2 = torch.tensor([[[0.0, 1.0, 0.0, 0.5, 0.0, 0.0]]])  # ring 1 equal, ring 2 differs by the peak
    src, match = torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 1, 2, dtype=torch.long)
    corr = block_correspondence(src, match, torch.ones(1, 1, dtype=torch.bool), 1, (1, 6), (1, 6))
    r1 = torch.tensor([[True, False, False, False, False, False]])
    r2 = torch.zeros(1, 6, dtype=torch.bool)
    got = wax_jit.spatial_wax(a1, a2, r1, r2, corr, (1, 6), 20.0, 2)
    assert got.grow1.tolist() == [[False, True, False, False, False, False]] and got.tested == 2
    loose = wax_jit.spatial_wax(a1, a2, r1, r2, corr, (1, 6), -1.0, 2)  # 10^(0.1) > 1: every error passes
    assert loose.grow1.tolist() == [[False, True, True, False, False, False]]
    assert torch.equal(loose.grow2, loose.grow1)


def test_thread_split_gives_the_same_bits():
    a1, a2, r1, r2, corr = _case(b=7, c=40, seed=5)
    out = {}
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            out[threads] = _growth(wax_jit.spatial_wax, a1, a2, r1, r2, corr, 15.0, 2)
        finally:
            torch.set_num_threads(before)
    assert torch.equal(out[1].grow1, out[2].grow1) and torch.equal(out[1].grow2, out[2].grow2)
    assert out[1].tested == out[2].tested


def test_strided_maps_as_from_channels_last():
    """Maps of a channels_last model flatten to (B, C, N) views with channel stride 1: same growth."""
    a1, a2, r1, r2, corr = _case(seed=4)
    s1, s2 = a1.contiguous(memory_format=torch.channels_last), a2.contiguous(memory_format=torch.channels_last)
    assert not s1.reshape(*s1.shape[:2], -1).is_contiguous()
    got = _growth(wax_jit.spatial_wax, s1, s2, r1, r2, corr, 15.0, 2)
    want = _growth(wax_jit.spatial_wax, a1, a2, r1, r2, corr, 15.0, 2)
    assert torch.equal(got.grow1, want.grow1) and torch.equal(got.grow2, want.grow2) and got.tested == want.tested


def test_not_cpu_float32_or_without_numba_returns_none(monkeypatch):
    a1, a2, r1, r2, corr = _case(seed=2)
    assert _growth(wax_jit.spatial_wax, a1.double(), a2.double(), r1, r2, corr, 15.0, 2) is None
    monkeypatch.setattr(wax_jit, "_kernel", None)
    monkeypatch.setattr(wax_jit, "_WARNED", False)
    with pytest.warns(RuntimeWarning, match="waxing uses tensor ops"):
        assert _growth(wax_jit.spatial_wax, a1, a2, r1, r2, corr, 15.0, 2) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        assert _growth(wax_jit.spatial_wax, a1, a2, r1, r2, corr, 15.0, 2) is None
