"""SimCLR-style augmented views that remember where they came from.

Each view is ``resize(crop(image, box), size)`` then an optional horizontal flip (the geometry, recorded
exactly; see :mod:`simwnw_hf.data.geometry`), then photometric transforms (colour jitter, grayscale,
blur) that move no pixel. SimWnW's block search needs the geometry to place its search window
(paper §4.1 / App. B); the frameworks ignore it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .geometry import make_geometry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_crop_box(height: int, width: int, scale: Tuple[float, float], ratio: Tuple[float, float],
                    generator: Optional[torch.Generator] = None) -> Tuple[int, int, int, int]:
    """``RandomResizedCrop`` box (top, left, h, w), drawn with ``generator`` so a view is reproducible."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    # fallback: centre crop at the nearest allowed aspect ratio (torchvision's rule)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class GeometricView:
    """Random resized crop + horizontal flip of a PIL image, returning the view and its geometry."""

    def __init__(self, size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5):
        if size <= 0:
            raise ValueError(f"view size must be positive, got {size}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.size, self.scale, self.ratio, self.flip_p = size, tuple(scale), tuple(ratio), flip_p

    def __call__(self, image: Image.Image, generator: Optional[torch.Generator] = None):
        width, height = image.size
        top, left, h, w = sample_crop_box(height, width, self.scale, self.ratio, generator)
        flip = bool(torch.rand(1, generator=generator).item() < self.flip_p)
        return self.apply(image, (top, left, h, w), flip)

    def apply(self, image: Image.Image, box: Tuple[int, int, int, int], flip: bool):
        """Deterministic part: crop ``box`` (top, left, h, w), resize to ``size``, flip."""
        top, left, h, w = box
        view = TF.resized_crop(TF.pil_to_tensor(image), top, left, h, w, [self.size, self.size],
                               interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        if flip:
            view = TF.horizontal_flip(view)
        geometry = make_geometry(top, left, h, w, flip, (self.size, self.size), (image.size[1], image.size[0]))
        return view, geometry


def photometric_transform(size: int, jitter_strength: float = 0.5, jitter_p: float = 0.8,
                          grayscale_p: float = 0.2, blur_p: float = 0.0):
    """Colour jitter / grayscale / blur on a float tensor in [0, 1]; moves no pixel (SimCLR App. A)."""
    s = jitter_strength
    ops = [v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=jitter_p),
           v2.RandomGrayscale(p=grayscale_p)]
    if blur_p > 0:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    return v2.Compose(ops)


class TwoViewTransform:
    """Two augmented views of one image plus their crop/flip geometry.

    Defaults follow SimCLR/SimSiam: crop scale (0.2, 1), flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.1)
    with p=0.8, grayscale 0.2, blur 0.5 only for images of 64px and up (CIFAR recipes drop it).

    Returns ``dict(views=[v1, v2], geometry=[g1, g2])``; views are normalised float tensors (3, S, S).
    A ``torch.Generator`` makes the views reproducible independently of the global RNG.
    """

    def __init__(self, image_size: int = 32, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 jitter_strength: float = 0.5, blur_p: Optional[float] = None, n_views: int = 2):
        self.image_size = image_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.geometric = GeometricView(image_size, scale, ratio)
        self.photometric = photometric_transform(
            image_size, jitter_strength, blur_p=(0.5 if image_size >= 64 else 0.0) if blur_p is None else blur_p)
        self.n_views = n_views

    def view(self, image: Image.Image, generator: Optional[torch.Generator] = None):
        pixels, geometry = self.geometric(image, generator)
        return self.finish(pixels, generator), geometry

    def finish(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 view -> photometric augmentation -> normalised float tensor."""
        x = TF.to_dtype(pixels, torch.float32, scale=True)
        if generator is not None:
            # torchvision v2 draws from the global RNG: run it on a fork seeded from ``generator``
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = self.photometric(x)
        else:
            x = self.photometric(x)
        return TF.normalize(x, self.mean, self.std)

    def __call__(self, image: Image.Image, generator: Optional[torch.Generator] = None):
        views, geometry = zip(*(self.view(image, generator) for _ in range(self.n_views)))
        return {"views": list(views), "geometry": list(geometry)}


class MultiCropTransform:
    """DINO multi-crop: two global views with geometry (scale 0.4-1) plus ``n_local`` small crops (0.05-0.4)."""

    def __init__(self, image_size: int = 224, local_size: int = 96, n_local: int = 0,
                 global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.global_views = TwoViewTransform(image_size, scale=global_scale, mean=mean, std=std)
        self.local_views = TwoViewTransform(local_size, scale=local_scale, mean=mean, std=std, n_views=n_local)
        self.mean, self.std, self.image_size, self.n_local = self.global_views.mean, self.global_views.std, image_size, n_local

    def __call__(self, image: Image.Image, generator: Optional[torch.Generator] = None):
        out = self.global_views(image, generator)
        if self.n_local:
            local = self.local_views(image, generator)
            out["views"] = out["views"] + local["views"]  # local crops carry no geometry: never pruned
        return out


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised views back to [0, 1] pixels (PSNR in SimWnW is defined on those, MAX_I = 1)."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x * std_t + mean_t

