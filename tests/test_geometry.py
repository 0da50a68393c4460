"""The recorded crop/flip geometry is exact: a source point lands where the view's pixels put it."""

import numpy as np
import pytest
import torch
from PIL import Image

from simwnw_hf.data.geometry import map_pixel_centers, map_points, source_to_view, view_to_source
from simwnw_hf.data.views import GeometricView, TwoViewTransform, sample_crop_box


def marker_image(height=60, width=80, y=23, x=51, radius=1):
    """Dark image with one bright square marker centred on source pixel (y, x)."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[y - radius:y + radius + 1, x - radius:x + radius + 1] = 255
    return Image.fromarray(a)


def marker_centroid(view: torch.Tensor):
    """Intensity-weighted centroid in pixel-index space (centre of pixel i is i)."""
    w = view.float().mean(0)
    w = w / w.sum()
    ys, xs = torch.meshgrid(torch.arange(w.shape[0]), torch.arange(w.shape[1]), indexing="ij")
    return (w * ys).sum().item(), (w * xs).sum().item()


BOXES = [((10, 30, 30, 40), False), ((5, 20, 45, 45), True), ((0, 0, 60, 80), True), ((15, 41, 16, 16), False),
         ((18, 44, 13, 21), True)]


@pytest.mark.parametrize("box,flip", BOXES)
def test_source_point_lands_on_marker(box, flip):
    image = marker_image()
    view, geom = GeometricView(32).apply(image, box, flip)
    vy, vx = source_to_view(torch.tensor(23.5), torch.tensor(51.5), geom)  # centre of the marker pixel
    cy, cx = marker_centroid(view)
    assert abs((vy.item() - 0.5) - cy) < 0.3 and abs((vx.item() - 0.5) - cx) < 0.3


@pytest.mark.parametrize("b1,b2", [(0, 1), (1, 4), (3, 1), (2, 4)])
def test_view1_to_view2_through_source(b1, b2):
    """Marker position found in view 1, mapped to view 2, equals the marker position found in view 2."""
    image = marker_image()
    make = GeometricView(32)
    v1, g1 = make.apply(image, *BOXES[b1])
    v2, g2 = make.apply(image, *BOXES[b2])
    c1, c2 = marker_centroid(v1), marker_centroid(v2)
    my, mx = map_pixel_centers(torch.tensor(c1[0]), torch.tensor(c1[1]), g1, g2)
    assert abs(my.item() - c2[0]) < 0.35 and abs(mx.item() - c2[1]) < 0.35


def test_off_by_one_flip_would_be_caught():
    """Guard the guard: a mapping that mirrors with W-1-x instead of W-x misses by a pixel-scale amount."""
    image = marker_image()
    view, geom = GeometricView(32).apply(image, (5, 20, 45, 45), True)
    _, vx = source_to_view(torch.tensor(23.5), torch.tensor(51.5), geom)
    wrong = 32 - 1 - (32 - vx)  # what a W-1-x convention would give
    assert abs((wrong.item() - 0.5) - marker_centroid(view)[1]) > 0.6


def test_roundtrip_identity_batched():
    g = torch.Generator().manual_seed(0)
    geoms = [GeometricView(24)(Image.new("RGB", (50, 37)), g)[1] for _ in range(8)]
    batched = {k: torch.stack([x[k] for x in geoms]) for k in geoms[0]}
    y, x = torch.rand(8, 5) * 24, torch.rand(8, 5) * 24
    sy, sx = view_to_source(y, x, batched)
    ry, rx = source_to_view(sy, sx, batched)
    assert torch.allclose(ry, y.double(), atol=1e-9) and torch.allclose(rx, x.double(), atol=1e-9)
    same_y, same_x = map_points(y, x, batched, batched)
    assert torch.allclose(same_y, y.double(), atol=1e-9) and torch.allclose(same_x, x.double(), atol=1e-9)


def test_crop_box_inside_image_and_reproducible():
    for seed in range(20):
        box = sample_crop_box(37, 50, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
        assert box == sample_crop_box(37, 50, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
        top, left, h, w = box
        assert 0 <= top and 0 <= left and top + h <= 37 and left + w <= 50 and h > 0 and w > 0


def test_colour_transforms_do_not_move_pixels():
    """TwoViewTransform's geometry describes its (colour-augmented) pixels: the marker is where it says."""
    image = marker_image(radius=2)
    transform = TwoViewTransform(32, scale=(0.5, 1.0), jitter_strength=0.0, blur_p=0.0)
    transform.photometric.transforms[1].p = 0.0  # no grayscale, to keep the marker bright in every channel
    checked = 0
    for seed in range(3, 13):
        out = transform(image, torch.Generator().manual_seed(seed))
        for view, geom in zip(out["views"], out["geometry"]):
            vy, vx = source_to_view(torch.tensor(23.5), torch.tensor(51.5), geom)
            if 1 < vy < 31 and 1 < vx < 31:
                pixels = view * torch.tensor(transform.std).view(3, 1, 1) + torch.tensor(transform.mean).view(3, 1, 1)
                cy, cx = marker_centroid(pixels.clamp(0, 1) ** 4)
                assert abs(vy.item() - 0.5 - cy) < 0.5 and abs(vx.item() - 0.5 - cx) < 0.5
                checked += 1
    assert checked >= 5  # the marker must be inside enough views for the test to say anything


def test_images_of_any_mode_and_size():
    transform = TwoViewTransform(32)
    for image in (Image.new("L", (7, 5), 3), Image.new("RGBA", (300, 20)), Image.new("RGB", (1, 1)),
                  Image.new("P", (40, 40))):
        out = transform(image.convert("RGB"), torch.Generator().manual_seed(0))
        assert [v.shape for v in out["views"]] == [torch.Size([3, 32, 32])] * 2


def test_bad_view_settings_are_named():
    with pytest.raises(ValueError, match="view size"):
        GeometricView(0)
    with pytest.raises(ValueError, match="crop scale"):
        GeometricView(32, scale=(0.5, 0.2))
