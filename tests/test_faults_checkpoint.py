"""Damaged checkpoints, disk full, NaN/inf: skip to the newest good checkpoint saying so, or stop with one line."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simwnw_hf.train import checkpoint as ckpt_mod
from simwnw_hf.train.checkpoint import (CheckpointError, CheckpointWriteError, find_resumable_checkpoint,
                                        list_checkpoints, verify_checkpoint)
from simwnw_hf.train.config import TrainConfig
from simwnw_hf.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
MODEL_ARGS = '{"channels": [8, 16, 16, 16]}'


def tiny(output_dir, **kw):
    args = dict(framework="simsiam", image_size=16, batch_size=8, max_samples=32, max_steps=4, knn_eval=False,
                output_dir=str(output_dir), log_every=1, save_every=2, keep_checkpoints=3, model_args=MODEL_ARGS,
                framework_args='{"hidden_dim": 32, "out_dim": 32}')
    args.update(kw)
    return TrainConfig(**args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train(tiny(root / "good"))
    train(tiny(root / "seed1", seed=1))
    train(tiny(root / "wide", model_args='{"channels": [8, 16, 16, 32]}'))
    return root


def _truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def _corrupt_header(path):
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\xff{garbage" * 3)


def _other_trainer_state(ckpt, runs):  # same step, another run
    shutil.copy(runs / "seed1" / ckpt.name / "trainer_state.json", ckpt / "trainer_state.json")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["counters"]["wall_time_s"] += 1  # differs from this run's file for sure
    (ckpt / "trainer_state.json").write_text(json.dumps(state))


DAMAGE = {
    "truncated weights": (lambda c, r: _truncate(c / "model.safetensors"), "model.safetensors"),
    "corrupted header": (lambda c, r: _corrupt_header(c / "model.safetensors"), "model.safetensors"),
    "missing training_state": (lambda c, r: shutil.rmtree(c / "training_state"), "training_state"),
    "truncated optimizer state": (lambda c, r: _truncate(c / "training_state" / "optimizer.bin"), "optimizer.bin"),
    "trainer_state of another run": (_other_trainer_state, "trainer_state.json"),
    "no completion marker": (lambda c, r: (c / "complete.json").unlink(), "complete.json"),
    "checkpoint of another model": (lambda c, r: (shutil.rmtree(c), shutil.copytree(r / "wide" / c.name, c)),
                                    "does not fit this model"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_skips_a_damaged_newest_checkpoint_saying_so(runs, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(runs / "good", run)
    hurt, named = DAMAGE[damage]
    hurt(run / "checkpoint-4", runs)
    with pytest.raises(CheckpointError, match=named):
        verify_checkpoint(run / "checkpoint-4", shapes=_shapes())
    summary = train(tiny(run, resume=True, max_steps=6))
    err = capsys.readouterr()
    skip_lines = [line for line in err.err.splitlines() if line.startswith("skipping damaged checkpoint")]
    assert len(skip_lines) == 1 and named in skip_lines[0] and "checkpoint-2" in skip_lines[0]
    assert f"resumed from {run / 'checkpoint-2'} at step 2" in err.out
    assert summary["steps"] == 6
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def _shapes():
    import timm

    import simwnw_hf  # noqa: F401
    return timm.create_model("simwnw_resnet18_cifar", num_classes=0, **json.loads(MODEL_ARGS)).state_dict()


def test_every_checkpoint_damaged_stops_with_one_line_cli(runs, tmp_path):
    """No silent restart from step 0: --resume and the eval CLI both name the file and exit 2."""
    run = tmp_path / "run"
    shutil.copytree(runs / "good", run)
    _truncate(run / "checkpoint-4" / "model.safetensors")
    (run / "checkpoint-2" / "complete.json").unlink()
    before = sorted(p.name for p in run.iterdir())
    cmd = [sys.executable, str(ROOT / "training" / "simsiam.py"), "--image-size", "16", "--batch-size", "8",
           "--max-samples", "32", "--max-steps", "6", "--no-knn-eval", "--model-args", MODEL_ARGS,
           "--framework-args", '{"hidden_dim": 32, "out_dim": 32}', "--output-dir", str(run), "--resume"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%" not in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: no usable checkpoint") and "checkpoint-4/model.safetensors is truncated" in lines[0]
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written, nothing removed
    ev = subprocess.run([sys.executable, "-m", "simwnw_hf.eval", "knn", "--checkpoint", str(run)],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 2 and "Traceback" not in ev.stderr
    assert ev.stderr.strip().count("\n") == 0 and "checkpoint-4/model.safetensors is truncated" in ev.stderr


def test_eval_skips_to_newest_good_checkpoint(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "good", run)
    _corrupt_header(run / "checkpoint-4" / "model.safetensors")
    proc = subprocess.run([sys.executable, "-m", "simwnw_hf.eval", "knn", "--checkpoint", str(run), "--max-train",
                           "32", "--max-test", "16", "--k", "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping damaged checkpoint" in proc.stderr and "using checkpoint-2" in proc.stderr
    assert 0 <= json.loads(proc.stdout.strip().splitlines()[-1])["top1"] <= 100


def test_resume_with_no_checkpoint_is_an_error_before_any_work(tmp_path):
    # as transformers' Trainer: --resume with nothing to resume from fails, it does not start at step 0
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint-<step>/ in .* run without --resume"):
        train(tiny(tmp_path / "run", resume=True, max_steps=2))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_leftover_tmp_folder_is_never_resumed_from(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "good", run)
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-6.tmp")  # complete-looking, but never renamed
    assert find_resumable_checkpoint(run).name == "checkpoint-4"
    train(tiny(run, resume=True, max_steps=4))
    assert not (run / "checkpoint-6.tmp").exists()


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC injected into the second checkpoint's weights write."""
    real = ckpt_mod.save_file
    calls = {"n": 0}

    def full_disk(state, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(path, "wb") as f:
                f.write(b"\0" * 100)  # the part that fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(state, path, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", full_disk)
    with pytest.raises(CheckpointWriteError, match="disk is full.*checkpoint-2 is intact"):
        train(tiny(tmp_path))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    verify_checkpoint(tmp_path / "checkpoint-2")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def _tmpfs(path, size):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return proc.returncode == 0


@pytest.mark.slow
def test_disk_full_on_a_real_small_tmpfs(runs, tmp_path):
    """A tmpfs just big enough for the run files and one checkpoint (needs root; skipped otherwise)."""
    one = sum(p.stat().st_size for p in (runs / "good" / "checkpoint-2").rglob("*") if p.is_file())
    mount = tmp_path / "small"
    if not _tmpfs(mount, int(one * 1.6) // 4096 * 4096 + 8192):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(CheckpointWriteError, match="disk is full.*checkpoint-2 is intact"):
            train(tiny(mount / "run"))
        verify_checkpoint(mount / "run" / "checkpoint-2")
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def _poison(monkeypatch, at_call: int, where: str, value=float("nan")):
    """Make the loss (or one gradient) non-finite at the ``at_call``-th training step."""
    import simwnw_hf.train.trainer as trainer_mod

    real_build = trainer_mod.build_framework
    at_call += 1  # the trainer's first forward is the one-off FLOPs metering pass

    def build(cfg, backbone):
        framework = real_build(cfg, backbone)
        real_forward, calls = framework.forward, {"n": 0}

        def forward(batch, *args, **kwargs):
            calls["n"] += 1
            loss, stats = real_forward(batch, *args, **kwargs)
            if calls["n"] == at_call:
                if where == "loss":
                    loss = loss * value
                else:
                    param = next(backbone.parameters())
                    param.register_hook(lambda g: g * value if calls["n"] == at_call else g)
            return loss, stats
        framework.forward = forward
        return framework
    monkeypatch.setattr(trainer_mod, "build_framework", build)


@pytest.mark.parametrize("where,value,said", [("loss", float("nan"), "loss is nan at step 3"),
                                              ("loss", float("inf"), "inf at step 3"),
                                              ("grad", float("nan"), "gradient norm is nan at step 3")])
def test_nonfinite_stops_naming_step_and_last_good_checkpoint(tmp_path, monkeypatch, where, value, said):
    _poison(monkeypatch, 3, where, value)
    with pytest.raises(FloatingPointError) as info:
        train(tiny(tmp_path, max_steps=6))
    assert said in str(info.value) and f"last good checkpoint: {tmp_path / 'checkpoint-2'}" in str(info.value)
    assert [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]


def test_fp16_overflow_is_reported_as_fp16_divergence(tmp_path, monkeypatch):
    from simwnw_hf.train.run_files import nonfinite_message

    line = nonfinite_message(float("inf"), 7, tmp_path / "checkpoint-6", "fp16")
    assert "diverged under --mixed-precision fp16" in line and "step 7" in line and "checkpoint-6" in line
    assert "fp16" not in nonfinite_message(float("inf"), 7, None, "no")
    assert "fp16" not in nonfinite_message(float("nan"), 7, None, "fp16").split(":")[1]
