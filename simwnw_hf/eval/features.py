"""Frozen-backbone features of a labelled split, for kNN and linear evaluation."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from simwnw_hf.data.datasets import ImageDataset, UnreadableImageError


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """Resize + centre crop (crop_pct 0.875 from 64px up, none below, as CIFAR recipes do)."""
    crop_pct = 1.0 if image_size < 64 else 0.875
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(int(round(image_size / crop_pct)), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.CenterCrop(image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


class _Labelled(Dataset):
    def __init__(self, images: ImageDataset, transform):
        if images.label_column is None:
            raise ValueError(f"dataset {images.source!r} split {images.split!r} has no label column; "
                             "name it with --label-column")
        self.images, self.transform, self.labels = images, transform, images.labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        try:
            return self.transform(self.images.get_image(i)), self.labels[i], True
        except UnreadableImageError:
            return torch.zeros(3, 1, 1), -1, False


def _collate(items):
    good = [it for it in items if it[2]]
    if not good:
        return None
    return torch.stack([it[0] for it in good]), torch.tensor([it[1] for it in good])


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, images: ImageDataset, image_size: int, mean, std,
                     batch_size: int = 256, num_workers: int = 0,
                     device: Optional[torch.device] = None, desc: Optional[str] = None,
                     progress: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,)); unreadable images are left out.

    A progress bar (tqdm, stderr, ``desc`` or "features <split>") shows the pass: on a real dataset it
    takes minutes to hours, and a silent phase that long looks like a hang.
    """
    device = device or next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(_Labelled(images, eval_transform(image_size, mean, std)), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    feats, labels = [], []
    bar = tqdm(loader, desc=desc or f"features {images.split}", unit="batch", disable=not progress, leave=False)
    for batch in bar:
        if batch is None:
            continue
        x, y = batch
        feats.append(backbone(x.to(device)).float().cpu())
        labels.append(y)
    backbone.train(was_training)
    if not feats:
        raise ValueError(f"no readable image in {images.source!r} split {images.split!r}")
    return torch.cat(feats), torch.cat(labels)
