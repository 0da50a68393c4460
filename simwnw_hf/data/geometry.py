"""Crop/flip geometry of an augmented view, and exact point mapping between two views.

SimWnW's block search (paper §4.1, App. B) places its search window around the block's
*counterpart* in the other view. The counterpart is known only if each view remembers where it came
from in the source image. A view here is ``resize(crop(source, box), out_size)`` optionally followed by
a horizontal flip; colour transforms come after and do not move pixels.

Coordinates are continuous, pixel ``i`` covering ``[i, i + 1)``; the centre of pixel ``(r, c)`` is
``(r + 0.5, c + 0.5)``. This matches ``torchvision.transforms.functional.resized_crop`` with
``align_corners=False`` semantics, so a source point maps to the view point that the resize samples it at.

Batched geometry is a plain dict of tensors (so ``default_collate`` stacks it):

``crop``        float (..., 4): ``top, left, height, width`` of the crop box in source pixels
``flip``        bool  (...,)  : horizontal flip applied after the resize
``out_size``    long  (..., 2): ``height, width`` of the view
``source_size`` long  (..., 2): ``height, width`` of the source image
"""

from __future__ import annotations

from typing import Dict

import torch

Geometry = Dict[str, torch.Tensor]


def make_geometry(top: float, left: float, height: float, width: float, flip: bool,
                  out_size: tuple[int, int], source_size: tuple[int, int]) -> Geometry:
    """Geometry record of one view (unbatched)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"crop box must have positive size, got height={height}, width={width}")
    return {
        "crop": torch.tensor([top, left, height, width], dtype=torch.float64),
        "flip": torch.tensor(bool(flip)),
        "out_size": torch.tensor(list(out_size), dtype=torch.long),
        "source_size": torch.tensor(list(source_size), dtype=torch.long),
    }


def _unpack(geom: Geometry):
    crop = geom["crop"].to(torch.float64)
    top, left, height, width = crop.unbind(-1)
    out_h, out_w = geom["out_size"].to(torch.float64).unbind(-1)
    return top, left, height, width, geom["flip"], out_h, out_w


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Append singleton dims so per-view values broadcast over a trailing points dimension."""
    while t.dim() < like.dim():
        t = t.unsqueeze(-1)
    return t


def view_to_source(y: torch.Tensor, x: torch.Tensor, geom: Geometry):
    """Map continuous view coordinates ``(y, x)`` to source-image coordinates.

    ``y``/``x``: (...batch, *points); geometry tensors have the batch shape only.
    """
    top, left, height, width, flip, out_h, out_w = (_bcast(t, y) for t in _unpack(geom))
    y = y.to(torch.float64)
    x = x.to(torch.float64)
    x = torch.where(flip, out_w - x, x)  # undo the flip first: it was applied last
    return top + y * height / out_h, left + x * width / out_w


def source_to_view(y: torch.Tensor, x: torch.Tensor, geom: Geometry):
    """Inverse of :func:`view_to_source`; points outside the crop map outside ``[0, out)``."""
    top, left, height, width, flip, out_h, out_w = (_bcast(t, y) for t in _unpack(geom))
    vy = (y.to(torch.float64) - top) * out_h / height
    vx = (x.to(torch.float64) - left) * out_w / width
    vx = torch.where(flip, out_w - vx, vx)
    return vy, vx


def map_points(y: torch.Tensor, x: torch.Tensor, geom_from: Geometry, geom_to: Geometry):
    """Map continuous coordinates of view ``from`` to view ``to`` through the source image."""
    sy, sx = view_to_source(y, x, geom_from)
    return source_to_view(sy, sx, geom_to)


def map_pixel_centers(rows: torch.Tensor, cols: torch.Tensor, geom_from: Geometry, geom_to: Geometry):
    """Map integer pixel indices of one view to (fractional) pixel indices in the other view.

    Returns ``(row, col)`` as floats in index space (centre of pixel ``i`` is ``i``), so
    ``round()`` gives the nearest pixel of the other view.
    """
    vy, vx = map_points(rows.to(torch.float64) + 0.5, cols.to(torch.float64) + 0.5, geom_from, geom_to)
    return vy - 0.5, vx - 0.5
