"""Waning against the dense conv it predicts, ring distances, and waxing on maps with known ring PSNR."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from simwnw_hf.simwnw.masks import (
    Correspondence, active_inputs, block_correspondence, ring_distance, wane, wax,
)


def _blocky_mask(b, c, h, w, block, p, gen):
    """Removed mask made of random ``block``-sized squares plus a few random pixels."""
    coarse = torch.rand(b, c, -(-h // block), -(-w // block), generator=gen) < p
    m = coarse.repeat_interleave(block, 2).repeat_interleave(block, 3)[..., :h, :w]
    return m | (torch.rand(b, c, h, w, generator=gen) < 0.05)


CONV_CASES = [  # kernel, stride, padding, dilation
    (3, 1, 1, 1), (3, 2, 1, 1), (7, 2, 3, 1), (1, 2, 0, 1), (1, 1, 0, 1), (3, 1, 0, 1), (3, 1, 2, 2), (5, 3, 2, 1),
]


@pytest.mark.parametrize("k,s,p,d", CONV_CASES)
def test_wane_matches_dense_conv_dependence(k, s, p, d):
    """An output is in the waned mask iff the dense conv output does not change when kept pixels change."""
    gen = torch.Generator().manual_seed(k * 100 + s * 10 + p + d)
    b, c, h, w = 2, 3, 17, 15
    removed = _blocky_mask(b, c, h, w, 4, 0.5, gen)
    x = torch.rand(b, c, h, w, generator=gen, dtype=torch.float64) * ~removed
    x_perturbed = x + (1.0 + torch.rand(b, c, h, w, generator=gen, dtype=torch.float64)) * ~removed
    # depthwise conv with random positive weights: per-channel dependence, no cancellation
    weight = 0.5 + torch.rand(c, 1, k, k, generator=gen, dtype=torch.float64)
    y = F.conv2d(x, weight, stride=s, padding=p, dilation=d, groups=c)
    y_perturbed = F.conv2d(x_perturbed, weight, stride=s, padding=p, dilation=d, groups=c)
    depends_on_kept = (y - y_perturbed).abs() > 1e-12
    waned = wane(removed, k, s, p, d)
    assert waned.shape == y.shape
    assert torch.equal(waned, ~depends_on_kept)
    # and the random-weight dense conv with all input channels: output skippable iff all channels waned
    weight_full = torch.randn(4, c, k, k, generator=gen, dtype=torch.float64)
    y_full = F.conv2d(x, weight_full, stride=s, padding=p, dilation=d)
    yp_full = F.conv2d(x_perturbed, weight_full, stride=s, padding=p, dilation=d)
    changed = ((y_full - yp_full).abs() > 1e-12).any(1)
    assert torch.equal(waned.all(1), ~changed)


def test_wane_padding_is_not_kept_and_3d_masks():
    removed = torch.zeros(1, 6, 6, dtype=torch.bool)
    removed[:, :3, :3] = True  # corner block touching the padding
    out = wane(removed, 3, 1, 1)
    assert out.shape == (1, 6, 6)
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[:, :2, :2] = True  # the corner keeps the padded side, erodes the inner side
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="bool"):
        active_inputs(removed.float()[:, None], 3)


def test_ring_distance_matches_bruteforce():
    gen = torch.Generator().manual_seed(0)
    removed = torch.rand(2, 2, 9, 11, generator=gen) < 0.08
    removed[1, 1] = False  # a channel with nothing removed
    dist = ring_distance(removed, max_rings=3)
    for b, c in itertools.product(range(2), range(2)):
        pts = removed[b, c].nonzero()
        for y, x in itertools.product(range(9), range(11)):
            if len(pts):
                d = int(torch.maximum((pts[:, 0] - y).abs(), (pts[:, 1] - x).abs()).min())
            else:
                d = 99
            assert int(dist[b, c, y, x]) == min(d, 4), (b, c, y, x)


def _shifted_pair(h1, dy, dx):
    """View 2 = view 1 moved by (dy, dx): h2[y + dy, x + dx] = h1[y, x] (zeros elsewhere)."""
    h2 = torch.zeros_like(h1)
    H, W = h1.shape[-2:]
    h2[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = h1[..., max(-dy, 0):H - max(dy, 0),
                                                                       max(-dx, 0):W - max(dx, 0)]
    return h2


def _square(h, w, y0, x0, size, ring=0):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[max(y0 - ring, 0):y0 + size + ring, max(x0 - ring, 0):x0 + size + ring] = True
    return m


def _ring(h, w, y0, x0, size, k):
    return _square(h, w, y0, x0, size, k) & ~_square(h, w, y0, x0, size, k - 1)


def test_wax_grows_rings_while_psnr_passes():
    """Known ring PSNRs: channel 0 passes ring 1 and fails ring 2; channel 1 fails ring 1 (ring 2 would
    pass, but growth stops at the first failure); channel 2 is identical and stops at max_rings."""
    H = W = 16
    bs, y0, x0, dy, dx = 4, 5, 4, 1, 2
    gen = torch.Generator().manual_seed(1)
    h1 = 0.2 + 0.3 * torch.rand(1, 3, H, W, generator=gen)
    h1[..., 0, 0] = 1.0  # peak |activation| = 1 in every channel (MAX of the PSNR)
    h2 = _shifted_pair(h1, dy, dx)
    r1 = _square(H, W, y0, x0, bs)
    err_pass, err_fail = 0.05, 0.2  # PSNR = 20 log10(1 / e): 26.0 dB and 14.0 dB vs threshold 20
    assert 20 * math.log10(1 / err_pass) > 20 > 20 * math.log10(1 / err_fail)
    ring1 = _shifted_pair(_ring(H, W, y0, x0, bs, 1)[None, None].float(), dy, dx)[0, 0].bool()
    ring2 = _shifted_pair(_ring(H, W, y0, x0, bs, 2)[None, None].float(), dy, dx)[0, 0].bool()
    h2[0, 0][ring1] += err_pass
    h2[0, 0][ring2] += err_fail
    h2[0, 1][ring1] += err_fail
    h2[0, 1][ring2] += err_pass
    corr = block_correspondence(torch.tensor([[y0, x0]]), torch.tensor([[[y0 + dy, x0 + dx]]]),
                                torch.tensor([[True]]), bs, (H, W), (H, W))
    r1b = r1[None, None]
    r2b = _shifted_pair(r1b.float(), dy, dx).bool()
    out = wax(h1, h2, r1b, r2b, corr, psnr_threshold=20.0, max_rings=2)
    expected_rings = [1, 0, 2]
    for c, k in enumerate(expected_rings):
        grown = _square(H, W, y0, x0, bs, k)
        assert torch.equal(out.removed1[0, c], grown), c
        assert torch.equal(out.removed2[0, c], _shifted_pair(grown[None, None].float(), dy, dx)[0, 0].bool()), c
    # compared pixel pairs: ch0 rings 1+2, ch1 ring 1, ch2 rings 1+2 (ring k of a 4x4 block has 8k + 12 pixels)
    assert int(out.compared_pairs) == (20 + 28) + 20 + (20 + 28)
    assert float(out.overhead_flops) == 3 * int(out.compared_pairs) + 2 * 2 * h1.numel()
    # the bound: nothing grows with max_rings=0, a clean channel grows exactly max_rings rings
    none = wax(h1, h2, r1b, r2b, corr, max_rings=0)
    assert torch.equal(none.removed1[0, 2], r1) and torch.equal(none.removed2, r2b.expand(1, 3, H, W))
    three = wax(h1, h2, r1b, r2b, corr, max_rings=3)
    assert torch.equal(three.removed1[0, 2], _square(H, W, y0, x0, bs, 3))


def test_wax_decides_per_block_and_never_shrinks():
    """Two similar blocks; only the one whose surroundings agree grows. Pixels whose counterpart
    falls outside view 2 are neither compared nor added."""
    H = W = 20
    bs = 4
    gen = torch.Generator().manual_seed(2)
    h1 = torch.rand(1, 1, H, W, generator=gen)
    h2 = h1.clone()  # identity mapping
    src = torch.tensor([[3, 3], [3, 13]])
    match = src[None].clone()
    noisy = _ring(H, W, 3, 13, bs, 1)
    h2[0, 0][noisy] = 1.0 - h2[0, 0][noisy]  # large error around block 1 only
    r = (_square(H, W, 3, 3, bs) | _square(H, W, 3, 13, bs))[None, None]
    corr = block_correspondence(src, match, torch.tensor([[True, True]]), bs, (H, W), (H, W))
    out = wax(h1, h2, r, r, corr, psnr_threshold=20.0, max_rings=1)
    expected = _square(H, W, 3, 3, bs, 1) | _square(H, W, 3, 13, bs)
    assert torch.equal(out.removed1[0, 0], expected)
    assert bool((out.removed1 >= r).all()) and bool((out.removed2 >= r).all())

    # a match displaced out of view 2: counterparts of the left ring column fall outside and stay kept
    corr_edge = block_correspondence(torch.tensor([[0, 2]]), torch.tensor([[[0, 0]]]), torch.tensor([[True]]),
                                     bs, (H, W), (H, W))
    r1 = _square(H, W, 0, 2, bs)[None, None]
    r2 = _square(H, W, 0, 0, bs)[None, None]
    same = _shifted_pair(h1, 0, -2)
    out = wax(h1, same, r1, r2, corr_edge, max_rings=1)
    ring = _ring(H, W, 0, 2, bs, 1)
    ring[:, 1] = False  # column 1 maps to column -1 of view 2
    assert torch.equal(out.removed1[0, 0], r1[0, 0] | ring)


def test_block_correspondence_scales_with_stride():
    # 16x16 image, 4px block at (0, 8) matched at (4, 4): offset (4, -4) px = (2, -2) feature px at stride 2
    corr = block_correspondence(torch.tensor([[0, 8], [8, 0]]), torch.tensor([[[4, 4], [8, 0]]]),
                                torch.tensor([[True, False]]), 4, (16, 16), (8, 8))
    assert isinstance(corr, Correspondence)
    owner = corr.owner.view(8, 8)
    assert bool((owner == 0).all())  # the only similar block owns every pixel
    t = corr.target.view(8, 8)
    assert int(t[0, 4]) == 2 * 8 + 2 and bool(corr.valid.view(8, 8)[0, 4])
    assert not bool(corr.valid.view(8, 8)[7, 4])  # row 9 is outside view 2
    with pytest.raises(ValueError, match="expected"):
        block_correspondence(torch.zeros(2), torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool), 4, (8, 8), (8, 8))


@pytest.mark.parametrize("peak", ["channel", "map"])
def test_wax_spatial_decides_over_all_channels(peak):
    """Spatial decisions: one channel's large ring error is averaged with clean channels.

    Ring 1: channel 0 off by 0.2 (14 dB alone, fails the per-channel test), channels 1-3 clean: the
    normalised MSE over the 4 channels is 0.04 / 4 = 0.01 (20 dB, passes at 19 dB). Ring 2: every
    channel off by 0.2: fails. So per-channel waxing grows channels 1-3 by one ring and channel 0 by
    none, while spatial waxing grows every channel by exactly one ring (masks equal over channels).
    """
    H = W = 16
    bs, y0, x0, dy, dx = 4, 5, 4, 1, 2
    gen = torch.Generator().manual_seed(3)
    h1 = 0.2 + 0.3 * torch.rand(1, 4, H, W, generator=gen)
    h1[..., 0, 0] = 1.0  # MAX = 1 in every channel and for the map
    h2 = _shifted_pair(h1, dy, dx)
    ring1 = _shifted_pair(_ring(H, W, y0, x0, bs, 1)[None, None].float(), dy, dx)[0, 0].bool()
    ring2 = _shifted_pair(_ring(H, W, y0, x0, bs, 2)[None, None].float(), dy, dx)[0, 0].bool()
    h2[0, 0][ring1] += 0.2
    for c in range(4):
        h2[0, c][ring2] += 0.2
    corr = block_correspondence(torch.tensor([[y0, x0]]), torch.tensor([[[y0 + dy, x0 + dx]]]),
                                torch.tensor([[True]]), bs, (H, W), (H, W))
    r1 = _square(H, W, y0, x0, bs)[None, None]
    r2 = _shifted_pair(r1.float(), dy, dx).bool()
    per_channel = wax(h1, h2, r1, r2, corr, psnr_threshold=19.0, max_rings=2, peak=peak)
    assert torch.equal(per_channel.removed1[0, 0], r1[0, 0])
    assert all(torch.equal(per_channel.removed1[0, c], _square(H, W, y0, x0, bs, 1)) for c in (1, 2, 3))
    spatial = wax(h1, h2, r1, r2, corr, psnr_threshold=19.0, max_rings=2, decision="spatial", peak=peak)
    grown = _square(H, W, y0, x0, bs, 1)
    for c in range(4):
        assert torch.equal(spatial.removed1[0, c], grown), c
        assert torch.equal(spatial.removed2[0, c], _shifted_pair(grown[None, None].float(), dy, dx)[0, 0].bool()), c
    # compared (channel, pixel) pairs: rings 1 and 2 of a 4x4 block (20 + 28 pixels) x 4 channels
    assert int(spatial.compared_pairs) == (20 + 28) * 4
    assert float(spatial.overhead_flops) == (3 + (peak == "channel")) * int(spatial.compared_pairs) + 2 * 2 * h1.numel()
    with pytest.raises(ValueError, match="unknown waxing decision"):
        wax(h1, h2, r1, r2, corr, decision="pooled")
    with pytest.raises(ValueError, match="unknown waxing peak"):
        wax(h1, h2, r1, r2, corr, peak="global")
