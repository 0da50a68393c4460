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
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional

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


def _resolve_source(source: Optional[str]) -> Path:
    """The local path a source names (the bundled sample for None / 'sample'); may not exist."""
    if source is None or str(source) in SAMPLE_NAMES:
        source = str(SAMPLE_DIR)
    return Path(os.path.expanduser(str(source)))


def is_local_source(source: Optional[str]) -> bool:
    """Whether a source is the bundled sample or a local path (anything else is a Hub dataset id)."""
    return (source is None or str(source) in SAMPLE_NAMES or _resolve_source(source).exists()
            or str(source).startswith((".", "/", "~")))


def parquet_splits(folder: Path) -> Dict[str, List[Path]]:
    """``{split: [files]}`` of a parquet folder, every shard of a split included.

    A split is named by the file stem before its first ``-``: ``train.parquet`` and the Hub's sharded
    ``train-00000-of-00003.parquet`` ... both belong to ``train``. The Hub's ``data/`` sub-folder
    (``data/train-*.parquet``) is read when the folder itself holds no parquet file.
    """
    files = sorted(folder.glob("*.parquet")) or sorted((folder / "data").glob("*.parquet"))
    splits: Dict[str, List[Path]] = {}
    for path in files:
        splits.setdefault(path.stem.split("-")[0], []).append(path)
    return splits


def available_splits(source: Optional[str]) -> Optional[List[str]]:
    """Split names of a local source; None for a Hub id (asking the Hub is left to ``datasets``).

    A single parquet file is one split; its name is whatever the caller calls it (``train`` by default).
    """
    path = _resolve_source(source)
    if path.is_file():
        return ["train"]
    if path.is_dir():
        parquet = parquet_splits(path)
        if parquet:
            return sorted(parquet)
        from datasets.data_files import get_data_patterns  # the split names imagefolder will infer

        try:
            return sorted(str(name) for name in get_data_patterns(str(path)))
        except Exception:  # an empty folder: load_image_dataset names the problem
            return ["train"]
    return None


def split_files(source: Optional[str], split: Optional[str]) -> Optional[List[Path]]:
    """The resolved files a split of a local parquet source reads (None when not a parquet source)."""
    path = _resolve_source(source)
    if path.is_file():
        return [path.resolve()]
    if path.is_dir():
        parquet = parquet_splits(path)
        if parquet:
            return [p.resolve() for p in parquet.get(_default_split(parquet, split), [])]
    return None


def _default_split(by_split, split: Optional[str]) -> str:
    """'train' when there is one (or several splits), else the only split there is."""
    if split is not None:
        return split
    return "train" if "train" in by_split or len(by_split) > 1 else next(iter(by_split))


def hub_offline_reason() -> Optional[str]:
    """Why the Hub cannot be reached right now (offline mode set, or no route to it), else None.

    The route check is one TCP connect with a 3 s timeout, so a machine without network fails in
    seconds instead of after ``datasets``' retries.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}={os.environ[name]} is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or exc})"
    return None


def _load_hub(source: str, split: Optional[str]):
    """A Hub dataset split, or one line saying what to pass instead when the Hub is out of reach."""
    import datasets

    offline = hub_offline_reason()
    hint = (f"dataset {source!r} is a Hub id, but the Hub is offline ({{}}) and it is not in the local "
            f"cache; pass a local parquet file or folder instead (e.g. --dataset /path/to/train.parquet)")
    if offline is None:
        return datasets.load_dataset(str(source), split=split or "train")
    previous = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True  # offline mode reads only the local cache: it answers in about a second
    try:
        return datasets.load_dataset(str(source), split=split or "train")
    except OSError as exc:  # ConnectionError, FileNotFoundError
        raise ValueError(hint.format(offline)) from exc
    except Exception as exc:  # datasets' own not-found errors have no common base class
        if "offline" in str(exc).lower() or type(exc).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError"):
            raise ValueError(hint.format(offline)) from exc
        raise
    finally:
        datasets.config.HF_HUB_OFFLINE = previous


def _load_raw(source: Optional[str], split: Optional[str]):
    """Returns a ``datasets.Dataset`` for one split; the split defaults to 'train'."""
    import datasets

    path = _resolve_source(source)
    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"dataset file {path} is not a .parquet file; pass a parquet file, a folder or a Hub id")
        split = split or "train"
        return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
    if path.is_dir():
        by_split = parquet_splits(path)
        if by_split:
            split = _default_split(by_split, split)
            if split not in by_split:
                raise ValueError(f"split '{split}' not found in {path}; available: {sorted(by_split)}")
            return datasets.load_dataset("parquet", data_files={split: [str(p) for p in by_split[split]]},
                                         split=split)
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split or "train")
    if str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"dataset path {source} does not exist")
    return _load_hub(str(source), split)


def _find_column(ds, wanted: Optional[str], names, feature_type, what: str) -> Optional[str]:
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

    @cached_property
    def labels(self) -> Optional[List[int]]:
        """Integer class ids; anything else is refused with one line (see :func:`check_labels`)."""
        if self.label_column is None:
            return None
        import datasets

        feature = self.hf_dataset.features[self.label_column]
        limit = feature.num_classes if isinstance(feature, datasets.ClassLabel) else None
        return check_labels(self.hf_dataset[self.label_column], self.label_column, limit)

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
                if value.get("bytes") == b"":
                    raise ValueError("zero-byte image")
                if value.get("bytes") is not None:
                    image = _open(io.BytesIO(value["bytes"]))
                elif value.get("path"):
                    image = _open(value["path"])
                else:
                    raise ValueError("empty image record")
            elif isinstance(value, (bytes, bytearray)):
                if not value:
                    raise ValueError("zero-byte image")
                image = _open(io.BytesIO(value))
            elif isinstance(value, str):
                image = _open(value)
            else:
                raise ValueError(f"unsupported image value of type {type(value).__name__}")
            _check_size(image)
            image.load()
            return _to_rgb(image)
        except Exception as exc:  # any decoder failure becomes one well-named error
            raise UnreadableImageError(index, f"{type(exc).__name__}: {exc}") from exc


def _open(fp) -> Image.Image:
    """``Image.open`` (lazy: reads the header only) without Pillow's bomb *warning*; :func:`_check_size` refuses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fp)


def _check_size(image: Image.Image) -> None:
    """Refuse images above Pillow's decompression-bomb limit before decoding a single pixel.

    Pillow only *warns* between ``MAX_IMAGE_PIXELS`` and twice that (a 10000x10000 image decodes to
    300 MB of RGB); here anything above the limit is an unreadable image, so memory stays bounded.
    Raise ``PIL.Image.MAX_IMAGE_PIXELS`` to train on larger images on purpose.
    """
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if width <= 0 or height <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if limit is not None and width * height > limit:
        raise ValueError(f"{width}x{height} pixels exceed PIL.Image.MAX_IMAGE_PIXELS ({limit}, the "
                         "decompression-bomb limit)")


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; 16/32-bit integer images are scaled (not clipped) to 8 bits, alpha is put on white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit PNG) or I (32-bit)
        import numpy as np

        pixels = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) <= 65535 else float(pixels.max())
        return Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    return image.convert("RGB")


def check_labels(values, column: str, num_classes: Optional[int] = None) -> List[int]:
    """Integer labels in ``[0, num_classes)``; a missing, string, fractional or out-of-range one is refused.

    Refused, not guessed: mapping string labels to ids per split would give the train and test splits
    different ids as soon as a class is missing from one of them, and kNN/linear top-1 would be wrong.
    """
    labels = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                            and not value.is_integer()):
            hint = ("cast it to a ClassLabel (datasets' class_encode_column) or pick another --label-column"
                    if isinstance(value, str) else "pick another --label-column")
            raise ValueError(f"label column '{column}' holds {value!r} at index {index}, not an integer class id; "
                             f"{hint}")
        label = int(value)
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else "non-negative"
            raise ValueError(f"label column '{column}' holds {label} at index {index}, outside {bound}; "
                             "drop those rows or pick another --label-column")
        labels.append(label)
    return labels


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

    try:
        ds = _load_raw(source, split)
    except ValueError as exc:  # datasets' wording for a parquet file with zero rows
        if "corresponds to no data" not in str(exc):
            raise
        raise ValueError(f"dataset {source!r} split {split or 'train'!r} is empty") from None
    image_col = _find_column(ds, image_column, IMAGE_COLUMN_NAMES, datasets.Image, "image")
    label_col = _find_column(ds, label_column, LABEL_COLUMN_NAMES, datasets.ClassLabel, "label")
    if isinstance(ds.features[image_col], datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    if max_samples is not None:
        ds = ds.select(subset_indices(len(ds), max_samples))
    if len(ds) == 0:
        raise ValueError(f"dataset {source!r} split {split or 'train'!r} is empty")
    images = ImageDataset(ds, image_col, label_col, str(source or "sample"), str(ds.split) if ds.split else (split or "train"))
    images.labels  # refuse bad labels now, not after hours of training
    return images
