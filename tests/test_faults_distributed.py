"""Two gloo processes: one killed, or one with a NaN gradient. Nobody hangs; no checkpoint is corrupted."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simwnw_hf.train.checkpoint import checkpoint_dirs, list_checkpoints, verify_checkpoint

HERE = Path(__file__).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode, out, data, steps):
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(HERE / "dist_fault_worker.py"), mode, str(out), str(data),
           str(steps)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_nan_gradient_in_one_process_stops_both_at_the_same_step(tmp_path, sample_dir):
    out = tmp_path / "run"
    proc = launch("nan_grad", out, sample_dir, 6)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    lines = re.findall(r"error: [^\n]*", err)  # one per process (a progress bar may precede it on its line)
    assert len(lines) == 2 and all("gradient norm (process 0 of 2) is nan at step 3" in line for line in lines), err[-3000:]
    assert all(f"last good checkpoint: {out / 'checkpoint-2'}" in line for line in lines)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    for ckpt in checkpoint_dirs(out):
        verify_checkpoint(ckpt)


@pytest.mark.slow
def test_killing_one_of_two_processes_ends_the_run_and_resume_recovers(tmp_path, sample_dir):
    out = tmp_path / "run"
    proc = launch("long", out, sample_dir, 40)
    deadline = time.time() + 240
    while time.time() < deadline and len(list_checkpoints(out)) < 2 and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    victim = int(Path(f"{out}.pid.1").read_text())
    os.kill(victim, signal.SIGKILL)
    started = time.time()
    proc.communicate(timeout=120)  # the survivor must not wait forever in a collective
    assert proc.returncode != 0 and time.time() - started < 120
    for ckpt in checkpoint_dirs(out):  # whatever was mid-write is not mistaken for a checkpoint
        verify_checkpoint(ckpt)
    resumed = launch("long", out, sample_dir, 40)
    _, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err[-3000:]
    assert list_checkpoints(out)[-1].name == "checkpoint-40"
