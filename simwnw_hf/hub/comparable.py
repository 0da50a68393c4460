"""Whether a dense run can stand as the baseline of a pruned run in a model card.

The card's "FLOPs vs dense" and accuracy columns compare two runs; they mean something only when the
runs differ in the pruning alone. A baseline on another dataset, image size, step count, model or
framework gives figures such as "FLOPs vs dense 3000.0%", so it is refused, naming what differs.
"""

from __future__ import annotations

import json
from typing import List

__all__ = ["COMPARED_FIELDS", "baseline_differences", "check_baseline"]

# record fields that must be equal for the two runs to differ only in pruning
COMPARED_FIELDS = ("framework", "model", "model_args", "dataset", "split", "image_size", "steps", "batch_size",
                   "global_batch_size", "num_images")


def _same_dataset(a, b) -> bool:
    from simwnw_hf.eval.splits import same_source

    return same_source(None if a in (None, "sample") else a, None if b in (None, "sample") else b)


def _canonical(field: str, value):
    if field == "model_args":
        if isinstance(value, str):
            value = json.loads(value or "{}")
        return json.dumps(value or {}, sort_keys=True)
    return value


def baseline_differences(record: dict, baseline: dict) -> List[str]:
    """``"<field> <this run> vs <baseline>"`` for every field that differs, plus a non-dense baseline."""
    differences = []
    method = (baseline.get("pruning") or {}).get("method")
    if method:
        differences.append(f"pruning: the baseline is a {method} run, not a dense one")
    for field in COMPARED_FIELDS:
        ours, theirs = record.get(field), baseline.get(field)
        if field == "dataset":
            if not _same_dataset(ours, theirs):
                differences.append(f"dataset {ours!r} vs {theirs!r}")
            continue
        if field in ("global_batch_size", "num_images") and (ours is None or theirs is None):
            continue  # older records lack them
        if _canonical(field, ours) != _canonical(field, theirs):
            differences.append(f"{field} {ours!r} vs {theirs!r}")
    return differences


def check_baseline(record: dict, baseline: dict, baseline_run=None) -> None:
    """Raise a one-line ValueError when ``baseline`` cannot be the dense baseline of ``record``."""
    differences = baseline_differences(record, baseline)
    if differences:
        name = f"baseline run {baseline_run}" if baseline_run is not None else "the baseline run"
        raise ValueError(f"{name} is not comparable with this run (a dense baseline must differ only in pruning): "
                         + "; ".join(differences) + " (this run vs baseline)")
