"""The shared trainer: metrics, FLOPs, checkpoints, resume, refusal to clobber, every framework runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simwnw_hf.train.checkpoint import list_checkpoints
from simwnw_hf.train.config import TrainConfig, parse_config
from simwnw_hf.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def tiny(output_dir, **kw):
    args = dict(framework="simsiam", image_size=16, batch_size=8, max_samples=64, max_steps=4, knn_eval=False,
                output_dir=str(output_dir), log_every=1, save_every=2, model_args='{"channels": [8, 16, 16, 16]}',
                framework_args='{"hidden_dim": 32, "out_dim": 32}')
    args.update(kw)
    return TrainConfig(**args)


def test_metrics_and_checkpoints(tmp_path):
    summary = train(tiny(tmp_path, keep_checkpoints=5))
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]
    for key in ("step", "epoch", "loss", "lr", "images_per_s", "train_flops", "train_time_s"):
        assert key in lines[0]
    flops = [l["train_flops"] for l in lines]
    assert flops[0] > 0 and all(abs(f - flops[0] * (i + 1)) < 1e-3 * f for i, f in enumerate(flops))
    times = [l["train_time_s"] for l in lines]  # cumulative: the x-axis of accuracy-vs-time curves
    assert times[0] > 0 and all(b > a for a, b in zip(times, times[1:]))
    assert summary["wall_time_s"] == pytest.approx(times[-1])
    assert 0 < summary["cpu_time_s"] == pytest.approx(lines[-1]["train_cpu_s"])
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    weights = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    assert "conv1.weight" in weights and not any(k.startswith(("fc.", "projection")) for k in weights)
    assert summary["steps"] == 4 and summary["train_flops"] == pytest.approx(flops[-1])


def test_train_flops_equal_flop_counter_of_a_step(tmp_path):
    """The metered dense FLOPs are what FlopCounterMode counts for one forward+backward of the step."""
    from torch.utils.flop_counter import FlopCounterMode

    from simwnw_hf.ssl.frameworks import SimSiam
    import timm

    cfg = tiny(tmp_path, max_steps=1)
    train(cfg)
    per_step = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["train_flops"]
    backbone = timm.create_model(cfg.model, num_classes=0, **cfg.model_kwargs)
    framework = SimSiam(backbone, backbone.num_features, **cfg.framework_kwargs)
    batch = {"views": [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]}
    with FlopCounterMode(display=False) as counter:
        framework(batch)[0].backward()
    assert per_step == pytest.approx(counter.get_total_flops(), rel=1e-6)


def test_resume_reaches_same_weights(tmp_path):
    import shutil

    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny(full, max_steps=6, save_every=3, framework="byol"))
    # the interrupted run: everything the uninterrupted one had written up to its step-3 checkpoint
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoint-6")
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")  # logged past the checkpoint, then killed
    (part / "checkpoint-6.tmp").mkdir()  # a half-written checkpoint left by the kill
    train(tiny(part, max_steps=6, save_every=3, framework="byol", resume=True))
    a = load_file(str(full / "checkpoint-6" / "model.safetensors"))
    b = load_file(str(part / "checkpoint-6" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_kill_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL at an arbitrary moment: every checkpoint-<step>/ present is complete and resume finishes."""
    import signal
    import time

    cmd = [sys.executable, str(ROOT / "training" / "simsiam.py"), "--image-size", "16", "--batch-size", "8",
           "--max-samples", "64", "--max-steps", "12", "--save-every", "1", "--no-knn-eval",
           "--model-args", '{"channels": [8, 16, 16, 16]}', "--framework-args", '{"hidden_dim": 32, "out_dim": 32}',
           "--output-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(tmp_path)) < 2:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = list_checkpoints(tmp_path)
    assert found, "no checkpoint was written before the kill"
    for ckpt in found:
        load_file(str(ckpt / "model.safetensors"))
        json.loads((ckpt / "trainer_state.json").read_text())
    train(tiny(tmp_path, max_steps=12, save_every=1, resume=True, keep_checkpoints=2))
    assert list_checkpoints(tmp_path)[-1].name == "checkpoint-12"


def test_resume_divergence_is_detectable(tmp_path):
    """Guard the guard: a different seed gives different weights, so the equality above means something."""
    train(tiny(tmp_path / "a", max_steps=2))
    train(tiny(tmp_path / "b", max_steps=2, seed=1))
    a = load_file(str(tmp_path / "a" / "checkpoint-2" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint-2" / "model.safetensors"))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_clobber_existing_run(tmp_path):
    train(tiny(tmp_path, max_steps=2))
    before = (tmp_path / "checkpoint-2" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(tmp_path, max_steps=2))
    assert (tmp_path / "checkpoint-2" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("framework", ["simclr", "moco", "vicreg"])
def test_every_framework_trains(tmp_path, framework):
    """Two steps with the framework's own recipe lr, finite losses, and weights that moved."""
    from simwnw_hf.ssl.frameworks import FRAMEWORKS

    cfg = tiny(tmp_path, framework=framework, max_steps=2, save_every=1)
    summary = train(cfg)
    assert summary["steps"] == 2 and summary["framework"] == framework
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2] and all(math.isfinite(l["loss"]) for l in lines)
    # SGD default: recipe lr per 256 images x batch 8 / 256; the logged lr is the one each step used:
    # step 1 at the full lr, step 2 at the cosine factor 0.5 of two steps
    base = FRAMEWORKS[framework].sgd_lr * 8 / 256
    assert [l["lr"] for l in lines] == pytest.approx([base, base * 0.5])
    first, second = (load_file(str(tmp_path / f"checkpoint-{s}" / "model.safetensors")) for s in (1, 2))
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first if first[k].is_floating_point())


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    import datasets
    import io
    from PIL import Image

    def png(mode, size):
        buf = io.BytesIO()
        Image.new(mode, size, 100).save(buf, format="PNG")
        return buf.getvalue()

    images = [{"bytes": png(m, s), "path": None} for m, s in [("RGB", (20, 20)), ("L", (8, 30)), ("RGBA", (40, 9)),
                                                              ("P", (5, 5))] * 4]
    images[5] = {"bytes": b"not an image", "path": None}
    images[11] = {"bytes": b"\x89PNG broken", "path": None}
    ds = datasets.Dataset.from_dict({"image": images, "label": list(range(16))},
                                    features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    ds.to_parquet(str(tmp_path / "odd.parquet"))
    summary = train(tiny(tmp_path / "run", dataset=str(tmp_path / "odd.parquet"), max_samples=None, batch_size=4,
                         max_steps=4, framework="simclr"))
    assert summary["skipped_images"] == 2 and summary["first_skipped_index"] == 5


def test_cli_flags_and_errors(tmp_path):
    cfg = parse_config(["--model", "resnet18", "--simwnw", "--block-size", "4", "--epochs", "2",
                        "--prune-layers", "3", "5"], {"framework": "simclr"})
    assert cfg.simwnw and cfg.block_size == 4 and cfg.prune_layers == (3, 5) and cfg.framework == "simclr"
    with pytest.raises(ValueError, match="unknown framework"):
        TrainConfig(framework="barlow")
    with pytest.raises(ValueError, match="exclusive"):
        TrainConfig(simwnw=True, token_pruning="evit")
    with pytest.raises(ValueError, match="pruning-aware"):
        train(tiny(tmp_path, model="resnet18", simwnw=True, model_args="{}"))
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "simclr.py"), "--dataset", str(tmp_path / "nope"),
                           "--output-dir", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_clock_starts_after_the_one_off_flops_metering(tmp_path, monkeypatch):
    """A slow meter must not show up in wall_time_s or images_per_s (it runs once, before the clock)."""
    import time

    import simwnw_hf.train.trainer as trainer

    real = trainer.dense_step_flops

    def slow_meter(framework, batch):
        time.sleep(3.0)
        return real(framework, batch)

    monkeypatch.setattr(trainer, "dense_step_flops", slow_meter)
    started = time.perf_counter()
    summary = train(tiny(tmp_path, max_steps=2))
    assert time.perf_counter() - started > 3.0           # the meter did run
    assert summary["wall_time_s"] < 3.0 and summary["dense_train_flops"] > 0
