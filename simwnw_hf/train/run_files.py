"""The small files of a run folder (metrics.jsonl, run_config.json, summary.json) written so a kill never tears them.

* JSON files are written to a temporary sibling, fsync'ed and renamed: a reader sees the old or the new
  file, never half of one.
* ``metrics.jsonl`` grows by one ``write`` of one whole line per record. A kill can still leave a torn
  last line (the kernel may have written part of it) and lines logged after the checkpoint a resumed
  run restarts from; :func:`truncate_metrics` drops both, rewriting the file atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional


def write_json_atomic(path, payload) -> None:
    """``path`` holds either its old content or all of ``payload``: temp file + fsync + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(payload, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# settings that make a run what it is: a resume with other values would silently train something else
RUN_IDENTITY = ("framework", "model", "model_args", "framework_args", "dataset", "split", "image_column",
                "max_samples", "image_size", "crop_min_scale", "batch_size", "seed", "optimizer", "lr",
                "weight_decay", "warmup_steps", "simwnw", "block_size", "psnr_threshold", "search_window",
                "max_rings", "wax_decision", "wax_peak", "token_pruning", "keep_rate", "prune_layers", "token_groups", "n_local_crops", "local_crop_size",
                "dino_out_dim", "eval_holdout_excluded")


# identity settings added after runs were written without them, with the value those runs had; a
# SimWnW run from before ``wax_decision`` existed waxed per channel, although the default is now spatial
_VALUE_BEFORE_FIELD = {"wax_decision": "channel", "wax_peak": "channel"}
# the same for SimWnW token removal: before ``token_groups`` existed every run split each view into 4 chunks
_TOKEN_VALUE_BEFORE_FIELD = {"token_groups": "4"}


def with_values_before_fields(saved: dict) -> dict:
    """A ``run_config.json`` with the fields it was written without set to what that run did then.

    SimWnW runs from before ``wax_decision`` / ``wax_peak`` waxed per channel; SimWnW token runs from
    before ``token_groups`` cut each view into 4 chunks. Fields the file has are kept.
    """
    if saved.get("simwnw"):
        saved = {**_VALUE_BEFORE_FIELD, **saved}
    if saved.get("token_pruning") == "simwnw":
        saved = {**_TOKEN_VALUE_BEFORE_FIELD, **saved}
    return saved


def check_resume_config(path, current: dict) -> None:
    """Refuse (one line) to resume a run whose ``run_config.json`` names other identity settings.

    Unknown keys (a newer version's fields) are ignored; a file that is not a JSON object is refused.
    Values are compared through JSON, so ``[4, 7]`` and ``(4, 7)`` are equal. A SimWnW run's file
    without a waxing field was written before it existed and is compared as what it then did
    (:func:`with_values_before_fields`), so changing that default cannot silently change a resumed run.
    ``token_groups`` is compared for SimWnW token runs only (it does nothing elsewhere).
    """
    path = Path(path)
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it or choose another --output-dir") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a JSON object; restore it or choose another --output-dir")
    saved = with_values_before_fields(saved)
    norm = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
    identity = [k for k in RUN_IDENTITY if k != "token_groups" or saved.get("token_pruning") == "simwnw"]
    differ = [k for k in identity if k in saved and k in current and norm(saved[k]) != norm(current[k])]
    if differ:
        shown = ", ".join(f"{k}={saved[k]!r} (now {current[k]!r})" for k in differ[:4])
        raise ValueError(f"--resume: {path} was written by a run with {shown}"
                         f"{' and more' if len(differ) > 4 else ''}; pass the same settings or choose another "
                         "--output-dir")


# bookkeeping fields of run_config.json itself, never compared or recorded as a change
_NOT_SETTINGS = ("resume", "resumed_with")


def resume_history(saved: Optional[dict], current: dict, step: int) -> list:
    """``resumed_with`` of the run_config.json a resumed run writes: the old entries plus this resume's.

    A resume may change settings outside :data:`RUN_IDENTITY` (``--max-steps``, ``--save-every``,
    ``--log-every``, ``--keep-checkpoints``, ``--num-workers``, ``--match-in``, ``--eval-*``...). The file then holds the
    current values, and each resume that changed something adds ``{"step": S, "changed": {key: [old, new]}}``
    so nobody reads them as the settings of the whole run.
    """
    if not isinstance(saved, dict):
        return []
    history = list(saved.get("resumed_with") or [])
    norm = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
    changed = {k: [saved[k], current[k]] for k in current
               if k in saved and k not in _NOT_SETTINGS and norm(saved[k]) != norm(current[k])}
    if changed:
        history.append({"step": step, "changed": changed})
    return history


def read_run_config(path) -> Optional[dict]:
    """The saved run_config.json as a dict, or None when it is missing or unreadable."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return saved if isinstance(saved, dict) else None


def append_metrics(path, record: dict) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor, then fsync."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # short write (disk full): do not leave a torn line
            raise OSError(f"short write to {path} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metrics(path) -> list[dict]:
    """The complete records of ``metrics.jsonl``; a torn or non-JSON line is left out."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def truncate_metrics(path, last_step: int) -> None:
    """On resume, keep only records up to ``last_step`` (the checkpoint resumed from), once each.

    Torn lines and records logged after that checkpoint (they are logged again) are dropped; the
    file is replaced atomically so a kill during the truncation loses nothing.
    """
    path = Path(path)
    if not path.exists():
        return
    kept, seen = [], set()
    for record in read_metrics(path):
        if record["step"] <= last_step and record["step"] not in seen:
            seen.add(record["step"])
            kept.append(record)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def nonfinite_message(value: float, step: int, last_checkpoint: Optional[Path], mixed_precision: Optional[str],
                      what: str = "loss") -> str:
    """The one line a run stops with when its loss or gradients stop being finite."""
    where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint is not None else "no checkpoint was written yet"
    if mixed_precision == "fp16" and what.startswith("loss") and math.isinf(value):
        cause = ("the loss overflowed the fp16 range: the run diverged under --mixed-precision fp16; "
                 "use bf16 or no mixed precision, or lower --lr")
    else:
        cause = "the run diverged or the data holds NaN/inf; lower --lr or check the data"
    return f"{what} is {value} at step {step}: {cause} ({where})"


def check_finite(accelerator, loss, parameters, step: int, output_dir) -> None:
    """Stop every process together when the loss or the (averaged) gradients are not finite.

    The loss flag is summed over processes, so a NaN in one process stops all of them at the same step
    instead of leaving the others waiting in the next all-reduce. Gradients are checked after
    ``backward`` (DDP has averaged them, so every process sees the same verdict); under fp16 the grad
    scaler skips overflowing steps itself, so only the loss is checked there.
    """
    import torch

    from .checkpoint import list_checkpoints

    local = loss.detach().float().reshape(1)
    bad = (~torch.isfinite(local)).float()
    value = local.clone()
    if parameters is not None and accelerator.mixed_precision != "fp16":
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))
            bad = bad + 2 * (~torch.isfinite(norm)).float().reshape(1)
            value = torch.where(torch.isfinite(local), norm.reshape(1), local)
    if accelerator.num_processes > 1:
        flags = accelerator.gather(torch.cat([bad, value]).to(accelerator.device)).reshape(-1, 2).cpu()
    else:
        flags = torch.cat([bad, value]).reshape(1, 2)
    hit = [(i, int(f), float(v)) for i, (f, v) in enumerate(flags.tolist()) if f]
    if not hit:
        return
    rank, flag, value = hit[0]
    what = "loss" if flag & 1 else "gradient norm"
    if accelerator.num_processes > 1:
        what += f" (process {rank} of {accelerator.num_processes})"
    found = list_checkpoints(output_dir)
    raise FloatingPointError(nonfinite_message(value, step, found[-1] if found else None,
                                               accelerator.mixed_precision, what))
