"""Hostile data: each image decodes or is skipped and counted; bad labels / empty splits are refused up front."""

import io
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from simwnw_hf.data.datasets import ImageDataset, UnreadableImageError, load_image_dataset
from simwnw_hf.data.loader import ViewDataset
from simwnw_hf.train.config import TrainConfig
from simwnw_hf.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def encode(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def palette_with_transparency():
    image = Image.new("P", (12, 12), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 6, 12))
    image.info["transparency"] = 0  # palette entry 0 (red) is transparent
    return encode(image, "PNG", transparency=0)


def sixteen_bit():
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)
    return encode(Image.frombytes("I;16", (8, 8), ramp.astype("<u2").tobytes()), "PNG")


def bomb():
    """A real, valid 10000x10000 PNG (1-bit, ~20 kB on disk, 300 MB once decoded to RGB)."""
    return encode(Image.new("1", (10000, 10000)), "PNG")


RGB_JPEG = encode(Image.new("RGB", (24, 24), (10, 200, 30)), "JPEG")
RGB_PNG = encode(Image.new("RGB", (24, 24), (10, 200, 30)), "PNG")
GOOD = {  # name -> (bytes, check on the decoded RGB image)
    "cmyk jpeg": (encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"),
                  lambda im: im.getpixel((10, 10))[0] > 200 and im.getpixel((10, 10))[1] < 60),
    "16-bit png": (sixteen_bit(), lambda im: abs(im.getpixel((7, 7))[0] - round(63 * 1024 / 65535 * 255)) <= 1),
    "palette+transparency": (palette_with_transparency(),
                             lambda im: im.getpixel((9, 2)) == (255, 255, 255) and im.getpixel((2, 2)) == (0, 0, 255)),
    "1x1": (encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), lambda im: im.size == (1, 1)),
    "grayscale": (encode(Image.new("L", (9, 30), 77), "PNG"), lambda im: im.getpixel((0, 0)) == (77, 77, 77)),
}
BAD = {  # name -> (image record, word the skip reason must contain)
    "zero bytes": ({"bytes": b"", "path": None}, "zero-byte image"),
    "truncated jpeg": ({"bytes": RGB_JPEG[: len(RGB_JPEG) // 2], "path": None}, "(?i)truncated"),
    "truncated png": ({"bytes": RGB_PNG[: len(RGB_PNG) // 2], "path": None}, "could not be decoded"),
    "10000x10000": ({"bytes": bomb(), "path": None}, "MAX_IMAGE_PIXELS"),
    "missing file": ({"bytes": None, "path": "/nonexistent/simwnw/cat.png"}, "No such file"),
}


def as_images(records):
    return ImageDataset([{"image": r} for r in records], "image", None, "test", "train")


@pytest.mark.parametrize("name", sorted(GOOD))
def test_odd_but_valid_images_decode_correctly(name):
    data, check = GOOD[name]
    image = as_images([{"bytes": data, "path": None}]).get_image(0)
    assert image.mode == "RGB" and check(image), (name, image.getpixel((0, 0)))


@pytest.mark.parametrize("name", sorted(BAD))
def test_broken_images_are_unreadable_with_a_reason(name):
    record, word = BAD[name]
    with pytest.raises(UnreadableImageError, match=word):
        as_images([record]).get_image(0)


def _parquet(path, records, labels=None, label_type="int64"):
    """Images as a plain {bytes, path} struct: datasets' Image feature would open the paths while writing."""
    columns = {"image": records}
    features = {"image": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}}
    if labels is not None:
        columns["label"] = labels
        features["label"] = datasets.Value(label_type)
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(str(path))
    return str(path)


def test_training_skips_and_counts_every_hostile_image(tmp_path):
    good = [{"bytes": data, "path": None} for data, _ in GOOD.values()]
    bad = [record for record, _ in BAD.values()]
    records = good * 3 + bad  # 15 good, 5 bad at the end
    data = _parquet(tmp_path / "hostile.parquet", records, list(range(len(records))))
    summary = train(TrainConfig(framework="simclr", dataset=data, image_size=16, batch_size=4, epochs=1,
                                knn_eval=False, output_dir=str(tmp_path / "run"), log_every=1, save_every=100,
                                model_args='{"channels": [8, 16, 16, 16]}', framework_args='{"hidden_dim": 32}'))
    assert summary["skipped_images"] == len(bad) and summary["first_skipped_index"] == len(good) * 3


def test_all_images_missing_is_refused_up_front(tmp_path):
    data = _parquet(tmp_path / "paths.parquet", [{"bytes": None, "path": f"/nonexistent/{i}.png"} for i in range(20)])
    images = load_image_dataset(data)
    with pytest.raises(ValueError, match=r"none of the first 16 images .* decode .*--image-column"):
        ViewDataset(images, transform=None)


@pytest.mark.parametrize("labels,label_type,word", [
    (["cat", "dog"] * 4, "string", "'cat' at index 0, not an integer class id; cast it to a ClassLabel"),
    ([0, 1, -1, 2] * 2, "int64", "-1 at index 2, outside non-negative"),
    ([0.0, 1.5] * 4, "float64", "1.5 at index 1"),
])
def test_bad_labels_are_refused_when_loading(tmp_path, labels, label_type, word):
    good = {"bytes": GOOD["grayscale"][0], "path": None}
    data = _parquet(tmp_path / "labels.parquet", [good] * len(labels), labels, label_type)
    with pytest.raises(ValueError, match=word):
        load_image_dataset(data)


def test_out_of_range_classlabel_is_refused(tmp_path):
    good = {"bytes": GOOD["grayscale"][0], "path": None}
    ds = datasets.Dataset.from_dict({"image": [good] * 4, "label": [0, 1, 2, 7]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds = ds.cast_column("label", datasets.ClassLabel(num_classes=8))
    ds.to_parquet(str(tmp_path / "cl.parquet"))
    images = load_image_dataset(str(tmp_path / "cl.parquet"))  # parquet keeps ClassLabel(8): in range
    assert images.labels == [0, 1, 2, 7]
    from simwnw_hf.data.datasets import check_labels
    with pytest.raises(ValueError, match=r"7 at index 3, outside \[0, 5\)"):
        check_labels([0, 1, 2, 7], "label", 5)


def test_empty_split_is_refused_in_one_line(tmp_path):
    data = _parquet(tmp_path / "empty.parquet", [], [])
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "simclr.py"), "--dataset", data,
                           "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "examples/s" not in line]  # no progress bars
    assert lines == [f"error: dataset '{data}' split 'train' is empty"]


MEMORY_PROBE = """
import resource, sys
from PIL import Image
from simwnw_hf.data.datasets import ImageDataset, UnreadableImageError
if sys.argv[2] == "unlimited":
    Image.MAX_IMAGE_PIXELS = None
data = open(sys.argv[1], "rb").read()
images = ImageDataset([{"image": {"bytes": data, "path": None}}], "image", None, "probe", "train")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    images.get_image(0)
    outcome = "decoded"
except UnreadableImageError:
    outcome = "skipped"
print(outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def _probe(tmp_path, mode):
    path = tmp_path / "bomb.png"
    path.write_bytes(BAD["10000x10000"][0]["bytes"])
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), mode], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    outcome, grown_mb = proc.stdout.split()
    return outcome, int(grown_mb)


def test_decompression_bomb_is_skipped_without_allocating(tmp_path):
    outcome, grown_mb = _probe(tmp_path, "limited")
    assert outcome == "skipped" and grown_mb < 20


@pytest.mark.slow
def test_decompression_bomb_probe_sees_the_allocation_when_unlimited(tmp_path):
    """Guard the guard: with the limit lifted the same probe measures the 100+ MB decode."""
    outcome, grown_mb = _probe(tmp_path, "unlimited")
    assert outcome == "decoded" and grown_mb > 100
