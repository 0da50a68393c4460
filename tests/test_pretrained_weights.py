"""Only published weights are listed; pretrained=True without a weight source fails at once, saying how."""

import time

import pytest
import timm
import torch
from safetensors.torch import save_file

import simwnw_hf  # noqa: F401
from simwnw_hf.models.weights import NoPublishedWeightsError, require_weight_source

NAMES = timm.list_models("simwnw_*")


def test_no_unpublished_pretrained_tags_are_listed():
    assert len(NAMES) == 8  # 3 ResNets, 3 ViTs, 2 dual-gate ResNets
    assert timm.list_models("simwnw*", pretrained=True) == []
    assert timm.list_pretrained("simwnw*") == []


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_without_a_source_fails_at_once_saying_how(name):
    start = time.perf_counter()
    with pytest.raises(NoPublishedWeightsError) as err:
        timm.create_model(name, pretrained=True)
    assert time.perf_counter() - start < 1.0  # before the model is built, no network retries
    message = str(err.value)
    assert "\n" not in message and name in message
    for how in ("hub_upload.py", "hf-hub:ORG/NAME", "pretrained_cfg_overlay=dict(file="):
        assert how in message


def test_local_file_overlay_and_hub_sources_still_load(tmp_path):
    torch.manual_seed(0)
    trained = timm.create_model("simwnw_resnet18_cifar", num_classes=0)
    save_file(trained.state_dict(), str(tmp_path / "model.safetensors"))
    loaded = timm.create_model("simwnw_resnet18_cifar", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors")))
    for key, value in trained.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    # hf-hub:ORG/NAME and local-dir:PATH names reach the entrypoint as a pretrained_cfg with a source
    require_weight_source("simwnw_resnet50", True, {"pretrained_cfg": {"hf_hub_id": "org/name", "source": "hf-hub"}})
    require_weight_source("simwnw_resnet50", True, {"pretrained_cfg": {"file": str(tmp_path), "source": "local-dir"}})


@pytest.mark.parametrize("name", ["simwnw_resnet18_cifar", "simwnw_resnet18"])
def test_factory_device_and_dtype_reach_every_parameter(name):
    model = timm.create_model(name, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model = timm.create_model(name, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_finetune_example_on_an_unpublished_name_is_one_line():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "finetune.py"
    proc = subprocess.run([sys.executable, str(script), "--model", "simwnw_resnet18_cifar"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "hub_upload.py" in proc.stderr
