"""Split and shard discovery of local parquet sources; a Hub id while offline fails fast in one line."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from simwnw_hf.data.datasets import available_splits, load_image_dataset, parquet_splits, split_files


def _write_parquet(path, labels, start=0):
    import datasets

    def png(i):
        buf = io.BytesIO()
        noise = np.random.RandomState(i).randint(0, 256, (6, 6, 3), dtype=np.uint8)  # every image distinct
        Image.fromarray(noise, "RGB").save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    ds = datasets.Dataset.from_dict(
        {"image": [png(start + i) for i in range(len(labels))], "label": list(labels),
         "uid": list(range(start, start + len(labels)))},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4),
                                    "uid": datasets.Value("int64")}))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def test_sharded_hub_layout_loads_every_shard(tmp_path):
    for shard in range(3):
        _write_parquet(tmp_path / f"train-{shard:05d}-of-00003.parquet", [shard % 4] * 5, start=10 * shard)
    _write_parquet(tmp_path / "test-00000-of-00001.parquet", [0, 1], start=100)
    assert sorted(parquet_splits(tmp_path)) == ["test", "train"] and len(parquet_splits(tmp_path)["train"]) == 3
    train = load_image_dataset(str(tmp_path))
    assert len(train) == 15 and sorted(train.hf_dataset["uid"]) == [*range(5), *range(10, 15), *range(20, 25)]
    assert len(load_image_dataset(str(tmp_path), "test")) == 2
    assert len(split_files(str(tmp_path), "train")) == 3


def test_hub_data_subfolder_layout(tmp_path):
    for shard in range(2):
        _write_parquet(tmp_path / "data" / f"train-{shard:05d}-of-00002.parquet", [1, 2, 3], start=10 * shard)
    _write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", [0], start=50)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    assert available_splits(str(tmp_path)) == ["train", "validation"]
    assert len(load_image_dataset(str(tmp_path), "train")) == 6
    assert len(load_image_dataset(str(tmp_path), "validation")) == 1


def test_single_file_and_image_folder_splits(tmp_path):
    _write_parquet(tmp_path / "one.parquet", [0, 1, 2])
    assert available_splits(str(tmp_path / "one.parquet")) == ["train"]
    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "cat").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / split / "cat" / "0.png")
    assert available_splits(str(tmp_path / "imgs")) == ["test", "train"]


def test_hub_id_while_offline_is_one_line_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"Hub id, but the Hub is offline \(HF_HUB_OFFLINE=1 is set\).*local parquet"):
        load_image_dataset("simwnw-test/surely-not-cached-dataset")
    assert time.perf_counter() - start < 20


def test_hub_id_without_network_is_one_line_in_seconds(monkeypatch):
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:9 cannot be reached.*pass a local parquet file or folder"):
        load_image_dataset("simwnw-test/surely-not-cached-dataset")
    assert time.perf_counter() - start < 20
