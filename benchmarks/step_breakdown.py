"""Where a SimWnW step's time goes: the dense step and the pair step split into parts, in wall time.

Why: the step-time ratio (``simwnw_step.py``) says how much dearer a SimWnW step is, not which part of it
costs the difference; torch.profiler sees only aten ops (not block matching, not the numba waxing
loops, not Python bookkeeping) and inflates small ops. This times each part with ``time.perf_counter``
around the real calls of the same step ``simwnw_step.py`` runs (encoder forward of both views, SimSiam
loss on pooled features, backward), dense and pair interleaved in every repeat:

* dense: forward (both views + loss), backward;
* pair: ``plan_pair`` (block matching), forward (``forward_pair`` + loss), backward, and inside the
  forward the executor's layer operations (``conv``, ``bn_act``, ``add_act``, ``max_pool``, ``wax``),
  timed by wrapping the methods of the executor instance for the duration of the run. ``wax`` is
  waxing-and-waning as a whole (ring distances, ring errors, decisions, zeroing where a mask grew).

The ``extra`` column is the median of (pair part - dense part) over repeats, in ms and as a share of the
dense step's median (matching counts whole: the dense step has none). The forward parts are per step
(summed over the step's calls) and have no dense counterpart timed, so no extra. CPU, one process;
``--threads`` sets torch's thread count; ``--batches N`` cycles N different batches (masks change from
batch to batch as in training; ``simwnw_step.py --batches``). Commands for the committed tables are in
``benchmarks/results/simwnw_step.md``.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/step_breakdown.py --source <imagenet-sample>/dev.parquet \\
        --model simwnw_resnet50 --size 224 --batch 8 --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.models import resnet_pair
from simwnw_hf.pruning.settings import SimWnWSettings

from report_rows import append_rows  # noqa: E402  (benchmarks/ is the script directory)
from simwnw_step import make_batches, simsiam_loss  # noqa: E402

LAYER_OPS = ("conv", "bn_act", "add_act", "max_pool", "wax")
EXECUTOR_OPS = {"reference": "_REFERENCE", "lean": "_LEAN", "fused": "_FUSED", "auto": "_AUTO"}


@contextmanager
def timed_layer_ops(executor: str, totals: dict):
    """Add the wall time of every layer operation of ``executor`` to ``totals[name]`` while active."""
    ops = getattr(resnet_pair, EXECUTOR_OPS[executor])

    def wrap(name):
        inner = getattr(ops, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - t
        return timed

    for name in LAYER_OPS:
        setattr(ops, name, wrap(name))  # instance attributes shadow the class's methods
    try:
        yield
    finally:
        for name in LAYER_OPS:
            delattr(ops, name)


def dense_parts(model, x1, x2) -> dict:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss = simsiam_loss(model(x1), model(x2))
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "step": t2 - t0}


def pair_parts(model, x1, x2, g1, g2, executor: str) -> dict:
    model.zero_grad(set_to_none=True)
    ops: dict = defaultdict(float)
    with timed_layer_ops(executor, ops):
        t0 = time.perf_counter()
        plan = model.plan_pair(x1, x2, g1, g2)
        t1 = time.perf_counter()
        f1, f2, _ = model.forward_pair(x1, x2, plan)
        loss = simsiam_loss(f1, f2)
        t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    parts = {"matching": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "step": t3 - t0}
    parts.update({f"forward: {k}": ops[k] for k in LAYER_OPS})
    return parts


def breakdown(model, batches, executor: str, repeats: int, warmup: int = 2):
    """Per-part wall times of ``repeats`` interleaved (dense, pair) steps on ``batches[repeat % len]``,
    after ``warmup`` rounds of each over every batch."""
    for _ in range(warmup):
        for x1, x2, g1, g2 in batches:
            dense_parts(model, x1, x2)
            pair_parts(model, x1, x2, g1, g2, executor)
    dense, pair = [], []
    for r in range(repeats):
        x1, x2, g1, g2 = batches[r % len(batches)]
        dense.append(dense_parts(model, x1, x2))
        pair.append(pair_parts(model, x1, x2, g1, g2, executor))
    return dense, pair


def table_rows(label: str, dense: list, pair: list) -> list:
    """Markdown rows: part, dense median, pair median, median of per-repeat (pair - dense) in ms and % of dense step."""
    step = statistics.median(d["step"] for d in dense)
    rows = []
    for part in pair[0]:
        p = [r[part] for r in pair]
        d = [r.get(part, 0.0) for r in dense]
        dense_cell = f"{1e3 * statistics.median(d):.1f}" if part in dense[0] else ""
        extra_cells = " | "  # a forward part has no dense counterpart timed: no difference to report
        if part in dense[0] or part == "matching":
            extra = statistics.median(a - b for a, b in zip(p, d))
            extra_cells = f"{1e3 * extra:+.1f} | {100 * extra / step:+.1f}%"
        rows.append(f"| {label} | {part} | {dense_cell} | {1e3 * statistics.median(p):.1f} "
                    f"({1e3 * min(p):.1f}-{1e3 * max(p):.1f}) | {extra_cells} |")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="image dataset (parquet/folder) read by load_image_dataset")
    p.add_argument("--model", default="simwnw_resnet18_cifar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, default=1,
                   help="cycle this many different batches over the repeats (as simwnw_step.py --batches)")
    p.add_argument("--executor", default="fused", choices=sorted(EXECUTOR_OPS))
    p.add_argument("--out", help="append the markdown rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=0).train()
    model.configure_pair_pruning(SimWnWSettings(executor=args.executor))
    cfg = model.pretrained_cfg
    batches = make_batches(args.source, args.batches, args.batch, args.size, cfg["mean"], cfg["std"])
    dense, pair = breakdown(model, batches, args.executor, args.repeats, warmup=1 if args.batches > 1 else 2)
    label = (f"{args.model} {args.size}px b{args.batch}, {args.threads} thread{'s' if args.threads > 1 else ''}, "
             f"{args.executor}{'' if args.batches == 1 else f', {args.batches} batches'}")
    lines = ["| case | part | dense (ms) | pair (ms, min-max) | extra (ms) | extra / dense step |",
             "|---|---|---|---|---|---|", *table_rows(label, dense, pair)]
    print("\n".join(lines), flush=True)
    if args.out:
        append_rows(args.out, lines, note=f"{args.repeats} repeats")
    return lines


if __name__ == "__main__":
    main()
