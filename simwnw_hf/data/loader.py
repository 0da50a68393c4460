"""SSL data loading: reproducible per-sample views, epoch shuffling, and skipping of unreadable images.

Every sample's augmentation is drawn from a generator seeded by ``(seed, epoch, index)``, so a view does
not depend on worker count, process count or how many batches ran before: that is what lets
``--resume`` reach bit-identical weights and lets two processes see the same views as one.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler, default_collate

from .datasets import ImageDataset, UnreadableImageError

logger = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (run seed, epoch, sample); cheap integer hash (splitmix64 style)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2 ** 64 - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    x ^= x >> 27
    return x & (2 ** 63 - 1)


class ViewDataset(Dataset):
    """Augmented views of an :class:`ImageDataset`; an unreadable image yields ``None`` (dropped in collate)."""

    def __init__(self, images: ImageDataset, transform, seed: int = 0, probe: int = 16):
        self.images, self.transform, self.seed, self.epoch = images, transform, seed, 0
        if probe:
            require_decodable(images, probe)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            image = self.images.get_image(index)
        except UnreadableImageError as err:
            return {"unreadable": index, "reason": str(err)}
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        sample = self.transform(image, generator)
        sample["index"] = index
        return sample


def require_decodable(images: ImageDataset, n: int = 16) -> None:
    """Refuse up front a dataset whose first ``n`` images all fail to decode (wrong column, missing files).

    Unreadable images are otherwise skipped and counted one by one; when none decodes, skipping would
    only hide that the run is training on nothing.
    """
    first = None
    for index in range(min(n, len(images))):
        try:
            images.get_image(index)
            return
        except UnreadableImageError as err:
            first = first or err
    if first is not None:
        raise ValueError(f"none of the first {min(n, len(images))} images of {images.source} decode ({first}); "
                         f"check --image-column ('{images.image_column}') and that the image files exist")


class SkipUnreadable:
    """Collate that drops unreadable samples; their indices travel in ``batch["skipped"]``.

    Carried in the batch (not in a counter on this object) so it also works inside worker processes.
    A batch whose every image is unreadable has no ``views`` key.
    """

    def __call__(self, samples):
        good = [s for s in samples if "unreadable" not in s]
        bad = [s for s in samples if "unreadable" in s]
        for s in bad:
            logger.warning("skipping %s", s["reason"])
        batch = default_collate(good) if good else {}
        batch["skipped"] = torch.tensor([s["unreadable"] for s in bad], dtype=torch.long)
        return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation per epoch drawn from ``seed + epoch``: the same on every process and on resume."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True):
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())
