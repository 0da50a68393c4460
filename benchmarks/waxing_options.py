"""Kept conv FLOPs under the waxing choices the SimWnW paper leaves open (issue 10 item 3), at init.

For one batch of real view pairs and a randomly initialised (or, with ``--checkpoint``, trained) encoder, the pair path (lean executor,
forward only, BatchNorm in training mode) is run with each option and the share of forward conv
work kept is reported, overall and per stage, at two granularities:

* triples: (image, input channel, output position) triples whose window holds a kept pixel of that
  channel (what ``forward_pair`` reports as ``kept_flops``);
* spatial: output positions with any kept pixel in the window, times all input channels (what an
  executor that skips whole positions can skip).

Options: where waxing happens (the paper reading = every block input and inner 3x3 conv input;
block inputs only; inner 3x3 inputs only; stage inputs only; none), the number of rings, how a ring
is decided (per channel, the paper's reading, or spatially over all channels) and the PSNR's MAX
(per channel or the whole map), and at 224px a block size aligned to the network strides (32
instead of 30).

Command for ``benchmarks/results/waxing_options.md``::

    PYTHONPATH=. python benchmarks/waxing_options.py --source <cifar10 train.parquet> --out benchmarks/results/waxing_options.md
    PYTHONPATH=. python benchmarks/waxing_options.py --source <imagenet dev.parquet> --model simwnw_resnet50 \\
        --size 224 --batch 8 --block-sizes 30,32 --out benchmarks/results/waxing_options.md
"""

from __future__ import annotations

import argparse
import re

import timm
import torch

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.models.resnet_pair import lean_forward_features
from simwnw_hf.simwnw.flops import triple_flops
from simwnw_hf.simwnw.lean_exec import wax_compact
from simwnw_hf.simwnw.masked_exec import ConvRecord
from simwnw_hf.simwnw.masks import pair_expander

from report_rows import append_rows  # noqa: E402  (benchmarks/ is the script directory)
from simwnw_step import make_batch  # noqa: E402  (same batch recipe as the step benchmark)

POINTS = {
    "paper: block inputs + inner 3x3": lambda name: True,
    "block inputs only": lambda name: name.endswith(".conv1"),
    "inner 3x3 inputs only": lambda name: name.endswith(".conv2"),
    "stage inputs only": lambda name: re.fullmatch(r"layer\d\.0\.conv1", name) is not None,
}


def kept_shares(model, batch, block_size, rings, where, decision="channel", peak="channel"):
    x1, x2, g1, g2 = batch
    with torch.no_grad():
        match = model.plan_pair(x1, x2, g1, g2, block_size=block_size, psnr_threshold=20.0, search_window=None).match
        base = pair_expander(match.src_yx, match.match_yx, match.similar, match.block_size, tuple(x1.shape[-2:]),
                             20.0, rings, wax_fn=wax_compact, decision=decision, peak=peak)

        def expand(name, hs, rs, **kw):
            return base(name, hs, rs, **kw) if where(name) else (rs, 0.0)

        _, _, trace = lean_forward_features(model, [x1, x2], [match.mask1, match.mask2], expand)
    stages: dict = {}
    for rec in trace:
        if isinstance(rec, ConvRecord):
            per = triple_flops(rec.kernel_size, rec.out_channels)
            acc = stages.setdefault("stem" if rec.name == "conv1" else rec.name.split(".")[0], [0.0, 0.0, 0.0])
            acc[0] += per * rec.dense_triples
            acc[1] += per * float(rec.active_triples)
            acc[2] += per * rec.in_channels * float(rec.kept_positions)
    total = [sum(v[i] for v in stages.values()) for i in range(3)]
    return match.removal_ratio, total[1] / total[0], total[2] / total[0], {k: v[1] / v[0] for k, v in stages.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True)
    p.add_argument("--model", default="simwnw_resnet18_cifar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--block-sizes", default="", help="comma-separated block sides (default: the paper's)")
    p.add_argument("--checkpoint", default=None,
                   help="model.safetensors of a trained backbone (a training run's checkpoint-N/); default: random init")
    p.add_argument("--model-args", default="{}", help="JSON kwargs of timm.create_model (e.g. a run's --model-args)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import json

    model = timm.create_model(args.model, num_classes=0, **json.loads(args.model_args)).train()
    weights = "init"
    if args.checkpoint:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.checkpoint), strict=True)
        weights = args.checkpoint
    cfg = model.pretrained_cfg
    batch = make_batch(args.source, args.batch, args.size, cfg["mean"], cfg["std"], seed=0)
    blocks = [int(b) for b in args.block_sizes.split(",") if b] or [None]
    paper = "paper: block inputs + inner 3x3"
    cases = ([(b, 2, k, "channel", "channel") for b in blocks for k in POINTS]
             + [(blocks[0], r, paper, "channel", "channel") for r in (0, 1, 4)]
             + [(b, r, paper, d, pk) for b in blocks for r in (2, 4)
                for d, pk in (("spatial", "channel"), ("spatial", "map"), ("channel", "map"))])
    lines = []
    for block, rings, point, decision, peak in cases:
        removal, kept, spatial, per_stage = kept_shares(model, batch, block, rings, POINTS[point], decision, peak)
        lines.append(f"| {args.model} {args.size}px b{args.batch} ({'trained' if args.checkpoint else 'init'}) | "
                     f"{block or 'paper'} | {point} | {rings} | {decision} | {peak} | "
                     f"{removal:.3f} | **{kept:.3f}** | {spatial:.3f} | "
                     + " / ".join(f"{v:.3f}" for v in per_stage.values()) + " |")
        print(lines[-1], flush=True)
    if args.out:
        append_rows(args.out, lines, f"weights: {weights}")


if __name__ == "__main__":
    main()
