"""Load any image-classification dataset `datasets` can read, with robust per-image decoding.

A source is a Hub dataset id (``"cifar10"``), a local parquet file, a folder of parquet files
(split names from file names, e.g. ``train.parquet``/``test.parquet``), an image folder
(``class_x/img.png``), or ``"sample"`` / ``None`` for the tiny CIFAR-10 subset shipped with the package.

Images are kept undecoded (``Image(decode=False)``) and decoded here one at a time, so one corrupt file
raises :class:`UnreadableImageError` for that index instead of killing an epoch inside ``datasets``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from PIL import Image

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_NAMES = ("sample", "default", "cifar10-sample")

IMAGE_COLUMN_NAMES = ("image", "img", "pixel_values", "images", "picture", "photo")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class_index", "class", "target", "category")


class UnreadableImageError(ValueError):
    """An image at a given dataset index could not be decoded."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"image {index} could not be decoded: {reason}")
        self.index = index


def _load_raw(source: Optional[str], split: Optional[str]):
    """Returns a ``datasets.Dataset`` for one split; the split defaults to 'train'."""
    import datasets

    if source is None or str(source) in SAMPLE_NAMES:
        source = str(SAMPLE_DIR)
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"dataset file {path} is not a .parquet file; pass a parquet file, a folder or a Hub id")
        split = split or "train"
        return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
    if path.is_dir():
        parquet = sorted(path.glob("*.parquet"))
        if parquet:
            by_split = {p.stem.split("-")[0]: str(p) for p in parquet}
            if split is None:  # 'train' when there is one, else the only split there is
                split = "train" if "train" in by_split or len(by_split) > 1 else next(iter(by_split))
            if split not in by_split:
                raise ValueError(f"split '{split}' not found in {path}; available: {sorted(by_split)}")
            return datasets.load_dataset("parquet", data_files={split: by_split[split]}, split=split)
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split or "train")
    if str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"dataset path {source} does not exist")
    return datasets.load_dataset(str(source), split=split or "train")


def _find_column(ds, wanted: Optional[str], names, feature_type, what: str) -> Optional[str]:
    import datasets

    columns = list(ds.column_names)
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{what} column '{wanted}' not in dataset columns {columns}")
        return wanted
    for name, feature in ds.features.items():
        if isinstance(feature, feature_type):
            return name
    for name in names:
        if name in columns:
            return name
    if what == "image":
        # parquet written by hand: a struct with a 'bytes' field
        for name, feature in ds.features.items():
            if isinstance(feature, dict) and "bytes" in feature:
                return name
        raise ValueError(f"no image column found in {columns}; name it with --image-column")
    return None


@dataclass
class ImageDataset:
    """Random access to (PIL image, label) pairs of one split; labels may be absent."""

    hf_dataset: object
    image_column: str
    label_column: Optional[str]
    source: str
    split: str

    def __len__(self) -> int:
        return len(self.hf_dataset)

    @property
    def labels(self) -> Optional[List[int]]:
        if self.label_column is None:
            return None
        return [int(v) for v in self.hf_dataset[self.label_column]]

    @property
    def num_classes(self) -> Optional[int]:
        import datasets

        if self.label_column is None:
            return None
        feature = self.hf_dataset.features[self.label_column]
        if isinstance(feature, datasets.ClassLabel):
            return feature.num_classes
        return max(self.labels) + 1

    def get_image(self, index: int) -> Image.Image:
        """Decoded RGB image; grayscale, palette and RGBA sources are converted."""
        value = self.hf_dataset[int(index)][self.image_column]
        try:
            if isinstance(value, Image.Image):
                image = value
            elif isinstance(value, dict):
                if value.get("bytes") is not None:
                    image = Image.open(io.BytesIO(value["bytes"]))
                elif value.get("path"):
                    image = Image.open(value["path"])
                else:
                    raise ValueError("empty image record")
            elif isinstance(value, (bytes, bytearray)):
                image = Image.open(io.BytesIO(value))
            elif isinstance(value, str):
                image = Image.open(value)
            else:
                raise ValueError(f"unsupported image value of type {type(value).__name__}")
            image.load()
            return _to_rgb(image)
        except Exception as exc:  # any decoder failure becomes one well-named error
            raise UnreadableImageError(index, f"{type(exc).__name__}: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    return image.convert("RGB")


def subset_indices(length: int, max_samples: int, seed: int = 0) -> List[int]:
    """A fixed random subset (sorted, seed 0): label-sorted files (CIFAR-10 parquet) still give every class."""
    if max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    if max_samples >= length:
        return list(range(length))
    import torch

    chosen = torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:max_samples]
    return sorted(chosen.tolist())


def load_image_dataset(source: Optional[str] = None, split: Optional[str] = None,
                       image_column: Optional[str] = None, label_column: Optional[str] = None,
                       max_samples: Optional[int] = None) -> ImageDataset:
    """Load one split of an image dataset; image/label columns found automatically unless named.

    ``max_samples`` keeps a fixed random subset of that many images (see :func:`subset_indices`).
    """
    import datasets

    ds = _load_raw(source, split)
    image_col = _find_column(ds, image_column, IMAGE_COLUMN_NAMES, datasets.Image, "image")
    label_col = _find_column(ds, label_column, LABEL_COLUMN_NAMES, datasets.ClassLabel, "label")
    if isinstance(ds.features[image_col], datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    if max_samples is not None:
        ds = ds.select(subset_indices(len(ds), max_samples))
    if len(ds) == 0:
        raise ValueError(f"dataset {source!r} split {split or 'train'!r} is empty")
    return ImageDataset(ds, image_col, label_col, str(source or "sample"), str(ds.split) if ds.split else (split or "train"))
