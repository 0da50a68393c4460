"""Back Razor's activation memory and step time on a whole encoder, vs dense (issue 11).

Saved-activation memory: the bytes autograd holds for backward after one training forward of the
whole encoder (``saved_tensor_bytes``: every saved storage once, parameters included), on a batch of
CIFAR-10 test images (eval transform, 32 px), for the dense encoder and for Back Razor at each rho,
with the ReLUs saving a 1-bit mask (``relu_masks=True``, the default) and without (the convs'
pruned copies only). Weights: timm's random init, seed 0 (the kept fraction depends on the
activations; at rho >= 0.5 the ReLU zeros fall under the threshold, so the kept count is set by rho).

Step time: forward + backward of ``encoder(x).pow(2).mean()``, dense vs Back Razor (rho 0.9, with and
without the bit-mask ReLUs), interleaved per repeat; median and min-max of the per-repeat ratio to
dense, process CPU time beside it.

Command for ``benchmarks/results/gating_memory.md``::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/gating_memory.py --dataset /work/shared/data/cifar10 --repeats 9 \\
        --out benchmarks/results/gating_memory.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import timm
import torch

import simwnw_hf  # noqa: F401
from simwnw_hf.data.datasets import load_image_dataset
from simwnw_hf.eval.features import eval_transform
from simwnw_hf.gating.backrazor import BackRazorConv2d, convert_back_razor, saved_tensor_bytes

QUARTER = {"channels": [16, 32, 64, 128], "stem_width": 16}  # the encoder of gating_training.md's runs


def build(model_args: dict, rho=None, relu_masks=True):
    torch.manual_seed(0)
    m = timm.create_model("simwnw_resnet18_cifar", num_classes=0, **model_args)
    if rho is not None:
        convert_back_razor(m, rho, relu_masks=relu_masks)
    return m.train()


def saved_mib(model, x) -> float:
    _, n = saved_tensor_bytes(lambda: model(x).sum())
    return n / 2**20


def kept_fraction(model) -> float:
    convs = [c for c in model.modules() if isinstance(c, BackRazorConv2d) and c.record is not None]
    return sum(c.record["kept_fraction"] for c in convs) / len(convs)


def step(model, x):
    model.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="CIFAR-10 folder / parquet / Hub id with a 'test' split")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.8, 0.9])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = load_image_dataset(args.dataset, "test", None, None, args.batch)
    probe = build(QUARTER)
    t = eval_transform(32, probe.pretrained_cfg["mean"], probe.pretrained_cfg["std"])
    x = torch.stack([t(images.get_image(i)) for i in range(args.batch)])

    mem = {}
    for label, model_args in (("quarter-width ResNet-18 (the runs' encoder)", QUARTER), ("ResNet-18 (full width)", {})):
        dense = saved_mib(build(model_args), x)
        rows = [("dense", f"{dense:.1f}", "1.000", "-")]
        mem[label] = {"dense": dense}
        for rho in args.rhos:
            for relu_masks in (True, False):
                m = build(model_args, rho, relu_masks)
                mib = saved_mib(m, x)
                name = f"Back Razor rho {rho}" + ("" if relu_masks else ", plain nn.ReLU")
                rows.append((name, f"{mib:.1f}", f"{mib / dense:.3f}", f"{kept_fraction(m):.3f}"))
                mem[label][name] = mib
        mem[label]["rows"] = rows

    timed = {"dense": build(QUARTER), "razor": build(QUARTER, 0.9), "razor_plain_relu": build(QUARTER, 0.9, False)}
    for m in timed.values():
        step(m, x)  # warm-up
    wall = {k: [] for k in timed}
    cpu = {k: [] for k in timed}
    for _ in range(args.repeats):
        for name, m in timed.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step(m, x)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    def spread(times, name):
        r = [a / b for a, b in zip(times[name], times["dense"])]
        return f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})", r

    lines = ["# Back Razor: saved-activation memory and step time of the whole encoder vs dense", "",
             f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/gating_memory.py --dataset {args.dataset}"
             f" --batch {args.batch} --rhos {' '.join(map(str, args.rhos))} --repeats {args.repeats}"
             + (f" --out {args.out}`" if args.out else "`") + "  ",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
             f"torch {torch.__version__}, 1 thread, on a 2-core machine shared with other jobs.", "",
             f"One training forward of {args.batch} CIFAR-10 test images (32 px) through `simwnw_resnet18_cifar` "
             "(random init, seed 0); MiB autograd saves for backward (each storage once, weights included). "
             "kept = mean share of each conv's input kept for grad-weight.", ""]
    for label, d in mem.items():
        lines += [f"**{label}**", "", "| encoder | saved MiB | vs dense | kept |", "|---|---|---|---|",
                  *[f"| {' | '.join(r)} |" for r in d["rows"]], ""]
    lines += [f"Step time (quarter width, forward + backward, {args.batch} images, {args.repeats} interleaved repeats, "
              f"ratio to dense, median (min-max)); dense step median {statistics.median(wall['dense']):.3f} s:", "",
              "| encoder | wall-time ratio | CPU-time ratio |", "|---|---|---|",
              f"| Back Razor 0.9 | {spread(wall, 'razor')[0]} | {spread(cpu, 'razor')[0]} |",
              f"| Back Razor 0.9, plain nn.ReLU | {spread(wall, 'razor_plain_relu')[0]} | "
              f"{spread(cpu, 'razor_plain_relu')[0]} |", "",
              "The added work: per-sample selection of the kept activations (topk / kthvalue), bit packing, "
              "masked_select / masked_scatter, and the bit-mask ReLUs' pack/unpack; nothing skips the pruned "
              "grad-weight products (the FLOPs saving is what a sparse kernel could skip).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"memory_mib": {k: {n: v for n, v in d.items() if n != "rows"} for k, d in mem.items()},
                       "wall_s": wall, "cpu_s": cpu}, fh, indent=1)


if __name__ == "__main__":
    main()
