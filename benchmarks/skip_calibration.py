"""What the auto executor's cost model decided: dense vs skipping time per 1x1 conv case.

Runs ``auto`` SimWnW steps (``simwnw_step.pair_step``) on one batch with real and forced-removal masks,
then prints ``skip_exec.default_cost_model.decisions`` as a markdown table: conv shape, batch, stride,
threads, kept share (rounded up to a tenth), the measured forward+backward milliseconds of the dense
conv and of :func:`~simwnw_hf.simwnw.skip_exec.skip_conv1x1`, and whether the layer is skipped.
Cases keeping more than ``max_kept`` of their positions (or too small) are never timed and do not
appear. Command for the table in ``benchmarks/results/simwnw_step.md``::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/skip_calibration.py --source <imagenet dev.parquet> \\
        --model simwnw_resnet50 --size 224 --batch 8 --force-removal 0.5,0.7 --wax-decision spatial
"""

from __future__ import annotations

import argparse

import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.pruning.settings import SimWnWSettings
from simwnw_hf.simwnw.skip_exec import default_cost_model

from report_rows import append_rows  # noqa: E402  (benchmarks/ is the script directory)
from simwnw_step import make_batch, pair_step  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True)
    p.add_argument("--model", default="simwnw_resnet18_cifar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--force-removal", default="", help="comma-separated forced input removal levels (real masks always)")
    p.add_argument("--wax-decision", default="channel", choices=("channel", "spatial"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=0).train()
    cfg = model.pretrained_cfg
    x1, x2, g1, g2 = make_batch(args.source, args.batch, args.size, cfg["mean"], cfg["std"], seed=0)
    settings = SimWnWSettings(executor="auto", wax_decision=args.wax_decision)
    for force in [None] + [float(v) for v in args.force_removal.split(",") if v]:
        pair_step(model, x1, x2, g1, g2, settings, force)
    m = default_cost_model
    lines = ["| batch | in -> out channels | input HxW | stride | threads | kept <= | dense ms | skip ms | skipped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (b, cin, cout, h, w, stride, threads, tenth, _), (dense, skip) in sorted(m.decisions.items()):
        lines.append(f"| {b} | {cin} -> {cout} | {h}x{w} | {stride} | {threads} | {tenth / 10:.1f} | {dense:.1f} | "
                     f"{skip:.1f} | {'yes' if skip <= m.margin * dense else 'no'} |")
    print("\n".join(lines))
    if args.out:
        append_rows(args.out, lines, f"{args.model} {args.size}px, margin {m.margin}, max_kept {m.max_kept}")


if __name__ == "__main__":
    main()
