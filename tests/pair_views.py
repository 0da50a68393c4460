"""Two views of one image with a known shift and their geometry: the input of pair-pruning tests."""

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from simwnw_hf.data.geometry import make_geometry


def shifted_pair(model, batch=2, size=32, shift=(4, 2), seed=0):
    """Two crops of one smooth source image, normalised with the model's mean/std, with geometry."""
    g = torch.Generator().manual_seed(seed)
    src = F.interpolate(torch.rand(batch, 3, 6, 6, generator=g), size=size + 8, mode="bilinear", align_corners=False)
    dy, dx = shift
    p1, p2 = src[..., :size, :size], src[..., dy:dy + size, dx:dx + size]
    g1 = default_collate([make_geometry(0, 0, size, size, False, (size, size), (size + 8, size + 8))] * batch)
    g2 = default_collate([make_geometry(dy, dx, size, size, False, (size, size), (size + 8, size + 8))] * batch)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    return (p1 - mean) / std, (p2 - mean) / std, g1, g2
