"""The few lines a training run ends with: what it reached, against what, at what cost.

Read from ``summary.json``'s fields (:func:`simwnw_hf.train.trainer.run_summary`, plus ``eval``), so the
report and the files never disagree. Pure: no I/O, returns the text.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["run_report", "format_flops", "format_seconds"]


def format_flops(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.3g} FLOP"


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _knn_line(knn: dict, baseline: Optional[dict]) -> str:
    queries = knn.get("queries") or {}
    held = "held-out" if knn.get("holdout") else f"'{queries.get('split', knn.get('test_split'))}'"
    seen = {True: ", queries seen in SSL training", False: ", queries never trained on"}.get(
        knn.get("queries_seen_in_training"), "")
    line = (f"kNN top-1 (k={knn.get('k')}, {knn.get('num_train')}-image bank, {knn.get('num_test')} {held} "
            f"queries{seen}): trained {knn['top1']:.1f}%")
    if baseline is not None:
        gain = knn["top1"] - baseline["top1"]
        line += f" vs random init {baseline['top1']:.1f}% ({gain:+.1f} points)"
    return line


def run_report(summary: dict, output_dir, total_s: Optional[float] = None, skipped: Optional[str] = None) -> str:
    """The closing report of a run (a few lines).

    ``skipped``: why there is no evaluation (``--no-knn-eval``, unlabelled data), said instead of a top-1.
    """
    method = (summary.get("pruning") or {}).get("method")
    title = f"{summary.get('framework')}" + (f" + {method}" if method else " (dense)")
    lines = [f"== {title}: {summary.get('model')} on {summary.get('dataset')} ({summary.get('num_images')} images, "
             f"{summary.get('steps')} steps, {summary.get('epochs', 0):.1f} epochs, batch "
             f"{summary.get('global_batch_size')}) =="]
    knn = (summary.get("eval") or {}).get("knn")
    if knn is not None:
        lines.append(_knn_line(knn, (summary.get("eval") or {}).get("knn_random_init")))
    else:
        lines.append(f"no evaluation: {skipped or 'none ran'}; evaluate later with "
                     f"python -m simwnw_hf.eval knn --checkpoint {output_dir}")
    dense, actual = summary.get("dense_train_flops"), summary.get("train_flops")
    if method:
        saving = summary.get("flops_saving_pct")
        cost = (f"training FLOPs: dense {format_flops(dense)}, {method} {format_flops(actual)}"
                + (f" ({saving:.1f}% saved)" if saving is not None else ""))
        if summary.get("mean_removal_ratio") is not None:
            cost += f", mean removal ratio {summary['mean_removal_ratio']:.2f}"
        if summary.get("mean_kept_token_ratio") is not None:
            cost += f", mean kept-token ratio {summary['mean_kept_token_ratio']:.2f}"
    else:
        cost = f"training FLOPs: {format_flops(actual)} (dense)"
    lines.append(cost)
    wall = f"wall time: training steps {format_seconds(summary.get('wall_time_s'))}"
    if summary.get("loader_match_cpu_s"):  # the matching moved off the steps: say where its cost went
        wall += (f" (block matching ran in the DataLoader workers: {format_seconds(summary['loader_match_cpu_s'])} "
                 f"CPU; steps waited {format_seconds(summary.get('data_wait_s'))} for data)")
    elif method == "simwnw" and summary.get("plan_time_s") and summary.get("wall_time_s"):  # matching in the steps
        wall += (f" (matching the views {format_seconds(summary['plan_time_s'])} of it, "
                 f"{100 * summary['plan_time_s'] / summary['wall_time_s']:.1f}%)")
    if total_s is not None:
        wall += f", whole run {format_seconds(total_s)} (data, checkpoints, evaluation included)"
    lines.append(wall + f"; files in {output_dir}")
    return "\n".join(lines)
