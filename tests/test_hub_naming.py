"""Dataset ids in cards and repo ids match exactly; a dense baseline must differ from the run only in pruning."""

import pytest

from simwnw_hf.hub.card import hub_dataset_id
from simwnw_hf.hub.comparable import baseline_differences, check_baseline
from simwnw_hf.hub.export import default_repo_id, recipe_tag


@pytest.mark.parametrize("dataset,expected", [
    ("cifar100", "uoft-cs/cifar100"), ("uoft-cs/cifar100", "uoft-cs/cifar100"), ("CIFAR100", "uoft-cs/cifar100"),
    ("cifar10", "uoft-cs/cifar10"), ("uoft-cs/cifar10", "uoft-cs/cifar10"), ("sample", "uoft-cs/cifar10"),
    ("/data/cifar100/train.parquet", "uoft-cs/cifar100"), ("/data/cifar10/train.parquet", "uoft-cs/cifar10"),
    ("/data/imagenet-sample/dev.parquet", "ILSVRC/imagenet-1k"), ("/data/my-cifar100-copy/x.parquet", None),
    ("someone/cifar10-lt", "someone/cifar10-lt"), (None, None),
])
def test_hub_dataset_id_matches_names_exactly(dataset, expected):
    assert hub_dataset_id(dataset) == expected


def test_local_folder_of_unknown_name(tmp_path):
    (tmp_path / "flowers").mkdir()
    assert hub_dataset_id(str(tmp_path / "flowers")) is None


RECORD = {"framework": "simsiam", "model": "simwnw_resnet18_cifar", "model_args": {}, "dataset": "cifar100",
          "split": "train", "image_size": 32, "steps": 100, "batch_size": 64, "num_images": 50000,
          "pruning": {"method": "simwnw"}}


def test_recipe_tag_and_repo_id_name_cifar100():
    assert recipe_tag(RECORD) == "simsiam_simwnw_cifar100"
    assert default_repo_id(RECORD) == "simwnw-hf/simwnw_resnet18_cifar.simsiam_simwnw_cifar100"


def test_baseline_must_differ_only_in_pruning():
    dense = dict(RECORD, pruning={"method": None})
    check_baseline(RECORD, dense)  # comparable
    check_baseline(RECORD, dict(dense, model_args="{}"))  # the JSON string form of the same model_args
    other = dict(dense, dataset="cifar10", image_size=224, steps=3, model="simwnw_resnet50", framework="dino")
    differences = baseline_differences(RECORD, other)
    assert [d.split()[0] for d in differences] == ["framework", "model", "dataset", "image_size", "steps"]
    with pytest.raises(ValueError) as err:
        check_baseline(RECORD, other, "runs/dense")
    message = str(err.value)
    assert "\n" not in message and "runs/dense is not comparable" in message and "image_size 32 vs 224" in message
    with pytest.raises(ValueError, match="pruning: the baseline is a simwnw run"):
        check_baseline(RECORD, RECORD)
