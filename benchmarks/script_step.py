"""The training script's own step, dense vs SimWnW, interleaved in one process.

Why: ``match_in_loader.py`` times whole ``training/<framework>.py`` runs, one process per arm, a few
rounds of about ten steps each; on a shared 2-core VM one round's arms differ by up to 10% from drift
alone (``benchmarks/results/simwnw_step.md``, runs N-P), so a 5% target cannot be resolved that way.
This builds the real runs with the trainer's own :func:`~simwnw_hf.train.trainer.build_run` (framework,
heads, optimizer, schedule, Accelerate, tuned malloc, exactly as the script) and times its
:func:`~simwnw_hf.train.trainer.train_step` (forward of both views through the framework, loss,
backward, optimizer and schedule step, momentum update), the arms alternating step by step in a rotating
order, so that drift hits them alike.

Arms (``--arms``):

* ``dense``: no pruning;
* ``loader``: ``--simwnw --match-in loader``: the plan is made by the collate function, as the
  DataLoader workers make it (here in this process, before the clock; its CPU seconds are reported
  as ``plan CPU``: with workers that CPU runs next to the step);
* ``step``: ``--simwnw --match-in step``: the matching inside the timed step.

By default the batches are the first ``--batches`` of each run's own loader (one worker process, as
the script with ``--num-workers 1``; same seed, so the same images and views in every arm), read in
full before the clock starts and then cycled: no worker runs during the timed steps, so this is the
step alone, and the workers' matching CPU is reported beside it.

``--live-worker`` instead gives each arm one persistent DataLoader worker (the run's own dataset and
collate, so the ``loader`` arm's worker makes the plan) with one batch in flight: the worker starts an
arm's next batch when the arm takes its current one, so it decodes, augments (and matches) *during that
arm's step*, competing for the cores as it does in ``training/<framework>.py --num-workers 1``, while
the other arms' workers sit idle. The time each step then waited for its batch is reported as well. Extra flags for every run (``--flags``) and for the SimWnW runs
(``--prune-flags``) are the training script's. Each repeat gives one time per arm; the ratio of an arm
to dense is taken per repeat (neighbours in time), and the table reports median and min-max.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/script_step.py --dataset <imagenet-sample>/dev.parquet \\
        --model simwnw_resnet50 --image-size 224 --batch-size 8 --threads 2 --repeats 12
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from simwnw_hf.data.loader import EpochShuffleSampler
from simwnw_hf.ssl.loader_plan import loader_plan
from simwnw_hf.train.config import parse_config
from simwnw_hf.train.trainer import _collate, build_run, meter_dense_step, train_step

from report_rows import append_rows  # noqa: E402  (benchmarks/ is the script directory)

ARM_FLAGS = {"dense": [], "loader": ["--simwnw", "--match-in", "loader"], "step": ["--simwnw", "--match-in", "step"]}


def build_arm(args, arm: str, out: Path):
    """The run of ``arm`` and its first ``--batches`` batches, each with the plan the collate made."""
    argv = ["--dataset", args.dataset, "--model", args.model, "--image-size", str(args.image_size),
            "--batch-size", str(args.batch_size), "--max-samples", str(args.batch_size * args.batches),
            "--max-steps", str(10 ** 6), "--num-workers", "1", "--no-knn-eval", "--output-dir", str(out),
            *shlex.split(args.flags), *((shlex.split(args.prune_flags) + ARM_FLAGS[arm]) if arm != "dense" else [])]
    run = build_run(parse_config(argv, {"framework": args.framework}))
    run.loader.set_epoch(0)
    run.views.set_epoch(0)
    batches, plan_cpu = [], []
    for batch in run.loader:
        batch.pop("skipped")
        made = loader_plan(batch)
        plan_cpu.append(made.seconds if made is not None else 0.0)
        meter_dense_step(run, batch)
        batches.append(batch)
    if len(batches) != args.batches:
        raise SystemExit(f"{arm}: the loader gave {len(batches)} batches, expected --batches {args.batches}")
    run.model.train()
    return run, batches, statistics.mean(plan_cpu)


def live_batches(run, arm: str):
    """Endless batches of ``run`` from one persistent worker with one batch in flight (``--live-worker``)."""
    loader = DataLoader(run.views, batch_size=run.cfg.batch_size, sampler=EpochShuffleSampler(len(run.views), run.cfg.seed),
                        drop_last=True, num_workers=1, prefetch_factor=1, persistent_workers=True,
                        collate_fn=_collate(run.cfg, run.unwrapped.backbone))
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        run.views.set_epoch(epoch)
        for batch in loader:
            batch.pop("skipped")
            made = loader_plan(batch)
            if arm == "loader" and made is None:
                raise SystemExit("loader arm: the worker made no plan")
            meter_dense_step(run, batch)
            yield batch


def timed_step(run, batch) -> tuple[float, object]:
    started = time.perf_counter()
    loss, stats = train_step(run, batch)
    loss.item()
    elapsed = time.perf_counter() - started
    run.step += 1
    return elapsed, stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="what training/<framework>.py --dataset reads")
    p.add_argument("--framework", default="simsiam")
    p.add_argument("--model", default="simwnw_resnet18_cifar")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    p.add_argument("--repeats", type=int, default=12, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arms", default="dense,loader,step")
    p.add_argument("--live-worker", action="store_true",
                   help="one DataLoader worker per arm making its next batch during its step (see above)")
    p.add_argument("--flags", default="", help="extra training-script flags for every arm")
    p.add_argument("--prune-flags", default="", help="extra flags for the SimWnW arms (e.g. '--psnr-threshold 15')")
    p.add_argument("--out", help="append the markdown rows to this file")
    args = p.parse_args()
    arms = args.arms.split(",")
    if arms[0] != "dense" or any(a not in ARM_FLAGS for a in arms):
        raise SystemExit(f"--arms: dense first, then any of loader, step; got {args.arms!r}")
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        print(f"note: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} differs from --threads {args.threads}")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        built = {arm: build_arm(args, arm, Path(tmp) / arm) for arm in arms}
        live = {arm: live_batches(built[arm][0], arm) for arm in arms} if args.live_worker else {}
        waits = {arm: [] for arm in arms}

        def next_batch(arm, i):
            if not live:
                batches = built[arm][1]
                return batches[i % len(batches)]
            started = time.perf_counter()
            batch = next(live[arm])
            waits[arm].append(time.perf_counter() - started)
            return batch

        for i in range(args.warmup):
            for arm in arms:
                timed_step(built[arm][0], next_batch(arm, i))
        for arm in arms:
            waits[arm].clear()
        times = {arm: [] for arm in arms}
        saved = {arm: [] for arm in arms}
        for r in range(args.repeats):
            order = arms[r % len(arms):] + arms[:r % len(arms)]
            for arm in order:
                run = built[arm][0]
                batch = next_batch(arm, r)
                elapsed, stats = timed_step(run, batch)
                times[arm].append(elapsed)
                dense = run.dense_per_image * batch["views"][0].shape[0]
                actual = dense - stats.dense_flops + stats.pruned_flops + stats.overhead_flops
                saved[arm].append(1.0 - actual / dense)

    dense_t = times["dense"]
    head = (f"{args.framework} {args.model} {args.image_size}px b{args.batch_size}",
            f"{args.threads}{' + live worker' if live else ''}",
            args.prune_flags or "-")
    rows = []
    for arm in arms:
        ratios = [t / d for t, d in zip(times[arm], dense_t)]
        plan_cpu = built[arm][2]
        rows.append(f"| {' | '.join(head)} | {arm} | {statistics.median(times[arm]):.3f} "
                    f"({min(times[arm]):.3f}-{max(times[arm]):.3f}) | **{statistics.median(ratios):.3f}** "
                    f"({min(ratios):.3f}-{max(ratios):.3f}) | {100 * statistics.mean(saved[arm]):.1f}% | "
                    f"{1000 * plan_cpu:.1f} ({100 * plan_cpu / statistics.median(dense_t):.2f}%) | "
                    f"{f'{1000 * statistics.median(waits[arm]):.1f}' if live else '-'} |")
    header = ["| script step | threads | SimWnW flags | arm | step wall (s) median (min-max) | "
              "ratio to dense, per repeat: median (min-max) | FLOPs saved (step) | plan CPU per step, ms (/ dense step) | "
              "data wait per step, ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    note = (f"{args.repeats} repeats, live workers" if live else f"{args.repeats} repeats over {args.batches} batches")
    print(f"<!-- {note} -->\n" + "\n".join(header + rows))
    if args.out:
        append_rows(args.out, header + rows, note)


if __name__ == "__main__":
    main()
