"""The run-end evaluation of a training run, planned and checked before the first step.

A run that trains for hours and then finds no usable evaluation split (missing, unlabelled, the same as
the bank, one image per class) has wasted those hours; every check that does not need the trained
weights is made here, before training. On a dataset with a single split the evaluation queries are a
seeded hold-out of it (:func:`simwnw_hf.eval.splits.resolve_eval_splits`): those images are left out of
SSL training, so the result can say ``queries_seen_in_training: false``.

Decision on a split that cannot give a top-1 (e.g. the 500-image ImageNet sample, one image per class):
the run is refused before step 1 with one line that names the cause and suggests ``--no-knn-eval``,
rather than training and then skipping the evaluation the user asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from simwnw_hf.data.datasets import load_image_dataset
from simwnw_hf.eval.splits import resolve_eval_splits

__all__ = ["EvalPlan", "plan_run_end_eval"]


@dataclass(frozen=True)
class EvalPlan:
    """Whether the run ends with a kNN evaluation, which split indices to keep out of training, and why."""

    enabled: bool
    exclude: Optional[List[int]] = None  # hold-out query indices into the training split
    note: Optional[str] = None           # one line to print before training starts


def _refusal(cfg, problem: str) -> ValueError:
    problem = problem.replace("--test-split", "--eval-split")  # the eval CLI's flag has another name here
    return ValueError(f"run-end kNN evaluation (--eval-split {cfg.eval_split}): {problem}; "
                      f"or pass --no-knn-eval to train without it")


def plan_run_end_eval(cfg) -> EvalPlan:
    """The :class:`EvalPlan` of ``cfg`` (a TrainConfig); raises ValueError (one line) when it cannot work."""
    if not cfg.knn_eval:
        return EvalPlan(False)
    probe = load_image_dataset(cfg.dataset, cfg.split, cfg.image_column, cfg.label_column, max_samples=1)
    if probe.label_column is None:
        return EvalPlan(False, note=f"{probe.source} split '{probe.split}' has no label column: the run-end kNN "
                                    f"evaluation is skipped (name the column with --label-column)")
    try:
        splits = resolve_eval_splits(cfg.dataset, cfg.split, cfg.eval_split, cfg.image_column, cfg.label_column,
                                     max_train=1, max_test=1)
    except ValueError as exc:
        raise _refusal(cfg, str(exc)) from exc
    if splits.queries.label_column is None:
        raise _refusal(cfg, f"split '{splits.query_split}' of {splits.query_source} has no label column")
    if splits.query_indices:
        return EvalPlan(True, list(splits.query_indices),
                        note=f"evaluation: {splits.note}; these {len(splits.query_indices)} images are left out "
                             f"of SSL training")
    return EvalPlan(True)
