"""Kept BatchNorm + ReLU kernels alone: native BatchNorm vs the lean executor's eager ops vs the fused kernels.

Why: the ``fused`` executor's kept BatchNorm is compiled (``simwnw.fused_kernels``) while a dense step
runs PyTorch's native BatchNorm. Where the compiled kernel is faster than native, part of what a
SimWnW step gains over dense is a better BatchNorm kernel, not SimWnW; this table says how much.

For every BatchNorm shape of one view of a ResNet step (``--preset resnet50_224``: batch 8 at 224 px;
``resnet18_cifar_32``: batch 64 at 32 px), forward + backward (autograd, gradient of a fixed random
output gradient) of:

* native: ``F.batch_norm`` (training) + ``relu`` on an unmasked map (what the dense step runs);
* lean: ``lean_batch_norm(..., relu=True)`` on the same map with ``--removed`` of its positions zero;
* fused: the same with ``fused=True``.

Arms run interleaved within every repeat; the table gives per-shape medians and their sums, and the
ratio of the sums. ``python benchmarks/kept_bn_kernels.py --preset resnet50_224 --threads 2``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from simwnw_hf.simwnw.lean_exec import lean_batch_norm

PRESETS = {
    # (batch, channels, height) of the BatchNorms of one view, with their count per network
    "resnet50_224": [((8, 64, 112), 1), ((8, 64, 56), 6), ((8, 256, 56), 4), ((8, 128, 56), 1), ((8, 128, 28), 7),
                     ((8, 512, 28), 5), ((8, 256, 28), 1), ((8, 256, 14), 11), ((8, 1024, 14), 7),
                     ((8, 512, 14), 1), ((8, 512, 7), 5), ((8, 2048, 7), 4)],
    "resnet18_cifar_32": [((64, 64, 32), 5), ((64, 128, 16), 5), ((64, 256, 8), 5), ((64, 512, 4), 5)],
}


def _arms(shape, removed_share: float, seed: int):
    b, c, h = shape
    gen = torch.Generator().manual_seed(seed)
    removed = torch.rand(b, 1, h, h, generator=gen) < removed_share
    x = torch.randn(b, c, h, h, generator=gen)
    x_kept = x.masked_fill(removed, 0)
    gy = torch.randn(b, c, h, h, generator=gen)
    bn = nn.BatchNorm2d(c).train()

    def native():
        xi = x.clone().requires_grad_(True)
        F.batch_norm(xi, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, 0.1, bn.eps).relu().backward(gy)

    def kept(fused):
        def run():
            xi = x_kept.clone().requires_grad_(True)
            lean_batch_norm(bn, xi, removed, relu=True, fused=fused).backward(gy)
        return run

    return {"native": native, "lean": kept(False), "fused": kept(True)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="resnet50_224")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--removed", type=float, default=0.25, help="share of positions removed in the kept arms")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    totals = {"native": 0.0, "lean": 0.0, "fused": 0.0}
    print(f"preset {args.preset}, {args.threads} thread(s), {args.repeats} repeats, {args.removed:.0%} removed, "
          f"torch {torch.__version__}")
    print("| BN shape (B, C, H=W) | count | native ms | lean ms | fused ms | fused / native |")
    print("|---|---|---|---|---|---|")
    for i, (shape, count) in enumerate(PRESETS[args.preset]):
        arms = _arms(shape, args.removed, seed=i)
        for f in arms.values():  # warm up (the first fused call compiles)
            f()
            f()
        times = {k: [] for k in arms}
        for _ in range(args.repeats):
            for k, f in arms.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for k in totals:
            totals[k] += med[k] * count
        print(f"| {shape} | {count} | {med['native']:.2f} | {med['lean']:.2f} | {med['fused']:.2f} | "
              f"{med['fused'] / med['native']:.2f} |")
    print(f"| **all BNs of one view** | | **{totals['native']:.1f}** | **{totals['lean']:.1f}** | "
          f"**{totals['fused']:.1f}** | **{totals['fused'] / totals['native']:.2f}** |")


if __name__ == "__main__":
    main()
