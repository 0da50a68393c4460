"""Atomic checkpoints: ``checkpoint-<step>/`` appears complete or not at all.

Everything is written into ``checkpoint-<step>.tmp`` and renamed at the end (``os.replace`` of a
directory is atomic on POSIX), so a kill mid-write leaves the previous checkpoint untouched and only a
``.tmp`` folder behind, which the next save or resume removes. Layout::

    checkpoint-<step>/model.safetensors     backbone state_dict (timm keys, headless)
    checkpoint-<step>/trainer_state.json    step, epoch, cumulative FLOPs/time counters
    checkpoint-<step>/training_state/       Accelerate state: framework, optimizer, scheduler, RNGs
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir) -> Optional[Path]:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_backbone(backbone: torch.nn.Module, path, metadata: Optional[dict] = None) -> None:
    """Backbone weights as safetensors; metadata values must be strings (safetensors header)."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", **(metadata or {})})


def save_checkpoint(accelerator, backbone: torch.nn.Module, output_dir, step: int, trainer_state: dict,
                    metadata: Optional[dict] = None, keep: int = 2) -> Path:
    """Write ``checkpoint-<step>`` atomically; every process must call it (Accelerate saves RNGs per rank)."""
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "training_state"), safe_serialization=True)
    if accelerator.is_main_process:
        save_backbone(backbone, tmp / WEIGHTS_FILE, metadata)
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(trainer_state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # same step saved twice (e.g. re-run after resume): replace
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    with open(Path(checkpoint) / STATE_FILE) as f:
        return json.load(f)
