"""Block matching in the DataLoader workers vs in the training step, through the training script.

Every round runs three SimSiam trainings back to back, in a rotating order, all with the same
``--num-workers`` (decoding and augmentation in worker processes for every arm):

* ``dense``: no pruning;
* ``step``: ``--simwnw --match-in step`` (``plan_pair`` inside the step, as before ``--match-in``);
* ``loader``: ``--simwnw --match-in loader`` (the plan made in the workers, next to the augmentation).

(``--prune-flags '--token-pruning simwnw'`` for SimWnW token removal on a ViT.)

From each run's ``metrics.jsonl`` (``--log-every 1``) we take the steps after the first ``--warmup``:
the step wall time (``train_time_s``) and the time spent waiting for batches between them
(``data_wait_s``), per step, and the part of the step spent making the plan (``plan_time_s``: the
matching's wall time in the ``step`` arm, 0 in the others); ``summary.json`` gives the matching CPU
seconds spent in the workers (``loader_match_cpu_s``). Each round gives the ratio of each arm to the dense run of the same round
(neighbours in time, so drift on a shared machine cancels); we report the median and min-max over
rounds. The matching FLOPs are the same in both SimWnW arms (same plan, bit for bit: tests/test_loader_plan.py).

    PYTHONPATH=. python benchmarks/match_in_loader.py --dataset <imagenet-sample>/dev.parquet \\
        --model simwnw_resnet50 --image-size 224 --batch-size 8 --threads 1 --rounds 3 \\
        --out benchmarks/results/matching_overhead.md

Each round's raw numbers are printed as ``round R ARM: {...}``; ``--from-logs LOG...`` rebuilds the table
from such output, pooling the rounds of several runs (the committed logs are in
``benchmarks/results/match_in_loader_logs/``).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from report_rows import append_rows  # noqa: E402  (benchmarks/ is the script directory)

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"dense": [], "step": ["--match-in", "step"], "loader": ["--match-in", "loader"]}


def run_arm(args, arm: str, out: Path) -> dict:
    """One training run; per-step wall and data wait after the warm-up steps, and the summary."""
    cmd = [sys.executable, str(ROOT / "training" / "simsiam.py"), "--dataset", args.dataset, "--model", args.model,
           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--max-samples", str(args.batch_size * args.steps), "--max-steps", str(args.steps),
           "--num-workers", str(args.num_workers), "--log-every", "1", "--save-every", "100000",
           "--no-knn-eval", "--output-dir", str(out), *shlex.split(args.model_flags),
           *((shlex.split(args.prune_flags) + ARMS[arm]) if arm != "dense" else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[args.warmup - 1], lines[-1]
    steps = last["step"] - first["step"]
    summary = json.loads((out / "summary.json").read_text())
    return {"step_s": (last["train_time_s"] - first["train_time_s"]) / steps,
            "wait_s": (last["data_wait_s"] - first["data_wait_s"]) / steps,
            # None for runs of code from before the trainer recorded plan_time_s
            "plan_s": (last["plan_time_s"] - first["plan_time_s"]) / steps if "plan_time_s" in last else None,
            "match_cpu_s": (summary["loader_match_cpu_s"] or 0.0) / args.steps,
            "flops_saving_pct": summary["flops_saving_pct"]}


def _spread(values, fmt: str = ".3f", unit: str = "") -> str:
    return f"{statistics.median(values):{fmt}}{unit} ({min(values):{fmt}}-{max(values):{fmt}})"


ROUND_LINE = re.compile(r"^round (\d+) (\w+): (\{.*\})$")


def read_logs(paths) -> dict:
    """Per-arm results of earlier runs from their printed ``round R ARM: {...}`` lines, rounds of all logs in order."""
    results = {arm: [] for arm in ARMS}
    for path in paths:
        rounds = {}
        for line in Path(path).read_text().splitlines():
            found = ROUND_LINE.match(line)
            if found:
                rounds.setdefault(int(found[1]), {})[found[2]] = ast.literal_eval(found[3])
        for r in sorted(rounds):
            if set(rounds[r]) != set(ARMS):
                raise ValueError(f"{path}: round {r} has arms {sorted(rounds[r])}, expected {sorted(ARMS)}")
            for arm in ARMS:
                results[arm].append(rounds[r][arm])
    if not results["dense"]:
        raise ValueError(f"no 'round R ARM: {{...}}' lines in {', '.join(map(str, paths))}")
    return results


def table(results: dict, label: str, threads: int, workers: int) -> list:
    """Markdown rows: per arm, step wall and its ratio to the same round's dense run, data wait, matching
    wall in the step (also as a share of the same round's dense step) and matching CPU in the workers."""
    dense = results["dense"]
    rows = ["| run | threads + workers | arm | step wall (s) | step ratio to dense | (step + data wait) ratio | "
            "data wait per step (ms) | matching wall in the step, per step (ms) | ... / dense step | "
            "worker matching CPU per step (s) | FLOPs saved |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        got = results[arm]
        step = [g["step_s"] / d["step_s"] for g, d in zip(got, dense)]
        total = [(g["step_s"] + g["wait_s"]) / (d["step_s"] + d["wait_s"]) for g, d in zip(got, dense)]
        wait = [1e3 * g["wait_s"] for g in got]
        timed = all(g.get("plan_s") is not None for g in got)   # older logs have no plan time
        plan = [1e3 * g["plan_s"] for g in got] if timed else None
        share = [100 * g["plan_s"] / d["step_s"] for g, d in zip(got, dense)] if timed else None
        rows.append(f"| {label} | {threads} + {workers} | {arm} | {_spread([g['step_s'] for g in got])} | "
                    f"**{_spread(step)}** | {_spread(total)} | {_spread(wait, '.1f')} | "
                    f"{_spread(plan, '.1f') if timed else 'n/a'} | {_spread(share, '.2f', '%') if timed else 'n/a'} | "
                    f"{statistics.median(g['match_cpu_s'] for g in got):.3f} | "
                    f"{statistics.median(g['flops_saving_pct'] for g in got):.1f}% |")
    per_round = [lo["step_s"] / st["step_s"] for lo, st in zip(results["loader"], results["step"])]
    rows += ["", f"loader / step per round ({len(per_round)} rounds): {_spread(per_round)}"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="parquet file/folder, image folder or Hub id (needed unless --from-logs)")
    p.add_argument("--model", default="simwnw_resnet50")
    p.add_argument("--model-flags", default="", help="more flags of every arm, e.g. '--model-args {...}'")
    p.add_argument("--prune-flags", default="--simwnw",
                   help="flags of the SimWnW arms ('--token-pruning simwnw' for a ViT)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the per-step times")
    p.add_argument("--num-workers", type=int, default=1, help="DataLoader workers of every arm")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training process")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="append the markdown rows to this file")
    p.add_argument("--from-logs", nargs="+", metavar="LOG",
                   help="no runs: rebuild the table from the printed output of earlier runs (their rounds pooled)")
    args = p.parse_args()
    if not 1 <= args.warmup < args.steps:
        p.error("--warmup must be at least 1 and below --steps")
    if args.from_logs:
        results = read_logs(args.from_logs)
    elif not args.dataset:
        p.error("--dataset is needed to run the arms (or pass --from-logs)")
    else:
        results = {arm: [] for arm in ARMS}
        names = list(ARMS)
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for arm in order:
                    results[arm].append(run_arm(args, arm, Path(tmp) / f"{arm}-{r}"))
                    print(f"round {r} {arm}: {results[arm][-1]}", flush=True)
    rows = table(results, f"{args.model} {args.image_size}px b{args.batch_size}", args.threads, args.num_workers)
    print("\n".join(rows))
    if args.out:
        source = f"pooled from {', '.join(Path(f).name for f in args.from_logs)}" if args.from_logs else \
            f"{args.rounds} rounds x {args.steps} steps (first {args.warmup} left out), dataset {Path(args.dataset).name}"
        append_rows(args.out, rows, note=source)

if __name__ == "__main__":
    main()
