"""Dataset sources, column detection, decoding of odd images, reproducible views."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from simwnw_hf.data.datasets import UnreadableImageError, load_image_dataset
from simwnw_hf.data.loader import EpochShuffleSampler, SkipUnreadable, ViewDataset, sample_seed
from simwnw_hf.data.views import TwoViewTransform


def test_bundled_sample_and_splits(sample_dir):
    train, test = load_image_dataset(), load_image_dataset("sample", "test")
    assert len(train) == 1000 and len(test) == 500 and train.num_classes == 10
    assert train.image_column == "img" and train.label_column == "label"
    assert load_image_dataset(str(sample_dir / "test.parquet")).labels == test.labels
    with pytest.raises(ValueError, match="available"):
        load_image_dataset(str(sample_dir), "validation")


def test_image_folder_and_named_columns(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10 + i, 12), (i * 40, 0, 0)).save(tmp_path / "train" / cls / f"{i}.png")
    ds = load_image_dataset(str(tmp_path))
    assert len(ds) == 6 and ds.num_classes == 2 and ds.get_image(0).mode == "RGB"
    with pytest.raises(ValueError, match="column 'pixels' not in"):
        load_image_dataset(str(tmp_path), image_column="pixels")


def test_odd_images_decode_and_broken_ones_are_named(tmp_path):
    import datasets

    def encoded(image, fmt="PNG"):
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        return {"bytes": buf.getvalue(), "path": None}

    rgba = Image.fromarray(np.dstack([np.full((4, 4, 3), 200, np.uint8), np.zeros((4, 4), np.uint8)]), "RGBA")
    images = [encoded(Image.new("L", (3, 50), 7)), encoded(rgba), encoded(Image.new("P", (9, 9))),
              encoded(Image.new("I;16", (6, 6))), {"bytes": b"garbage", "path": None}]
    ds = datasets.Dataset.from_dict({"picture": images}, features=datasets.Features({"picture": datasets.Image()}))
    ds.to_parquet(str(tmp_path / "x.parquet"))
    loaded = load_image_dataset(str(tmp_path / "x.parquet"))
    assert loaded.image_column == "picture" and loaded.label_column is None
    for i in range(4):
        assert loaded.get_image(i).mode == "RGB"
    assert loaded.get_image(1).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    with pytest.raises(UnreadableImageError, match="image 4"):
        loaded.get_image(4)
    views = ViewDataset(loaded, TwoViewTransform(16))
    batch = SkipUnreadable()([views[i] for i in range(5)])
    assert batch["views"][0].shape == (4, 3, 16, 16) and batch["skipped"].tolist() == [4]


def test_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_dataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a .parquet"):
        (tmp_path / "a.csv").write_text("x")
        load_image_dataset(str(tmp_path / "a.csv"))


def test_views_depend_only_on_seed_epoch_index():
    ds = ViewDataset(load_image_dataset(max_samples=4), TwoViewTransform(16), seed=3)
    a = ds[2]["views"][0]
    ds[1], ds[0]  # other samples in between change nothing
    assert torch.equal(a, ds[2]["views"][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2]["views"][0])
    assert sample_seed(3, 0, 2) != sample_seed(3, 0, 1) != sample_seed(4, 0, 1)


def test_epoch_sampler():
    s = EpochShuffleSampler(10, seed=0)
    first = list(s)
    assert sorted(first) == list(range(10)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first


def test_max_samples_is_a_class_balanced_subset_of_sorted_files(tmp_path):
    """CIFAR-10 parquet files are sorted by label: the first N rows would all be one class."""
    import datasets

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    labels = sorted(list(range(10)) * 30)
    ds = datasets.Dataset.from_dict({"img": [{"bytes": buf.getvalue(), "path": None}] * 300, "label": labels},
                                    features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}))
    ds.to_parquet(str(tmp_path / "sorted.parquet"))
    subset = load_image_dataset(str(tmp_path / "sorted.parquet"), max_samples=50)
    assert len(subset) == 50 and len(set(subset.labels)) >= 8
    assert subset.labels == load_image_dataset(str(tmp_path / "sorted.parquet"), max_samples=50).labels
