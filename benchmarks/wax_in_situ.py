"""Waxing's cost inside real SimWnW steps, with one of its mechanisms switched between two variants.

Why: replaying captured waxing calls back to back (``wax_cost.py``) misses what the step around them
does to them: after every parallel torch op the OpenMP workers spin on their cores for a while, so a
Python pool thread that runs a share of the compiled loop shares a core with a spinning worker. Here
whole pair steps run (``plan_pair``, ``forward_pair``, loss, backward; 4 batches cycled) and the
executor's ``wax`` operation (decision + zeroing) is timed per step, the two variants alternating
every round in one process:

* ``--compare split``: the compiled loops' shares on torch's OpenMP team (``jit_threads``, default)
  vs on the Python thread pool;
* ``--compare zeroing``: zeros written at the grown positions only (``wax_jit.zero_grown_``, default)
  vs the multiply of every (channel, pixel) by the keep map.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/wax_in_situ.py --source $I --threads 2 --compare split
"""

from __future__ import annotations

import argparse
import statistics

import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.pruning.settings import SimWnWSettings
from simwnw_hf.simwnw import jit_threads, wax_jit
from simwnw_hf.train.allocator import tune_malloc

from simwnw_step import make_batches  # noqa: E402  (benchmarks/ is the script directory)
from step_breakdown import pair_parts  # noqa: E402


def _variants(compare: str) -> dict:
    """name -> a function that switches the variant on (module state the package reads at each call)."""
    if compare == "split":
        omp = jit_threads._torch_gomp()
        if omp is None:
            raise SystemExit("torch does not run on GNU OpenMP here: only the pool exists, nothing to compare")
        return {"torch's OpenMP team": lambda: setattr(jit_threads, "_OMP", omp),
                "Python thread pool": lambda: setattr(jit_threads, "_OMP", None)}
    kernel = wax_jit._zero_grown
    if kernel is None:
        raise SystemExit("numba is unavailable here: only the multiply exists, nothing to compare")
    return {"grown positions only": lambda: setattr(wax_jit, "_zero_grown", kernel),
            "multiply by keep map": lambda: setattr(wax_jit, "_zero_grown", None)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="image dataset (parquet/folder) read by load_image_dataset")
    p.add_argument("--model", default="simwnw_resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5, help="rounds after one warm-up round; each runs every batch")
    p.add_argument("--compare", choices=("split", "zeroing"), required=True)
    args = p.parse_args(argv)
    variants = _variants(args.compare)
    tune_malloc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=0).train()
    model.configure_pair_pruning(SimWnWSettings(executor="fused"))
    cfg = model.pretrained_cfg
    batches = make_batches(args.source, args.batches, args.batch, args.size, cfg["mean"], cfg["std"])
    times = {name: ([], []) for name in variants}
    for rnd in range(args.rounds + 1):
        for name, switch in variants.items():
            switch()
            for batch in batches:
                parts = pair_parts(model, *batch, "fused")  # step and per-operation wall times
                if rnd:  # round 0 warms up (compiles) every variant
                    times[name][0].append(parts["step"])
                    times[name][1].append(parts["forward: wax"])
    next(iter(variants.values()))()  # leave the default on

    def cell(v):
        return f"{1e3 * statistics.median(v):.1f} ms ({1e3 * min(v):.1f}-{1e3 * max(v):.1f})"
    print("| model / input | threads | compared | variant | waxing per step | step |\n|---|---|---|---|---|---|")
    for name, (step, wax) in times.items():
        print(f"| {args.model} {args.size}px b{args.batch}, {args.batches} batches | {args.threads} | {args.compare} | "
              f"{name} | {cell(wax)} | {cell(step)} |")


if __name__ == "__main__":
    main()
