"""transformers integration: Auto classes, save/load round trips (same process, fresh process,
trust_remote_code folder), BaseModelOutputWithPooling conventions, classification head and loss."""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

import simwnw_hf  # noqa: F401
from simwnw_hf.hf import (
    SimWnWConfig, SimWnWForImageClassification, SimWnWModel, from_timm, save_with_remote_code,
)

ROOT = Path(__file__).resolve().parents[1]

# tiny encoders: (architecture, model_args, image size)
ENCODERS = {
    "resnet": ("simwnw_resnet18_cifar", {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}, 32),
    "vit": ("simwnw_vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64,
                                            "num_heads": 2}, 32),
}


def make_timm(kind, num_classes=0, seed=0):
    architecture, model_args, _ = ENCODERS[kind]
    torch.manual_seed(seed)
    return timm.create_model(architecture, num_classes=num_classes, **model_args).eval()


def pixels(kind, batch=2, seed=1):
    size = ENCODERS[kind][2]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a.keys():
        if isinstance(a[key], tuple):
            assert len(a[key]) == len(b[key])
            for x, y in zip(a[key], b[key]):
                torch.testing.assert_close(x, y, rtol=0, atol=atol)
        else:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol)


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_wrapper_is_timm_and_round_trips_in_process(kind, tmp_path):
    net = make_timm(kind)
    model = from_timm(net, model_args=ENCODERS[kind][1]).eval()
    assert isinstance(model, SimWnWModel) and model.config.architecture == ENCODERS[kind][0]
    x = pixels(kind)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        torch.testing.assert_close(out.last_hidden_state, net.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(out.pooler_output, net(x), rtol=0, atol=0)  # headless timm = pre_logits
        _, intermediates = net.forward_intermediates(x)
        assert len(out.hidden_states) == len(intermediates)
    # keys are timm's under "timm_model.": a timm state_dict loads into the wrapper directly
    assert set(model.state_dict()) == {f"timm_model.{k}" for k in net.state_dict()}

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "pytorch_model.bin").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SimWnWConfig) and config.model_args == model.config.model_args
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is SimWnWModel and not loaded.training
    with torch.no_grad():
        assert_same_outputs(loaded(x, output_hidden_states=True), out)
        # tuple outputs follow transformers' order: (last_hidden_state, pooler_output[, hidden_states])
        plain = loaded(x, return_dict=False)
    torch.testing.assert_close(plain[1], out.pooler_output, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_classification_head_loss_and_round_trip(kind, tmp_path):
    net = make_timm(kind, num_classes=5)
    model = SimWnWForImageClassification.from_timm(net, model_args=ENCODERS[kind][1]).eval()
    assert model.config.num_labels == 5
    x, labels = pixels(kind, batch=3), torch.tensor([0, 4, 2])
    with torch.no_grad():
        out = model(x, labels=labels)
        torch.testing.assert_close(out.logits, net(x), rtol=0, atol=0)
        torch.testing.assert_close(out.loss, F.cross_entropy(net(x), labels))
    model.save_pretrained(tmp_path / "cls")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "cls")
    assert type(loaded) is SimWnWForImageClassification
    with torch.no_grad():
        assert_same_outputs(loaded(x, labels=labels), out)

    # a headless checkpoint gets a fresh head of num_labels; the encoder weights are the saved ones
    from_timm(make_timm(kind), model_args=ENCODERS[kind][1]).save_pretrained(tmp_path / "enc")
    fresh, info = AutoModelForImageClassification.from_pretrained(tmp_path / "enc", num_labels=3,
                                                                  output_loading_info=True)
    head_keys = {f"timm_model.{k}" for k in ("fc.weight", "fc.bias", "head.weight", "head.bias")}
    assert info["missing_keys"] and info["missing_keys"] <= head_keys
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in fresh.parameters())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits.shape, torch.Size([3, 3]))
        encoder = make_timm(kind)
        torch.testing.assert_close(fresh.timm_model.forward_features(x), encoder.forward_features(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_activation_checkpointing_reaches_timm(kind):
    model = from_timm(make_timm(kind), model_args=ENCODERS[kind][1]).train()
    x = pixels(kind)
    model(x).pooler_output.square().sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.timm_model.grad_checkpointing
    model(x).pooler_output.square().sum().backward()
    for p, g in zip(model.parameters(), reference):
        torch.testing.assert_close(p.grad, g)


def test_fresh_model_starts_like_timm():
    architecture, model_args, _ = ENCODERS["resnet"]
    torch.manual_seed(3)
    model = SimWnWModel(SimWnWConfig(architecture=architecture, model_args=model_args))
    torch.manual_seed(3)
    net = timm.create_model(architecture, num_classes=0, **model_args)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(model.timm_model.state_dict()[key], value, rtol=0, atol=0)


def _run(python, code, tmp_path, **env):
    """Run ``code`` in a fresh interpreter that sees the repository but has imported nothing."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
               HF_HUB_OFFLINE="1", **env)
    result = subprocess.run([python, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                            cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _save_reference(tmp_path):
    """Folders for every encoder and head, plain and with remote code, plus inputs and outputs."""
    reference = {}
    for kind in ENCODERS:
        x = pixels(kind)
        for cls, num_classes in ((SimWnWModel, 0), (SimWnWForImageClassification, 4)):
            model = cls.from_timm(make_timm(kind, num_classes), model_args=ENCODERS[kind][1]).eval()
            with torch.no_grad():
                out = model(x)
            name = f"{kind}_{cls.__name__}"
            model.save_pretrained(tmp_path / "plain" / name)
            save_with_remote_code(model, tmp_path / "remote" / name)
            reference[name] = {"x": x, **{k: v for k, v in out.items()}}
    torch.save(reference, tmp_path / "reference.pt")
    return reference


CHECK = """
    import sys, torch
    from transformers import AutoModel, AutoModelForImageClassification
    reference = torch.load("reference.pt")
    for name in ORDER:
        ref = reference[name]
        auto = AutoModelForImageClassification if name.endswith("ForImageClassification") else AutoModel
        model = auto.from_pretrained(FOLDER + "/" + name, **KWARGS)
        with torch.no_grad():
            out = model(ref["x"])
        for key, value in ref.items():
            if key != "x":
                err = (out[key] - value).abs().max().item()
                assert err <= 1e-6, (name, key, err)
        print(name, type(model).__module__, "ok")
"""


def test_fresh_process_and_trust_remote_code(tmp_path, python):
    reference = _save_reference(tmp_path)
    config = json.loads((tmp_path / "remote" / "resnet_SimWnWModel" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_simwnw.SimWnWModel"
    assert (tmp_path / "remote" / "resnet_SimWnWModel" / "modeling_simwnw.py").is_file()

    order = sorted(reference, key=lambda name: not name.startswith("vit_SimWnWFor"))

    # 1. a process that has only imported simwnw_hf: the Auto classes know model_type "simwnw"
    stdout = _run(python, f"import simwnw_hf\nFOLDER, KWARGS, ORDER = 'plain', {{}}, {order}\n"
                  + textwrap.dedent(CHECK), tmp_path)
    assert stdout.count(" ok") == len(reference)
    assert stdout.count("simwnw_hf.hf.modeling_simwnw") == len(reference)

    # 2. nothing imported: the first folder loads through its own code. That code imports simwnw_hf
    # (for the timm registrations), which registers the package's classes, and transformers prefers
    # explicitly registered classes to remote code: later folders load through the package.
    stdout = _run(python, f"FOLDER, KWARGS, ORDER = 'remote', {{'trust_remote_code': True}}, {order}\n"
                  + textwrap.dedent(CHECK), tmp_path)
    assert stdout.count(" ok") == len(reference)
    first = stdout.splitlines()[0]
    assert first.startswith("vit_SimWnWForImageClassification transformers_modules.") and "modeling_simwnw" in first


def test_bad_input_messages():
    with pytest.raises(ValueError, match="unknown timm architecture"):
        SimWnWModel(SimWnWConfig(architecture="no_such_net"))
    with pytest.raises(ValueError, match="num_classes"):
        SimWnWConfig(model_args={"num_classes": 10})
    with pytest.raises(ValueError, match="JSON"):
        SimWnWConfig(model_args={"act_layer": torch.nn.ReLU})
    with pytest.raises(ValueError, match="num_labels"):
        SimWnWForImageClassification(SimWnWConfig(architecture="simwnw_resnet18_cifar", num_labels=0))
    with pytest.raises(ValueError, match="model_args"):
        from_timm(make_timm("resnet"))  # built with non-default kwargs that were not passed
    with pytest.raises(ValueError, match="timm.create_model"):
        from_timm(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="classifier"):
        SimWnWForImageClassification.from_timm(make_timm("resnet"), model_args=ENCODERS["resnet"][1])
    with pytest.raises(TypeError, match="from_timm"):
        save_with_remote_code(make_timm("resnet"), "unused")
    model = from_timm(make_timm("resnet"), model_args=ENCODERS["resnet"][1])
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(3, 32, 32))
