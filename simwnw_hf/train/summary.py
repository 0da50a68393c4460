"""The one summary of a run's cost: FLOPs, saving and mean pruning ratios from cumulative counters.

Used by the trainer for ``summary.json`` and by :mod:`simwnw_hf.hub.record` for any checkpoint (the
counters are stored in every ``trainer_state.json``), so both report the same numbers the same way.
"""

from __future__ import annotations

from typing import Mapping, Optional

from simwnw_hf.pruning.settings import reported_ratios

GATING_RATIOS = ("sparsity", "forward_flops_ratio", "activation_saved_fraction")
"""Step means of the gating methods; summaries report ``mean_<name>`` (None unless the method measures it)."""

COUNTER_KEYS = ("train_flops", "dense_flops", "overhead_flops", "wall_time_s", "cpu_time_s", "removal_ratio_sum",
                "kept_token_ratio_sum", "pruned_steps", "skipped_images", "sparsity_sum", "forward_flops_ratio_sum",
                "activation_saved_fraction_sum", "loader_match_s", "data_wait_s", "plan_time_s")
"""Cumulative, resumable counters of a run (``trainer_state.json["counters"]``)."""


def flops_saving_pct(train_flops: Optional[float], dense_flops: Optional[float]) -> Optional[float]:
    """Percent of the dense run's training FLOPs that the run did not spend (the SimWnW paper's figure)."""
    if train_flops is None or not dense_flops:
        return None
    return 100.0 * (1.0 - train_flops / dense_flops)


def cost_summary(counters: Mapping[str, float], pruning: Mapping, num_processes: int = 1) -> dict:
    """Cost fields of a run summary from counters summed over processes.

    ``pruning``: the run's pruning record (:func:`simwnw_hf.pruning.pruning_record`); a ratio is
    reported (else None) when that method measures it and at least one step was pruned.
    ``wall_time_s`` is the counters' sum over processes divided by ``num_processes``; ``cpu_time_s`` is
    the CPU time of the training steps summed over processes (all threads: on a shared machine it moves
    less than wall time when other jobs take the cores, so cost ratios can be checked against it).
    """
    pruned = counters.get("pruned_steps") or 0
    ratios = reported_ratios(pruning)
    wall = counters.get("wall_time_s")
    return {
        "train_flops": counters.get("train_flops"),
        "dense_train_flops": counters.get("dense_flops"),
        "flops_saving_pct": flops_saving_pct(counters.get("train_flops"), counters.get("dense_flops")),
        "overhead_flops": counters.get("overhead_flops"),
        "mean_removal_ratio": (counters.get("removal_ratio_sum", 0.0) / pruned
                               if pruned and "removal_ratio" in ratios else None),
        "mean_kept_token_ratio": (counters.get("kept_token_ratio_sum", 0.0) / pruned
                                  if pruned and "kept_token_ratio" in ratios else None),
        "wall_time_s": wall / num_processes if wall is not None else None,
        "cpu_time_s": counters.get("cpu_time_s"),
        # SimWnW plans made in DataLoader workers (--match-in loader): their matching's thread CPU time,
        # summed over processes; off the steps' wall time, but not free
        "loader_match_cpu_s": counters.get("loader_match_s"),
        # wall time spent waiting for the next batch between steps (mean over processes): 0 when the
        # workers keep up, so the matching they do costs the run no time
        "data_wait_s": counters["data_wait_s"] / num_processes if counters.get("data_wait_s") is not None else None,
        # wall time the training steps spent making their pruning plans (block/patch matching), mean over
        # processes; part of wall_time_s, 0 when the DataLoader made the plans
        "plan_time_s": counters["plan_time_s"] / num_processes if counters.get("plan_time_s") is not None else None,
        **{f"mean_{name}": (counters.get(f"{name}_sum", 0.0) / pruned if pruned and name in ratios else None)
           for name in GATING_RATIOS},
    }
