"""The training record of an exported encoder: what was trained, how, at what cost, and how well.

One dict, built from a run dir written by ``simwnw_hf.train`` (``run_config.json``,
``summary.json``, ``eval.json``, ``checkpoint-<step>/trainer_state.json``). It travels twice with the
weights: JSON-encoded in the safetensors header (values must be strings there) and as the
``training`` key of ``config.json``. FLOPs are forward+backward FLOPs (not MACs) as metered by the
trainer (docs/DESIGN.md, "Step FLOPs"); the saving is the SimWnW paper's headline figure (§5,
Tables 1-3: training FLOPs of the pruned vs the dense run).

A record can be built for any complete checkpoint, not only the last one: ``summary.json`` describes
the end of the run, so for an earlier checkpoint the cumulative counters the trainer stores in that
checkpoint's ``trainer_state.json`` are used instead (through the trainer's own
:func:`~simwnw_hf.train.summary.cost_summary`), and the run-end evaluation is not claimed. The pruning
settings are the resolved ones the trainer stored (``trainer_state.json["pruning"]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from safetensors import safe_open

from simwnw_hf.data.datasets import SAMPLE_NAMES
from simwnw_hf.pruning.settings import pruning_record
from simwnw_hf.train.checkpoint import CHECKPOINT_RE, STATE_FILE, WEIGHTS_FILE, list_checkpoints
from simwnw_hf.train.config import TrainConfig
from simwnw_hf.train.layout import EVAL_FILE, RUN_CONFIG_FILE, SUMMARY_FILE
from simwnw_hf.train.run_files import with_values_before_fields
from simwnw_hf.train.summary import GATING_RATIOS, cost_summary

__all__ = ["RECORD_KEYS", "find_checkpoint", "training_record", "missing_fields",
           "record_to_metadata", "metadata_to_record", "read_training_record"]

RECORD_VERSION = 1
METADATA_PREFIX = "simwnw."

# Everything issue 6 asks a published encoder to carry; ``missing_fields`` checks these.
RECORD_KEYS = (
    "framework", "model", "model_args", "pruning", "dataset", "split", "epochs", "steps", "image_size",
    "batch_size", "train_flops", "dense_train_flops", "flops_saving_pct", "overhead_flops",
    "mean_removal_ratio", "mean_kept_token_ratio", "wall_time_s", "hardware", "eval", "versions", "git_commit",
)
# Means of the gating methods' stats (None unless the run's method measures them), from the same cost_summary.
GATING_MEANS = tuple(f"mean_{name}" for name in GATING_RATIOS)
# Keys whose value may legitimately be None (e.g. no removal ratio for a dense or token-pruned run).
NULLABLE_KEYS = ("mean_removal_ratio", "mean_kept_token_ratio", "split", "git_commit")


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def find_checkpoint(run_dir: Union[str, Path], checkpoint: Union[None, int, str, Path] = None) -> Path:
    """The checkpoint folder to export.

    Args:
        run_dir: a training output dir.
        checkpoint: None for the newest complete checkpoint, a step (``500``), a folder name
            (``"checkpoint-500"``) or a path to a checkpoint folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run dir {run_dir} does not exist")
    if checkpoint is None:
        found = list_checkpoints(run_dir)
        if not found:
            partial = sorted(p.name for p in run_dir.glob("checkpoint-*"))
            hint = f" (incomplete: {partial})" if partial else ""
            raise FileNotFoundError(f"no complete checkpoint-<step>/ folder with {STATE_FILE} in {run_dir}{hint}")
        return found[-1]
    if isinstance(checkpoint, int) or (isinstance(checkpoint, str) and checkpoint.isdigit()):
        path = run_dir / f"checkpoint-{int(checkpoint)}"
    else:
        path = Path(checkpoint)
        if not path.is_absolute() and not path.exists():
            path = run_dir / path
    if not CHECKPOINT_RE.match(path.name):
        raise ValueError(f"{path} is not a checkpoint-<step> folder")
    if not (path / STATE_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {path} is missing or incomplete (needs {WEIGHTS_FILE} and {STATE_FILE})")
    return path


def _pruning(state: dict, summary: Optional[dict], cfg: dict) -> dict:
    """The resolved pruning record the trainer stored (checkpoint, else summary); older runs: from the config."""
    for source in (state, summary or {}):
        if isinstance(source.get("pruning"), dict):
            return dict(source["pruning"])
    return pruning_record(TrainConfig.from_dict(with_values_before_fields(cfg)).pruning)


def _model_args(value) -> dict:
    """``TrainConfig.model_args`` is a JSON string on the command line; summaries store the dict."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = json.loads(value or "{}")
    if not isinstance(value, dict):
        raise ValueError(f"model_args must be a dict, got {value!r}")
    return dict(value)


def _from_counters(state: dict, pruning: dict) -> dict:
    """Cost figures of a checkpoint from its cumulative trainer counters (summed over processes)."""
    return cost_summary(state.get("counters") or {}, pruning)


def training_record(run_dir: Union[str, Path], checkpoint: Union[None, int, str, Path] = None) -> dict:
    """The training record of one checkpoint of a run (see the module docstring)."""
    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir, checkpoint)
    cfg = _read_json(run_dir / RUN_CONFIG_FILE)
    if cfg is None:
        raise FileNotFoundError(f"{run_dir / RUN_CONFIG_FILE} is missing: is {run_dir} a simwnw_hf training run?")
    state = _read_json(ckpt / STATE_FILE) or {}
    summary = _read_json(run_dir / SUMMARY_FILE)
    step = int(state.get("step", CHECKPOINT_RE.match(ckpt.name).group(1)))
    final = summary is not None and int(summary.get("steps", -1)) == step
    pruning = _pruning(state, summary, cfg)

    record = {
        "record_version": RECORD_VERSION,
        "framework": cfg.get("framework"),
        "model": cfg.get("model"),
        "model_args": _model_args(cfg.get("model_args")),
        "pruning": pruning,
        "dataset": cfg.get("dataset") or SAMPLE_NAMES[0],
        "split": cfg.get("split") or "train",
        "num_images": None,
        "epochs": state.get("epoch"),
        "steps": step,
        "image_size": cfg.get("image_size"),
        "batch_size": cfg.get("batch_size"),
        "global_batch_size": None,
        "lr": cfg.get("lr"),
        "seed": cfg.get("seed"),
        "run_name": run_dir.resolve().name,  # the folder name only: no local paths in published records
        "checkpoint": ckpt.name,
        "final_checkpoint": final,
        **_from_counters(state, pruning),
        "flops_unit": "FLOPs of forward+backward (torch.utils.flop_counter; 1 MAC = 2 FLOPs)",
        "hardware": None, "versions": None, "git_commit": None,
        "eval": {},
        "train_config": {k: v for k, v in cfg.items() if k not in ("output_dir", "resume")},
    }
    if summary is not None:
        # hardware / versions / commit describe the run whichever checkpoint is exported
        for key in ("hardware", "versions", "git_commit", "num_images", "global_batch_size"):
            record[key] = summary.get(key, record[key])
        if final:  # the run-end figures are exactly this checkpoint's
            for key in RECORD_KEYS + ("num_images", "global_batch_size", "skipped_images") + GATING_MEANS:
                if key in summary and key != "eval":
                    record[key] = summary[key]
            record["model_args"] = _model_args(record["model_args"])
    evaluation = _read_json(run_dir / EVAL_FILE)
    if evaluation is None and summary is not None:
        evaluation = summary.get("eval")
    record["eval"] = {protocol: _relative_checkpoint(result, record["run_name"])
                      for protocol, result in (evaluation or {}).items() if _evaluates(result, ckpt, final)}
    return record


def _relative_checkpoint(result: dict, run_name: str) -> dict:
    """An eval result whose ``checkpoint`` (a local path) is rewritten relative to the run's folder name."""
    if result.get("checkpoint") is None:
        return dict(result)
    name = Path(str(result["checkpoint"])).name
    relative = f"{run_name}/{name}" if CHECKPOINT_RE.match(name) or name.endswith(".safetensors") else run_name
    return {**result, "checkpoint": relative}


def _evaluates(result: dict, ckpt: Path, final: bool) -> bool:
    """Whether an eval.json entry measured the weights of ``ckpt``.

    The trainer's own run-end kNN carries no ``checkpoint`` key and belongs to the final checkpoint;
    ``python -m simwnw_hf.eval`` records the path it was given (a checkpoint folder, or the run dir,
    which means its newest checkpoint). Random-init baselines never describe the weights.
    """
    if not isinstance(result, dict) or "top1" not in result or result.get("random_init"):
        return False
    target = result.get("checkpoint")
    if target is None:
        return final
    name = Path(str(target)).name
    if CHECKPOINT_RE.match(name):
        return name == ckpt.name
    if name == "model.safetensors" or name.endswith(".safetensors"):
        return Path(str(target)).parent.name == ckpt.name
    return list_checkpoints(ckpt.parent)[-1:] == [ckpt]  # a run dir: its newest checkpoint


def missing_fields(record: dict) -> list:
    """Names of record fields that are absent (or None where a value is required)."""
    missing = [k for k in RECORD_KEYS if k not in record or (record[k] is None and k not in NULLABLE_KEYS)]
    if "eval" not in missing and not any(isinstance(v, dict) and "top1" in v for v in record["eval"].values()):
        missing.append("eval (kNN or linear top-1; run `python -m simwnw_hf.eval knn --checkpoint ... --output-json`)")
    if isinstance(record.get("pruning"), dict) and "method" not in record["pruning"]:
        missing.append("pruning.method")
    return missing


def record_to_metadata(record: dict) -> dict:
    """safetensors header metadata: every top-level field JSON-encoded under ``simwnw.<key>``."""
    return {METADATA_PREFIX + key: json.dumps(value, sort_keys=True) for key, value in record.items()}


def metadata_to_record(metadata: dict) -> dict:
    """Inverse of :func:`record_to_metadata`; other header keys (``format``, ...) are ignored."""
    return {key[len(METADATA_PREFIX):]: json.loads(value)
            for key, value in (metadata or {}).items() if key.startswith(METADATA_PREFIX)}


def read_training_record(path: Union[str, Path]) -> dict:
    """The training record stored in an exported ``model.safetensors`` (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        record = metadata_to_record(f.metadata())
    if not record:
        raise ValueError(f"{path} carries no simwnw training record in its safetensors header")
    return record
