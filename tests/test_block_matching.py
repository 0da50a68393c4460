"""SimWnW block matching: diamond vs exhaustive, geometry windows, masks, batching, bad input."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from simwnw_hf.data.geometry import make_geometry
from simwnw_hf.data.views import sample_crop_box
from simwnw_hf.simwnw import matching_jit
from simwnw_hf.simwnw import (
    block_grid, counterpart_top_left, default_block_size, exhaustive_match, match_blocks, psnr, search_lattice,
)


def _batch_geometry(geoms):
    return {k: torch.stack([g[k] for g in geoms]) for k in geoms[0]}


def _smooth_source(batch, size, coarse=6, seed=0):
    """Smooth random images: PSNR against a shifted copy is unimodal around the true shift."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, coarse, coarse, generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _crop_pair(source, boxes1, boxes2, view, flips2=None):
    """Views cut out of ``source`` without resizing (pure shifts), with their geometry."""
    batch, _, hs, ws = source.shape
    flips2 = flips2 or [False] * batch
    x1, x2, g1, g2 = [], [], [], []
    for i in range(batch):
        (t1, l1), (t2, l2) = boxes1[i], boxes2[i]
        x1.append(source[i, :, t1:t1 + view, l1:l1 + view])
        v2 = source[i, :, t2:t2 + view, l2:l2 + view]
        x2.append(v2.flip(-1) if flips2[i] else v2)
        g1.append(make_geometry(t1, l1, view, view, False, (view, view), (hs, ws)))
        g2.append(make_geometry(t2, l2, view, view, flips2[i], (view, view), (hs, ws)))
    return torch.stack(x1), torch.stack(x2), _batch_geometry(g1), _batch_geometry(g2)


def test_default_block_size_and_grid():
    assert default_block_size(32) == 5 and default_block_size(224) == 30
    assert default_block_size(128) == 18 and default_block_size(8) >= 2
    assert block_grid(32, 5).tolist() == [0, 5, 10, 15, 20, 25, 27]   # last block overlaps the edge
    assert block_grid(224, 16).tolist() == list(range(0, 224, 16))
    a = torch.rand(2, 3, 5, 5)
    assert torch.isinf(psnr(a, a)).all()
    assert torch.allclose(psnr(a, a + 0.1), torch.full((2,), 20.0), atol=1e-4)   # MSE 0.01 -> 20 dB


def test_diamond_equals_exhaustive_on_known_shift():
    """View 2 is view 1 shifted; the recorded geometry is off by a few pixels so the search must move."""
    view, block, batch = 48, 8, 4
    source = _smooth_source(batch, 96)
    boxes1 = [(20, 20), (30, 10), (10, 40), (25, 25)]
    shifts = [(3, -2), (-5, 4), (6, 6), (0, -6)]
    boxes2 = [(t + dy, l + dx) for (t, l), (dy, dx) in zip(boxes1, shifts)]
    x1, x2, g1, g2 = _crop_pair(source, boxes1, boxes2, view)
    # lie about view 2's crop: the counterpart prediction is off by (-err) and the search must recover it
    errors = torch.tensor([[2.0, -3.0], [-4.0, 1.0], [3.0, 3.0], [-2.0, 4.0]], dtype=torch.float64)
    g2_wrong = dict(g2, crop=g2["crop"].clone())
    g2_wrong["crop"][:, :2] += errors
    kwargs = dict(block_size=block, search_window=3 * block)
    dia = match_blocks(x1, x2, g1, g2_wrong, **kwargs)
    exh = exhaustive_match(x1, x2, g1, g2_wrong, **kwargs)
    exact = torch.isinf(exh.psnr)
    assert exact.float().mean() > 0.5, "most blocks should have their true counterpart inside view 2"
    true_yx = dia.src_yx[None] - torch.tensor([list(s) for s in shifts])[:, None]     # (B, nb, 2)
    assert torch.equal(exh.match_yx[exact], true_yx[exact])
    assert torch.equal(dia.match_yx[exact], exh.match_yx[exact])
    assert torch.isinf(dia.psnr[exact]).all()
    assert dia.psnr_evaluations < exh.psnr_evaluations / 2


def _reference_exhaustive(x1, x2, g1, g2, block, window, threshold=20.0):
    """Slow loop over images, blocks and every window position, written from App. B."""
    batch, _, h, w = x1.shape
    ys, xs = block_grid(h, block), block_grid(w, block)
    src = [(int(y), int(x)) for y in ys for x in xs]
    cps = counterpart_top_left(torch.tensor(src), block, g1, g2, (h, w))
    out_yx, out_psnr = torch.zeros(batch, len(src), 2, dtype=torch.long), torch.zeros(batch, len(src))
    for i in range(batch):
        mirror = bool(g1["flip"][i]) != bool(g2["flip"][i])
        for j, (y, x) in enumerate(src):
            tile = x1[i, :, y:y + block, x:x + block]
            tile = tile.flip(-1) if mirror else tile
            top = [min(max(math.floor(float(cps[i, j, a]) + (block - window) / 2 + 0.5), 0), (h, w)[a] - window)
                   for a in range(2)]
            best, best_yx = -math.inf, None
            for cy in range(top[0], top[0] + window - block + 1):
                for cx in range(top[1], top[1] + window - block + 1):
                    p = float(psnr(tile, x2[i, :, cy:cy + block, cx:cx + block]))
                    if p > best:
                        best, best_yx = p, (cy, cx)
            out_yx[i, j] = torch.tensor(best_yx)
            out_psnr[i, j] = best
    return out_yx, out_psnr


def test_exhaustive_matches_loop_reference_with_flips():
    view, block, window, batch = 20, 4, 8, 3
    g = torch.Generator().manual_seed(1)
    source = torch.rand(batch, 3, 40, 40, generator=g)
    x1, x2, g1, g2 = _crop_pair(source, [(5, 5), (10, 2), (0, 15)], [(8, 3), (10, 2), (12, 18)], view,
                                flips2=[False, True, True])
    res = exhaustive_match(x1, x2, g1, g2, block_size=block, search_window=window)
    ref_yx, ref_psnr = _reference_exhaustive(x1, x2, g1, g2, block, window)
    assert torch.equal(res.match_yx, ref_yx)
    assert torch.allclose(res.psnr, ref_psnr, atol=1e-3)
    # image 1 is its own view, flipped: every block is found exactly thanks to the mirrored tile
    assert torch.isinf(res.psnr[1]).all()


def _coordinate_source(hs, ws):
    """Source whose channels encode each pixel's centre (row, col): views reveal where pixels came from."""
    rows = (torch.arange(hs, dtype=torch.float64) + 0.5)[:, None].expand(hs, ws)
    cols = (torch.arange(ws, dtype=torch.float64) + 0.5)[None, :].expand(hs, ws)
    return torch.stack([rows, cols, torch.zeros_like(rows)])


def test_geometry_window_contains_true_counterpart():
    """Real resized/flipped crops of a coordinate image; the search lattice must hold the true block."""
    from torchvision.transforms.v2 import functional as TF

    hs, ws, size, block = 120, 150, 32, 5
    source = _coordinate_source(hs, ws)
    gen = torch.Generator().manual_seed(3)
    checked = 0
    for _ in range(12):
        views, geoms = [], []
        for _ in range(2):
            box = sample_crop_box(hs, ws, (0.3, 1.0), (3 / 4, 4 / 3), gen)
            flip = bool(torch.rand(1, generator=gen) < 0.5)
            v = TF.resized_crop(source.float(), *box, [size, size], antialias=True)
            views.append(TF.horizontal_flip(v) if flip else v)
            geoms.append(make_geometry(*box, flip, (size, size), (hs, ws)))
        g1, g2 = (_batch_geometry([g]) for g in geoms)
        src = torch.stack(torch.meshgrid(block_grid(size, block), block_grid(size, block), indexing="ij"), -1).reshape(-1, 2)
        cp = counterpart_top_left(src, block, g1, g2, size)[0]
        lo, hi, start = search_lattice(cp, block, size, 2 * block)
        v1, v2 = views
        for j, (y, x) in enumerate(src.tolist()):
            # true source point of the block centre, read from the view-1 pixels themselves
            centre_src = v1[:2, y:y + block, x:x + block].mean(dim=(1, 2))
            dist = (v2[:2] - centre_src[:, None, None]).abs().amax(0)   # (H2, W2): source-distance per pixel
            r, c = divmod(int(dist.argmin()), size)
            inside2 = (geoms[1]["crop"][0] <= centre_src[0] < geoms[1]["crop"][0] + geoms[1]["crop"][2]) and \
                      (geoms[1]["crop"][1] <= centre_src[1] < geoms[1]["crop"][1] + geoms[1]["crop"][3])
            if not inside2 or not (2 <= r < size - 2 and 2 <= c < size - 2):
                continue   # cropped out (then the nearest region is searched) or too close to the edge
            true_top = torch.tensor([r + 0.5 - block / 2, c + 0.5 - block / 2]).round().clamp(0, size - block)
            assert (lo[j] - 1 <= true_top).all() and (true_top <= hi[j] + 1).all(), (j, lo[j], hi[j], true_top)
            assert (lo[j] <= start[j]).all() and (start[j] <= hi[j]).all()
            checked += 1
    assert checked > 50


def test_same_scale_crop_with_flip_found_exactly_through_geometry():
    """No lying geometry: identical-scale crops, flipped view 2 -> matches land on the true counterparts."""
    view, block = 32, 5
    source = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    x1, x2, g1, g2 = _crop_pair(source, [(10, 10), (20, 5)], [(14, 7), (18, 12)], view, flips2=[True, False])
    res = match_blocks(x1, x2, g1, g2, block_size=block)
    cp = counterpart_top_left(res.src_yx, block, g1, g2, view)
    inside = ((cp - cp.round()).abs() < 1e-9).all(-1) & (cp > 0).all(-1) & (cp < view - block).all(-1)
    assert inside.sum() > 20
    assert torch.equal(res.match_yx[inside], cp.round().long()[inside])
    assert torch.isinf(res.psnr[inside]).all()


def test_float64_views_match_like_float32():
    """Double-precision pixels (e.g. a float64 pipeline) match as their float32 values do, not crash."""
    view, block = 32, 5
    source = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    x1, x2, g1, g2 = _crop_pair(source, [(10, 10), (20, 5)], [(14, 7), (18, 12)], view, flips2=[True, False])
    single = match_blocks(x1, x2, g1, g2, block_size=block)
    double = match_blocks(x1.double(), x2.double(), g1, g2, block_size=block)
    assert torch.equal(double.match_yx, single.match_yx) and torch.equal(double.similar, single.similar)
    assert torch.equal(double.mask1, single.mask1) and torch.equal(double.mask2, single.mask2)


def _pair_batch(batch=4, size=32, seed=0):
    from simwnw_hf.data.views import TwoViewTransform, denormalize
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    t = TwoViewTransform(image_size=size)
    imgs = (_smooth_source(batch, 48, coarse=10, seed=seed) * 255).to(torch.uint8)
    items = [t(Image.fromarray(im.permute(1, 2, 0).numpy()), g) for im in imgs]
    x1 = denormalize(torch.stack([it["views"][0] for it in items]), t.mean, t.std)
    x2 = denormalize(torch.stack([it["views"][1] for it in items]), t.mean, t.std)
    g1 = _batch_geometry([it["geometry"][0] for it in items])
    g2 = _batch_geometry([it["geometry"][1] for it in items])
    return x1, x2, g1, g2


def test_masks_are_unions_of_reported_blocks():
    x1, x2, g1, g2 = _pair_batch()
    res = match_blocks(x1, x2, g1, g2, psnr_threshold=18.0)
    b = res.block_size
    assert res.similar.any() and not res.similar.all()
    m1, m2 = torch.zeros_like(res.mask1), torch.zeros_like(res.mask2)
    for i in range(res.similar.shape[0]):
        for j in range(res.similar.shape[1]):
            if res.similar[i, j]:
                y, x = res.src_yx[j].tolist()
                m1[i, y:y + b, x:x + b] = True
                y, x = res.match_yx[i, j].tolist()
                m2[i, y:y + b, x:x + b] = True
    assert torch.equal(res.mask1, m1) and torch.equal(res.mask2, m2)
    assert res.removal_ratio == pytest.approx(0.5 * (m1.float().mean() + m2.float().mean()).item())
    assert torch.equal(res.similar, res.psnr >= 18.0)
    assert res.overhead_flops == pytest.approx(res.psnr_evaluations * (3 * 3 * b * b + 3))


@pytest.mark.parametrize("method", ["diamond", "exhaustive"])
def test_batched_equals_per_image(method):
    x1, x2, g1, g2 = _pair_batch(seed=5)
    res = match_blocks(x1, x2, g1, g2, method=method)
    evaluations = 0
    for i in range(x1.shape[0]):
        gi = lambda g: {k: v[i:i + 1] for k, v in g.items()}  # noqa: E731
        one = match_blocks(x1[i:i + 1], x2[i:i + 1], gi(g1), gi(g2), method=method)
        assert torch.equal(one.match_yx[0], res.match_yx[i])
        assert torch.equal(one.psnr[0], res.psnr[i])
        assert torch.equal(one.mask1[0], res.mask1[i]) and torch.equal(one.mask2[0], res.mask2[i])
        evaluations += one.psnr_evaluations
    assert evaluations == res.psnr_evaluations


def test_patch_grid_matching_for_vits():
    """block = step = 16 (ViT tokens): matches land on the 16px patch grid of view 2."""
    x1, x2, g1, g2 = _pair_batch(batch=2, size=64, seed=2)
    res = match_blocks(x1, x2, g1, g2, block_size=16, search_step=16)
    assert res.src_yx.shape == (16, 2)
    assert (res.match_yx % 16 == 0).all()
    exh = exhaustive_match(x1, x2, g1, g2, block_size=16, search_step=16)
    assert (exh.psnr >= res.psnr - 1e-5).all()   # exhaustive is never worse than diamond on the same lattice


def test_bad_input_errors():
    x1, x2, g1, g2 = _pair_batch(batch=2)
    with pytest.raises(ValueError, match="B, C, H, W"):
        match_blocks(x1[0], x2, g1, g2)
    with pytest.raises(ValueError, match="same batch size"):
        match_blocks(x1, x2[:1], g1, g2)
    with pytest.raises(ValueError, match="larger than"):
        match_blocks(x1, x2, g1, g2, block_size=40)
    with pytest.raises(ValueError, match="g2 describes"):
        match_blocks(x1, x2, g1, {k: v[:1] for k, v in g2.items()})
    with pytest.raises(ValueError, match="search_window"):
        match_blocks(x1, x2, g1, g2, block_size=5, search_window=4)
    with pytest.raises(ValueError, match="unknown search method"):
        match_blocks(x1, x2, g1, g2, method="three-step")
    with pytest.raises(TypeError, match="float"):
        match_blocks((x1 * 255).to(torch.uint8), x2, g1, g2)
    with pytest.raises(ValueError, match="out_size"):
        match_blocks(x1[..., :30, :30], x2[..., :30, :30], g1, g2)
    with pytest.raises(ValueError, match="NaN"):
        match_blocks(x1 * float("nan"), x2, g1, g2)


# --- fast matcher vs the reference (simwnw_hf.simwnw.matching_reference): bit-identical results ----------

def _assert_same_match(fast, ref):
    assert torch.equal(fast.src_yx, ref.src_yx) and torch.equal(fast.match_yx, ref.match_yx)
    assert torch.equal(fast.psnr, ref.psnr) and torch.equal(fast.similar, ref.similar)
    assert torch.equal(fast.mask1, ref.mask1) and torch.equal(fast.mask2, ref.mask2)
    assert fast.psnr_evaluations == ref.psnr_evaluations and fast.removal_ratio == ref.removal_ratio


@pytest.mark.parametrize("size,kwargs", [
    (32, {}),                                                   # block 5, overlapping last block
    (48, dict(block_size=7, search_window=17)),                 # odd window
    (64, dict(block_size=16, search_step=16)),                  # ViT patch lattice
    (40, dict(block_size=6, method="exhaustive")),
    (33, dict(block_size=4, psnr_threshold=12.0)),              # odd size, many similar blocks
])
@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_fast_matcher_equals_reference_on_random_views(size, kwargs, engine):
    from simwnw_hf.simwnw.matching_reference import match_blocks_reference

    for seed in range(3):
        x1, x2, g1, g2 = _pair_batch(batch=5, size=size, seed=seed)
        _assert_same_match(match_blocks(x1, x2, g1, g2, engine=engine, **kwargs),
                           match_blocks_reference(x1, x2, g1, g2, **kwargs))
    # uniform noise: rugged PSNR landscape, long diamond walks and both flip cases
    g = torch.Generator().manual_seed(7)
    source = torch.rand(4, 3, 2 * size, 2 * size, generator=g)
    x1, x2, g1, g2 = _crop_pair(source, [(3, 4), (0, 0), (size // 2, 1), (5, size // 3)],
                                [(6, 1), (2, 3), (size // 2 - 3, 4), (1, size // 3 + 2)], size,
                                flips2=[True, False, True, True])
    _assert_same_match(match_blocks(x1, x2, g1, g2, engine=engine, **kwargs),
                       match_blocks_reference(x1, x2, g1, g2, **kwargs))


@pytest.mark.parametrize("noise", [0.0, 1e-6, 3e-4])
def test_numba_engine_settles_ties_like_the_reference(noise):
    """Flat views: candidates tie exactly (noise 0: SSD 0, PSNR +inf) or nearly (1e-6: a few float32
    steps), so the float32 PSNRs of the torch path decide; the numba engine must ask for them and pick
    the first maximum as ``argmax`` does. With 3e-4 of noise the float64 SSDs settle most comparisons."""
    from simwnw_hf.simwnw.matching_reference import match_blocks_reference

    g = torch.Generator().manual_seed(11)
    source = 0.5 + noise * torch.rand(3, 3, 64, 64, generator=g)
    source[:, :, 20:40, 20:40] += 0.25 * torch.rand(3, 3, 20, 20, generator=g)   # some texture as well
    x1, x2, g1, g2 = _crop_pair(source, [(3, 4), (0, 0), (10, 1)], [(6, 1), (2, 3), (7, 4)], 32,
                                flips2=[True, False, True])
    fast, ref = match_blocks(x1, x2, g1, g2, engine="numba"), match_blocks_reference(x1, x2, g1, g2)
    _assert_same_match(fast, ref)
    if noise <= 1e-6:     # float32 steps at 0.5 are 6e-8: these views are full of exact and near ties
        assert fast.exact_rechecks > fast.psnr.numel()  # ties were settled by exact PSNRs


@pytest.mark.parametrize("threads", [2, 3])
def test_numba_search_split_over_threads_is_bit_identical(threads):
    """The compiled search runs its pairs in shares on torch's threads (``jit_threads.run_split``); the
    shares' exact-PSNR requests are gathered between calls. Views with near ties (many requests, pairs
    blocked in several rounds) and an odd pair count per share: same matches, PSNRs, masks and counts."""
    from simwnw_hf.simwnw.matching_reference import match_blocks_reference

    g = torch.Generator().manual_seed(5)
    source = 0.5 + 1e-6 * torch.rand(5, 3, 64, 64, generator=g)
    source[:, :, 20:40, 20:40] += 0.25 * torch.rand(5, 3, 20, 20, generator=g)
    x1, x2, g1, g2 = _crop_pair(source, [(3, 4), (0, 0), (10, 1), (7, 7), (2, 9)],
                                [(6, 1), (2, 3), (7, 4), (9, 2), (0, 12)], 32, flips2=[True, False, True, False, True])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = match_blocks(x1, x2, g1, g2, engine="numba")
        torch.set_num_threads(threads)
        split = match_blocks(x1, x2, g1, g2, engine="numba")
    finally:
        torch.set_num_threads(before)
    _assert_same_match(split, match_blocks_reference(x1, x2, g1, g2))
    _assert_same_match(split, single)
    assert split.exact_rechecks == single.exact_rechecks > split.psnr.numel()   # ties were asked for


def test_numba_unavailable_falls_back_to_torch_in_one_warning(monkeypatch):
    from simwnw_hf.simwnw import matching_jit
    from simwnw_hf.simwnw.matching_reference import match_blocks_reference

    monkeypatch.setattr(matching_jit, "_NUMBA_ERROR", "ImportError: no numba here")
    monkeypatch.setattr(matching_jit, "_WARNED", False)
    x1, x2, g1, g2 = _pair_batch(batch=3)
    with pytest.warns(RuntimeWarning, match="torch diamond search.*no numba here"):
        first = match_blocks(x1, x2, g1, g2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        match_blocks(x1, x2, g1, g2)                     # said once
    _assert_same_match(first, match_blocks_reference(x1, x2, g1, g2))
    assert first.exact_rechecks == 0
    with pytest.raises(RuntimeError, match="engine='numba'.*engine='torch'"):
        match_blocks(x1, x2, g1, g2, engine="numba")


def test_engine_errors_and_float64_views():
    x1, x2, g1, g2 = _pair_batch(batch=2)
    with pytest.raises(ValueError, match="unknown matching engine"):
        match_blocks(x1, x2, g1, g2, engine="cuda")
    with pytest.raises(ValueError, match="float32 CPU views"):
        match_blocks(x1.double(), x2.double(), g1, g2, engine="numba")
    auto = match_blocks(x1.double(), x2.double(), g1, g2)            # auto: the torch engine
    assert auto.exact_rechecks == 0


def _real_pairs(path, size, batch):
    from torch.utils.data import default_collate
    from simwnw_hf.data.datasets import load_image_dataset
    from simwnw_hf.data.views import TwoViewTransform, denormalize

    data = load_image_dataset(str(path))
    t = TwoViewTransform(size)
    gen = torch.Generator().manual_seed(0)
    b = default_collate([t(data.get_image(i), gen) for i in range(batch)])
    (v1, v2), (g1, g2) = b["views"], b["geometry"]
    return denormalize(v1, t.mean, t.std), denormalize(v2, t.mean, t.std), g1, g2


@pytest.mark.parametrize("name,size,batch,kwargs", [
    ("cifar10/test.parquet", 32, 32, {}),
    ("imagenet-sample/dev.parquet", 224, 2, {}),
    ("imagenet-sample/dev.parquet", 224, 2, dict(block_size=16, search_step=16)),
])
@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_fast_matcher_equals_reference_on_real_images(name, size, batch, kwargs, engine):
    from conftest import SHARED_DATA
    from simwnw_hf.simwnw.matching_reference import match_blocks_reference

    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not available (shared data absent)")
    x1, x2, g1, g2 = _real_pairs(path, size, batch)
    fast, ref = match_blocks(x1, x2, g1, g2, engine=engine, **kwargs), match_blocks_reference(x1, x2, g1, g2, **kwargs)
    assert ref.similar.any()
    _assert_same_match(fast, ref)
    # numba: every reported PSNR is an exact (torch) one; the torch engine computes no others
    assert (fast.exact_rechecks >= fast.psnr.numel()) if engine == "numba" else fast.exact_rechecks == 0


def test_mask_painting_equals_per_pixel_reference():
    from simwnw_hf.simwnw.block_matching import _paint_blocks
    from simwnw_hf.simwnw.matching_reference import _paint_blocks as paint_reference

    g = torch.Generator().manual_seed(3)
    for h, w, block in [(32, 32, 5), (31, 45, 7), (16, 16, 16)]:
        top = torch.stack([torch.randint(0, h - block + 1, (3, 20), generator=g),
                           torch.randint(0, w - block + 1, (3, 20), generator=g)], dim=-1)
        keep = torch.rand(3, 20, generator=g) < 0.5
        reference = paint_reference(top, keep, block, (h, w))
        assert torch.equal(_paint_blocks(top, keep, block, (h, w)), reference)
        src = top[0]                                   # numba painter: view 1 shares one grid, view 2 its own
        ref1, ref2 = paint_reference(src.expand(3, 20, 2), keep, block, (h, w)), reference
        got1, got2 = matching_jit.removal_masks(src, top, keep, block, (h, w), (h, w))
        assert torch.equal(got1, ref1) and torch.equal(got2, ref2)


def test_numba_tiles_equal_torch_tiles_with_mirrors():
    from simwnw_hf.simwnw.block_matching import _PairPSNR, _grid_2d

    x1 = torch.rand(3, 3, 23, 29, generator=torch.Generator().manual_seed(5))
    src = _grid_2d(23, 29, 6)
    mirror = torch.tensor([True, False, True])
    lo = torch.zeros(3, src.shape[0], 2, dtype=torch.long)
    torch_tiles = _PairPSNR(x1, x1, src, 6, mirror, lo, lo, 1).tiles
    assert torch.equal(matching_jit.cut_tiles(x1, src, mirror, 6), torch_tiles)


def test_match_pixels_are_denormalized_views_laid_out_channels_last():
    from simwnw_hf.simwnw import denormalize, match_pixels

    x = torch.randn(3, 3, 17, 22, generator=torch.Generator().manual_seed(0))
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    out = match_pixels(x, mean, std)
    assert torch.equal(out, denormalize(x, mean, std))
    assert out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="B, C, H, W"):
        match_pixels(x[0], mean, std)


def test_mask_mean_is_the_float_mean_bit_for_bit():
    from simwnw_hf.simwnw.block_matching import _mask_mean

    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        shape = tuple(int(v) for v in torch.randint(1, 230, (3,), generator=g))
        mask = torch.rand(shape, generator=g) < float(torch.rand(1, generator=g))
        assert torch.equal(_mask_mean(mask), mask.float().mean())
