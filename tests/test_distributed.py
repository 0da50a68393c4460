"""Two-process data parallel training on CPU through Accelerate (gloo)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_gather_and_stay_in_sync(tmp_path, sample_dir):
    out = tmp_path / "dist.json"
    # accelerate 1.15: `--cpu --num_processes 2` starts ONE process; this starts two (README documents it)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           str(Path(__file__).parent / "dist_worker.py"), str(out), str(sample_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["summary_processes"] == 2
    assert result["ntxent_value"] and result["ntxent_grad"]
    assert result["vicreg_value"] and result["vicreg_grad"]
    assert result["moco_keys_gathered"]
    assert len(result["checksums"]) == 2 and result["checksums"][0] == result["checksums"][1]
    metrics = [json.loads(l) for l in (tmp_path / "dist.json.run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
