"""One command per results table: train every arm x seed, evaluate, write the table and its plots.

    python benchmarks/experiments/run.py ssl_cnn                 # CPU scale, seeds 0 1 2
    python benchmarks/experiments/run.py all --jobs 2            # every table, two runs at a time
    python benchmarks/experiments/run.py ssl_cnn --scale paper --dataset uoft-cs/cifar10 \\
        --launcher "accelerate launch --num_processes 8" --jobs 1    # the papers' setting on GPUs

Runs are resumable (see runner.py): rerunning the same command continues where it stopped and only
rewrites the table. ``--report-only`` rewrites the tables from the runs already finished.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import write  # noqa: E402
from runner import REPO, Runner, parse_launcher  # noqa: E402
from tables import DEFAULT_DATA, DEFAULT_TRANSFER_DATA, TABLES  # noqa: E402


def _dataset(arg, table_name: str) -> str:
    if arg:
        return arg
    path = (REPO / DEFAULT_DATA[table_name]).resolve()
    if not path.exists():
        raise SystemExit(f"error: table {table_name} trains on {DEFAULT_DATA[table_name]} by default, which is not "
                         f"here; pass --dataset (a Hub id, parquet file/folder or image folder)")
    return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", choices=[*TABLES, "all"], help="which tables to make")
    parser.add_argument("--scale", choices=["cpu", "paper"], default="cpu",
                        help="cpu: minutes per run on 2 cores (default); paper: the papers' epochs, batch and widths")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per arm (default 0 1 2)")
    parser.add_argument("--dataset", default=None, help="training data (default: the table's ../shared sample)")
    parser.add_argument("--transfer-dataset", default=None,
                        help="labelled data for the transfer kNN of the DINO table (default ../shared cifar10)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "experiments", help="where runs live")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results" / "experiments",
                        help="where tables and plots are written")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each with --threads threads)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--launcher", default=None,
                        help='what starts a training script, e.g. "accelerate launch --num_processes 8" '
                             "(default: this python)")
    parser.add_argument("--dry-run", action="store_true", help="print the first seed's commands and stop")
    parser.add_argument("--report-only", action="store_true", help="only rewrite tables from finished runs")
    parser.epilog = "Flags after a bare -- are added to every arm's training command."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be at least 1")
    names = list(TABLES) if "all" in args.tables else args.tables
    # the command that makes the runs (a --report-only rewrite reads the runs that command made)
    command = "python benchmarks/experiments/run.py " + " ".join(shlex.quote(a) for a in argv if a != "--report-only")
    ok = True
    for name in names:
        table = TABLES[name]
        dataset = _dataset(args.dataset, name)
        eval_args = []
        if table.transfer_eval:
            transfer = args.transfer_dataset or str((REPO / DEFAULT_TRANSFER_DATA).resolve())
            eval_args = ["--transfer-dataset", transfer]
        runner = Runner(table, args.scale, args.seeds, args.runs_dir, dataset, parse_launcher(args.launcher),
                        args.threads, args.jobs, extra, eval_args)
        if args.dry_run:
            for task in runner.tasks.values():
                if task.seed == args.seeds[0] and not task.arm.equal_flops_to:
                    print(" ".join(shlex.quote(a) for a in runner.command(task)))
            continue
        if not args.report_only:
            ok = runner.run() and ok
        print(f"wrote {write(table, args.runs_dir, args.results_dir, args.seeds, command, args.scale)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
