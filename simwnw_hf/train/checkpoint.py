"""Atomic, self-verifying checkpoints: ``checkpoint-<step>/`` appears complete or not at all.

Everything is written into ``checkpoint-<step>.tmp``; the last file written is ``complete.json``, which
lists every file of the checkpoint with its size (and the sha256 of the small ones), and then the folder
is renamed into place (``os.replace`` of a directory is atomic on POSIX). Folders being removed are first
renamed to ``*.trash``, so a kill in the middle of a removal never leaves a half-deleted
``checkpoint-<step>/`` behind. Layout::

    checkpoint-<step>/model.safetensors     backbone state_dict (timm keys, headless)
    checkpoint-<step>/trainer_state.json    step, epoch, cumulative FLOPs/time counters
    checkpoint-<step>/training_state/       Accelerate state: framework, optimizer, scheduler, RNGs
    checkpoint-<step>/complete.json         completion marker: file sizes, hashes, run identity

:func:`find_resumable_checkpoint` checks all of that *before* Accelerate's ``load_state`` touches a
file, so a damaged checkpoint is skipped with one line (or refused with one line naming the file),
never a traceback from deep inside torch and never a silent restart from step 0.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from safetensors.torch import save_file

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
MARKER_FILE = "complete.json"
TRAINING_STATE_DIR = "training_state"
HASH_LIMIT = 16 * 1024 * 1024  # files up to this size are hashed in the marker; larger ones are size-checked
# what Accelerate's save_state always writes (one RNG file per process: random_states_<rank>.pkl)
REQUIRED_TRAINING_STATE = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous checkpoint is intact."""


def _step_of(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))


def checkpoint_dirs(output_dir) -> list[Path]:
    """Every ``checkpoint-<step>/`` folder, complete or not, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)), key=_step_of)


def list_checkpoints(output_dir) -> list[Path]:
    """Checkpoints carrying their completion marker, oldest first (cheap; see :func:`verify_checkpoint`)."""
    return [p for p in checkpoint_dirs(output_dir) if (p / MARKER_FILE).is_file()]


def latest_checkpoint(output_dir, expect: Optional[Mapping] = None) -> Optional[Path]:
    """The newest checkpoint that verifies (damaged newer ones are skipped, saying so); None if there is none.

    Raises CheckpointError when checkpoint folders exist but none of them verifies.
    """
    return find_resumable_checkpoint(output_dir, expect=expect)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inventory(folder: Path) -> dict:
    """{relative path: {"size": n, "sha256": hex (small files only)}} of every file under ``folder``."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MARKER_FILE:
            continue
        size = path.stat().st_size
        files[rel] = {"size": size, **({"sha256": _sha256(path)} if size <= HASH_LIMIT else {})}
    return files


def safetensors_header(path: Path) -> dict:
    """The parsed JSON header of a safetensors file, after checking it against the file's size.

    Format: 8-byte little-endian header length N, N bytes of JSON, then the tensor data; every tensor's
    ``data_offsets`` must lie inside the data section and the last one must end exactly at the file end.
    """
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path} is truncated ({size} bytes, not even a safetensors header)")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8 or n > 100 * 1024 * 1024:
            raise CheckpointError(f"{path} has a corrupted safetensors header (says {n} header bytes, "
                                  f"file has {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupted safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupted safetensors header (not a JSON object)")
    data_size, end = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path} has a corrupted safetensors header (entry {name!r})") from None
        if not 0 <= start <= stop <= data_size:
            raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte {stop} of a "
                                  f"{data_size}-byte data section")
        end = max(end, stop)
    if end != data_size:
        raise CheckpointError(f"{path} is damaged: its tensors end at byte {end} of {data_size}")
    return header


def verify_checkpoint(ckpt, expect: Optional[Mapping] = None,
                      shapes: Optional[Mapping[str, tuple]] = None) -> dict:
    """Check a checkpoint folder without loading it; returns its trainer state.

    Args:
        ckpt: a ``checkpoint-<step>/`` folder.
        expect: identity it must have, e.g. ``{"architecture": "resnet18", "framework": "simsiam"}``,
            compared with the metadata the trainer stored in the weights' header and in the marker.
        shapes: ``{name: shape}`` of the backbone the weights must load into (a state_dict works).

    Raises:
        CheckpointError: naming the first file found damaged, missing or from another run.
    """
    ckpt = Path(ckpt)
    marker_path = ckpt / MARKER_FILE
    if not marker_path.is_file():
        raise CheckpointError(f"{ckpt} has no completion marker {MARKER_FILE} (its write was interrupted)")
    try:
        marker = json.loads(marker_path.read_text())
        listed = marker["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{marker_path} is damaged") from None
    for rel in (WEIGHTS_FILE, STATE_FILE, *(f"{TRAINING_STATE_DIR}/{n}" for n in REQUIRED_TRAINING_STATE)):
        if rel not in listed or not (ckpt / rel).is_file():
            raise CheckpointError(f"{ckpt / rel} is missing")
    for rel, info in listed.items():
        path = ckpt / rel
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        size = path.stat().st_size
        if size != info.get("size"):
            raise CheckpointError(f"{path} is truncated or damaged ({size} bytes, {info.get('size')} written)")
        if "sha256" in info and _sha256(path) != info["sha256"]:
            raise CheckpointError(f"{path} does not match the checksum written with it (damaged or replaced)")
        if rel.endswith(".safetensors"):
            safetensors_header(path)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{ckpt / STATE_FILE} is not valid JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("step") != _step_of(ckpt):
        raise CheckpointError(f"{ckpt / STATE_FILE} belongs to another checkpoint "
                              f"(step {state.get('step') if isinstance(state, dict) else '?'}, folder says "
                              f"{_step_of(ckpt)})")
    header = safetensors_header(ckpt / WEIGHTS_FILE)
    stored = {**(header.get("__metadata__") or {}), **(marker.get("identity") or {})}
    for key, value in (expect or {}).items():
        if key in stored and str(stored[key]) != str(value):
            raise CheckpointError(f"{ckpt / WEIGHTS_FILE} is from another run: {key} is {stored[key]!r}, "
                                  f"this run has {value!r}")
    if shapes is not None:
        saved = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        wanted = {k: tuple(v.shape if hasattr(v, "shape") else v) for k, v in shapes.items()}
        if saved != wanted:
            diff = sorted(set(saved) ^ set(wanted)) or sorted(k for k in saved if saved[k] != wanted[k])
            raise CheckpointError(f"{ckpt / WEIGHTS_FILE} does not fit this model (e.g. {diff[:3]}); it is "
                                  f"from another architecture or --model-args")
    return state


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # once per run, not once per process
        print(message, file=sys.stderr, flush=True)


def find_resumable_checkpoint(output_dir, expect: Optional[Mapping] = None,
                              shapes: Optional[Mapping[str, tuple]] = None,
                              report: Callable[[str], None] = _say) -> Optional[Path]:
    """The newest checkpoint of ``output_dir`` that verifies; damaged newer ones are skipped with one line each.

    Returns None when there is no checkpoint folder at all. Raises CheckpointError (one line, naming the
    newest damaged file) when there are checkpoint folders but none verifies: resuming from step 0
    silently would throw the run away.
    """
    dirs = checkpoint_dirs(output_dir)
    problems = []
    for ckpt in reversed(dirs):
        try:
            verify_checkpoint(ckpt, expect, shapes)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            report(f"skipping damaged checkpoint: {problem}; using {ckpt.name}")
        return ckpt
    if problems:
        raise CheckpointError(f"no usable checkpoint in {output_dir}: {problems[0]}"
                              + (f" (and {len(problems) - 1} older ones damaged)" if len(problems) > 1 else "")
                              + "; move the damaged folders away to start over")
    return None


def save_backbone(backbone: torch.nn.Module, path, metadata: Optional[dict] = None) -> None:
    """Backbone weights as safetensors; metadata values must be strings (safetensors header)."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", **(metadata or {})})


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def remove_dir(path: Path) -> None:
    """Remove a folder so that no half-deleted copy keeps its name: rename to ``*.trash`` first."""
    trash = path.with_name(path.name + ".trash")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(output_dir) -> None:
    """Delete ``*.tmp`` / ``*.trash`` folders a killed save or removal left behind."""
    root = Path(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("checkpoint-") and p.name.endswith((".tmp", ".trash")):
                shutil.rmtree(p, ignore_errors=True)


def _disk_nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system of ``folder`` has (almost) no space left; run before the tmp folder is removed."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def save_checkpoint(accelerator, backbone: torch.nn.Module, output_dir, step: int, trainer_state: dict,
                    metadata: Optional[dict] = None, keep: int = 2) -> Path:
    """Write ``checkpoint-<step>`` atomically; every process must call it (Accelerate saves RNGs per rank).

    Raises CheckpointWriteError when the disk refuses the write; the half-written ``.tmp`` folder is
    removed and the previous checkpoints are left untouched.
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f"checkpoint-{step}.tmp"
    try:
        if accelerator.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / TRAINING_STATE_DIR), safe_serialization=True)
        accelerator.wait_for_everyone()  # every rank's RNG file is in place before the marker lists them
        if accelerator.is_main_process:
            save_backbone(backbone, tmp / WEIGHTS_FILE, metadata)
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
            marker = {"step": step, "identity": dict(metadata or {}), "files": _inventory(tmp)}
            (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=1))
            _fsync_tree(tmp)
            if final.exists():  # same step saved twice (e.g. re-run after resume): replace
                remove_dir(final)
            os.replace(tmp, final)
            _fsync_tree(root)
            for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
                remove_dir(old)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError of its zip writer
        if isinstance(exc, RuntimeError) and not _disk_nearly_full(root):
            raise
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in list_checkpoints(root) if p != final]
        full = getattr(exc, "errno", None) == errno.ENOSPC or isinstance(exc, RuntimeError)
        what = "the disk is full (ENOSPC)" if full else f"{type(exc).__name__}: {exc}"
        raise CheckpointWriteError(f"could not write checkpoint-{step} in {root}: {what}; "
                                   f"{'previous checkpoint ' + previous[-1] + ' is intact' if previous else 'no earlier checkpoint exists'}"
                                   f" (free space and rerun with --resume)") from None
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    with open(Path(checkpoint) / STATE_FILE) as f:
        return json.load(f)
