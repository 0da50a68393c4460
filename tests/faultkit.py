"""Fault injection for the reliability tests: run ``train`` in a forked child and SIGKILL it at a chosen point.

A fault is installed *inside the child only*, by wrapping one real function of the trainer or checkpoint
code, so the kill lands exactly in that phase (a torn metrics line, a half-written weights file, a
checkpoint folder before its marker, ...). ``"random"`` kills from outside after a random delay instead.
Forking a process that already imported torch costs milliseconds, so one test can afford many kills.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _nth(n: int, action):
    """A counter: ``action()`` runs on the n-th call (1-based) of the returned hook."""
    calls = {"n": 0}

    def hook(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            action(*args, **kwargs)
        return calls["n"]
    return hook


def install(fault: str, n: int) -> None:
    """Wrap the function of the phase ``fault`` so that its n-th call kills this process."""
    import simwnw_hf.train.checkpoint as ckpt_mod
    import simwnw_hf.train.trainer as trainer_mod

    if fault == "in_step":  # after backward, before the optimizer step
        real = trainer_mod.check_finite
        hit = _nth(n, _die)

        def wrapped(*a, **k):
            hit()
            return real(*a, **k)
        trainer_mod.check_finite = wrapped
    elif fault == "between_steps":  # after the optimizer step, before logging and checkpointing
        real_fs = trainer_mod.account_step
        hit = _nth(n, _die)

        def wrapped(*a, **k):
            hit()
            return real_fs(*a, **k)
        trainer_mod.account_step = wrapped
    elif fault == "metrics_append":  # a torn line: part of the record reaches the file, then the kill
        real_append = trainer_mod.append_metrics
        calls = {"n": 0}

        def wrapped(path, record):
            calls["n"] += 1
            if calls["n"] == n:
                data = (json.dumps(record) + "\n").encode()
                with open(path, "ab") as f:
                    f.write(data[: len(data) // 2])
                _die()
            return real_append(path, record)
        trainer_mod.append_metrics = wrapped
    elif fault == "weights_write":  # half of model.safetensors written inside checkpoint-<step>.tmp
        real_save = ckpt_mod.save_file
        calls = {"n": 0}

        def wrapped(state, path, metadata=None):
            calls["n"] += 1
            real_save(state, path, metadata=metadata)
            if calls["n"] == n:
                size = os.path.getsize(path)
                os.truncate(path, size // 2)
                _die()
        ckpt_mod.save_file = wrapped
    elif fault == "before_marker":  # every file of the checkpoint written, marker not yet
        real_inv = ckpt_mod._inventory
        hit = _nth(n, _die)

        def wrapped(folder):
            hit()
            return real_inv(folder)
        ckpt_mod._inventory = wrapped
    elif fault == "old_checkpoint_removal":  # inside the rmtree of a pruned checkpoint, one file gone
        real_rmtree = ckpt_mod.shutil.rmtree
        calls = {"n": 0}

        def wrapped(path, *a, **k):
            if str(path).endswith(".trash"):
                calls["n"] += 1
                if calls["n"] == n:
                    first = next(p for p in Path(path).rglob("*") if p.is_file())
                    first.unlink()
                    _die()
            return real_rmtree(path, *a, **k)
        ckpt_mod.shutil.rmtree = wrapped
    elif fault in ("summary_write", "run_config_write"):  # half of the temp file, before its rename
        name = "summary.json" if fault == "summary_write" else "run_config.json"
        real_write = trainer_mod.write_json_atomic

        def wrapped(path, payload):
            if Path(path).name == name:
                tmp = Path(path).with_name(f".{name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps(payload)[:40])
                _die()
            return real_write(path, payload)
        trainer_mod.write_json_atomic = wrapped
    elif fault == "metrics_truncate":  # resume's rewrite of metrics.jsonl: temp file half written
        real_trunc = trainer_mod.truncate_metrics

        def wrapped(path, last_step):
            if Path(path).exists():
                tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
                tmp.write_text(Path(path).read_text()[:30])
                _die()
            return real_trunc(path, last_step)
        trainer_mod.truncate_metrics = wrapped
    elif fault != "none":
        raise ValueError(f"unknown fault {fault}")


def run_child(cfg, fault: str = "none", n: int = 1, kill_after: float | None = None, timeout: float = 300) -> str:
    """Train ``cfg`` in a forked child with ``fault`` installed; returns "killed", "finished" or "failed"."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            import sys
            sys.stdout = sys.stderr = open(os.devnull, "w")
            install(fault, n)
            from simwnw_hf.train.trainer import train
            train(cfg)
        except BaseException:
            traceback.print_exc(file=open(Path(cfg.output_dir).parent / "child_error.txt", "a"))
            code = 3
        os._exit(code)
    started = time.time()
    killed_from_outside = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if kill_after is not None and not killed_from_outside and time.time() - started >= kill_after:
            os.kill(pid, signal.SIGKILL)
            killed_from_outside = True
        if time.time() - started > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"training child ran past {timeout}s")
        time.sleep(0.01)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    return "finished" if os.WEXITSTATUS(status) == 0 else "failed"


def weights(ckpt) -> dict:
    return load_file(str(Path(ckpt) / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
