"""Evaluation never scores a model on its own memory bank: real splits, a seeded hold-out, refusals."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from simwnw_hf.eval.knn import knn_evaluate
from simwnw_hf.eval.splits import TrainingData, holdout_indices, queries_seen_in_training, resolve_eval_splits

from test_data_splits import _write_parquet

# 40 images, 4 classes of 10, labels shuffled so no encoder can beat chance without seeing the queries
LABELS = [i % 4 for i in range(40)]
random.Random(0).shuffle(LABELS)


@pytest.fixture
def dev_folder(tmp_path):
    """The layout of the 500-image ImageNet sample: a folder holding only dev.parquet."""
    _write_parquet(tmp_path / "imagenet-sample" / "dev.parquet", LABELS)
    return tmp_path / "imagenet-sample"


def test_holdout_is_stratified_seeded_and_disjoint():
    labels = [0] * 10 + [1] * 5 + [2] * 1 + [3] * 2
    q = holdout_indices(labels, 0.2, seed=0)
    per_class = {c: sum(labels[i] == c for i in q) for c in range(4)}
    assert per_class == {0: 2, 1: 1, 2: 0, 3: 1}  # 20% rounded, >= 1 where a class has 2+, lone image stays
    assert q == holdout_indices(labels, 0.2, seed=0) and q != holdout_indices(labels, 0.2, seed=1)
    assert q == sorted(set(q))


@pytest.mark.parametrize("layout", ["dev_folder", "single_file"])
def test_single_split_gets_a_holdout_not_its_own_bank(dev_folder, layout):
    source = str(dev_folder if layout == "dev_folder" else dev_folder / "dev.parquet")
    splits = resolve_eval_splits(source, None, "test")  # the trainer's call: train_split=None, eval_split="test"
    bank_ids, query_ids = set(splits.bank.hf_dataset["uid"]), set(splits.queries.hf_dataset["uid"])
    assert not bank_ids & query_ids and len(bank_ids | query_ids) == 40
    assert len(query_ids) == 8 and sorted(splits.queries.labels) == [0, 0, 1, 1, 2, 2, 3, 3]
    record = splits.record(queries_seen_in_training(splits, "bank"))
    assert record["holdout"] == {"of_split": splits.bank_split, "fraction": 0.2, "seed": 0, "stratified_by": "label",
                                 "method": "simwnw_hf.eval.splits.holdout_indices"}
    assert record["bank"]["num_images"] == 32 and record["queries"]["num_images"] == 8
    assert record["queries_seen_in_training"] is True and "hold-out" in record["note"]
    assert splits.query_indices == sorted(query_ids)  # uid == row index here


@pytest.mark.parametrize("layout", ["dev_folder", "single_file"])
def test_knn_on_a_single_split_is_not_a_self_match(dev_folder, layout):
    """Before the fix a single parquet file was bank and queries: every query found itself, top-1 = 100."""
    source = str(dev_folder if layout == "dev_folder" else dev_folder / "dev.parquet")
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 32))
    result = knn_evaluate(encoder, source, image_size=6, mean=(0.5,) * 3, std=(0.5,) * 3, k=5)
    assert result["num_train"] == 32 and result["num_test"] == 8
    assert result["top1"] < 90  # labels carry no signal: anything near 100 means self-matching
    assert result["holdout"]["fraction"] == 0.2 and result["queries_seen_in_training"] is True


def test_one_image_per_class_cannot_be_scored(tmp_path):
    """The 500-image ImageNet sample has 500 classes of one image: no honest top-1 exists, so none is made up."""
    _write_parquet(tmp_path / "dev.parquet", [0, 1, 2, 3])
    with pytest.raises(ValueError, match="every class has a single image"):
        resolve_eval_splits(str(tmp_path / "dev.parquet"))


def test_real_split_is_used_and_overlaps_are_refused(tmp_path, sample_dir):
    splits = resolve_eval_splits(None, None, "test", max_train=20, max_test=10)
    assert splits.holdout is None and (splits.bank_split, splits.query_split) == ("train", "test")
    assert queries_seen_in_training(splits, "bank") is False
    assert queries_seen_in_training(splits, TrainingData("sample", "test")) is True
    with pytest.raises(ValueError, match="both 'train'.*own memory bank"):
        resolve_eval_splits(None, "train", "train")
    _write_parquet(tmp_path / "d" / "train.parquet", LABELS)
    os.symlink(tmp_path / "d" / "train.parquet", tmp_path / "d" / "test.parquet")
    with pytest.raises(ValueError, match="read the same file"):
        resolve_eval_splits(str(tmp_path / "d"), None, "test")
    with pytest.raises(ValueError, match="read the same file"):  # finetune's --eval-dataset names the same file
        resolve_eval_splits(str(tmp_path / "d" / "train.parquet"), None, "test", query_dataset=str(tmp_path / "d"))
    same = resolve_eval_splits(str(tmp_path / "d" / "train.parquet"), None, "test",
                               query_dataset=str(tmp_path / "d" / "train.parquet"))
    assert same.holdout is not None  # one file given twice is one split: hold-out
    _write_parquet(tmp_path / "e" / "train.parquet", LABELS)
    _write_parquet(tmp_path / "e" / "dev.parquet", LABELS[:8])
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['dev', 'train'\]"):
        resolve_eval_splits(str(tmp_path / "e"), None, "test")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "simwnw_hf.eval", *args], capture_output=True, text=True, timeout=300)


def test_cli_holdout_record_and_one_line_errors(dev_folder, tmp_path):
    proc = _cli("knn", "--random-init", "--model", "simwnw_resnet18_cifar", "--dataset", str(dev_folder),
                "--image-size", "16", "--k", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["holdout"]["seed"] == 0 and result["num_test"] == 8 and result["num_train"] == 32
    assert result["queries_seen_in_training"] is False  # random init saw nothing
    assert "hold-out" in proc.stderr  # said in the output, not only in the JSON

    proc = _cli("knn", "--random-init", "--model", "simwnw_resnet18_cifar", "--train-split", "test")
    assert proc.returncode == 2 and "own memory bank" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    import timm
    from safetensors.torch import save_file

    import simwnw_hf  # noqa: F401
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("simwnw_resnet18_cifar", num_classes=0).state_dict(), str(weights))
    proc = _cli("knn", "--checkpoint", str(weights), "--model", "simwnw_resnet18", "--max-train", "4")
    assert proc.returncode == 2 and "does not fit simwnw_resnet18" in proc.stderr and "conv1.weight" in proc.stderr
    assert "Traceback" not in proc.stderr
