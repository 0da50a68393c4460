"""Which model family a timm backbone is, and the input size a ViT was built for.

The trainer, the gating adapters and the evaluation CLI all need the same answers (a ViT's position
embedding fixes its input size), so they ask here rather than each testing attributes or names.
"""

from __future__ import annotations

from typing import Optional

import torch


def is_vit(backbone: torch.nn.Module) -> bool:
    return hasattr(backbone, "blocks") and hasattr(backbone, "patch_embed")


def vit_image_size(backbone: torch.nn.Module) -> Optional[int]:
    """The square input size a ViT was built for; None for other models (they take any size)."""
    if not is_vit(backbone):
        return None
    size = getattr(backbone.patch_embed, "img_size", None)
    if not size:
        return None
    return int(size[0]) if size[0] == size[-1] else None
