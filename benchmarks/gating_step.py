"""Gating methods' training-step cost vs dense: analytic FLOPs ratio and interleaved wall-time ratio.

One two-view encoder step on ``simwnw_resnet18_cifar`` (32px, random-normal views, seed 0): both views
forward, a stand-in loss ``mean((f1 - f2)^2)`` of the pooled features (plus each method's own loss
terms), backward. The SSL heads are left out on purpose: they are the same for every method. Methods:

* dense: the plain encoder, both views;
* dualgate: ``simwnw_dualgate_resnet18_cifar``, view 1 gated / view 2 dense (seed 002), budget
  (t_d = 0.3) + bound loss; FLOPs from ``pair_step_stats`` (one dense, one gated view);
* cdg / scdg: the encoder after ``convert_cdg`` (SCDG: groups of 8 channels), view 1 on branch 0,
  view 2 on branch 1, + threshold loss; FLOPs from ``cdg_stats``;
* back_razor: ``convert_back_razor(rho=0.9)``; FLOPs from ``back_razor_stats``; memory from
  ``saved_tensor_bytes`` (whole model, each storage once).

Gates are at random initialisation (dual gate ~50% on, CDG tau = 0), so the FLOPs ratios describe
untrained gates, not the trained budgets. All three implementations compute densely and mask (CDG
runs two convs per layer), so their wall time does not follow their FLOPs: the FLOPs are what a
sparse executor could skip. Timings: each repeat runs every method once, in order (interleaved);
ratios are per repeat against that repeat's dense step; median and min-max reported.

Command for ``benchmarks/results/gating_step.md``::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/gating_step.py --out benchmarks/results/gating_step.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import timm
import torch

import simwnw_hf  # noqa: F401
from simwnw_hf.gating.backrazor import back_razor_stats, convert_back_razor, saved_tensor_bytes
from simwnw_hf.gating.cdg import cdg_stats, convert_cdg, forward_branch, threshold_loss
from simwnw_hf.gating.dualgate_stats import dualgate_losses, dualgate_stats, pair_step_stats


def _pool(f):
    return f.mean((2, 3))


def build(seed=0):
    torch.manual_seed(seed)
    dense = timm.create_model("simwnw_resnet18_cifar")
    torch.manual_seed(seed)
    dual = timm.create_model("simwnw_dualgate_resnet18_cifar").add_dense_path()  # co-training: dense BN too
    cdg = timm.create_model("simwnw_resnet18_cifar")
    cdg.load_state_dict(dense.state_dict())
    convert_cdg(cdg)
    scdg = timm.create_model("simwnw_resnet18_cifar")
    scdg.load_state_dict(dense.state_dict())
    convert_cdg(scdg, structured_group=8)
    br = timm.create_model("simwnw_resnet18_cifar")
    br.load_state_dict(dense.state_dict())
    convert_back_razor(br, rho=0.9)
    models = dict(dense=dense, dualgate=dual, cdg=cdg, scdg=scdg, back_razor=br)
    for m in models.values():
        m.train()
    return models


def step(name, model, x1, x2):
    """One step; returns the method's stats (None for dense)."""
    model.zero_grad(set_to_none=True)
    if name == "dualgate":
        f1, masks = model.forward_dual(x1, gated=True)
        f2, _ = model.forward_dual(x2, gated=False)
        budget, bound = dualgate_losses(model, masks, x1.shape[-2:], target=0.3, epoch=0)
        loss = (_pool(f1) - _pool(f2)).pow(2).mean() + budget + bound
        loss.backward()
        return pair_step_stats(dualgate_stats(model, masks, x1.shape[-2:]))
    if name in ("cdg", "scdg"):
        f1, f2 = forward_branch(model, x1, 0), forward_branch(model, x2, 1)
        ((_pool(f1) - _pool(f2)).pow(2).mean() + threshold_loss(model)).backward()
        return cdg_stats(model, x1.shape[-2:])
    f1, f2 = model.forward_features(x1), model.forward_features(x2)
    (_pool(f1) - _pool(f2)).pow(2).mean().backward()
    if name == "back_razor":
        return back_razor_stats(model, x1.shape[-2:], x1.shape[0])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(args.batch, 3, 32, 32, generator=g)
    x2 = torch.randn(args.batch, 3, 32, 32, generator=g)
    models = build()
    stats = {n: step(n, m, x1, x2) for n, m in models.items()}  # warm-up + FLOPs of the timed batch
    times = {n: [] for n in models}
    for _ in range(args.repeats):
        for n, m in models.items():
            t = time.perf_counter()
            step(n, m, x1, x2)
            times[n].append(time.perf_counter() - t)
    _, bytes_dense = saved_tensor_bytes(lambda: models["dense"].forward_features(x1))
    _, bytes_br = saved_tensor_bytes(lambda: models["back_razor"].forward_features(x1))
    kept = [c.record["kept_fraction"] for c in models["back_razor"].modules() if getattr(c, "record", None)]

    pair = stats["dualgate"]  # forward: dense view + gated view, vs two dense views
    gated_view_ratio = (pair.forward_actual - pair.forward_dense / 2) / (pair.forward_dense / 2)
    rows = []
    for n in models:
        ratios = [t / d for t, d in zip(times[n], times["dense"])]
        st = stats[n]
        rows.append((n, "1.000" if st is None else f"{st.train_ratio:.3f}",
                     "1.000" if st is None else f"{st.forward_ratio:.3f}",
                     "-" if st is None else f"{st.sparsity:.3f}",
                     f"{statistics.median(times[n]):.2f}",
                     f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"))
    lines = [
        "# Gating methods: training-step FLOPs and wall time vs dense",
        "",
        "Command: `OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/gating_step.py"
        f" --batch {args.batch} --repeats {args.repeats} --threads {args.threads}"
        + (f" --out {args.out}`" if args.out else "`") + "  ",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} thread(s). The 2-core machine was shared with 4 other "
        "helpers' jobs during the run: absolute times are noisy, the interleaved ratios are what to read.",
        "",
        f"Step: {args.batch} pairs of 32px random-normal views, `simwnw_resnet18_cifar` features, stand-in "
        "loss (see the script's docstring). Gates untrained (random init).",
        "",
        "| method | train FLOPs ratio | forward FLOPs ratio | sparsity | step time median (s) | wall-time ratio median (min-max) |",
        "|---|---|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        "- dualgate: FLOPs of the whole dual step (view 1 gated, view 2 dense) vs two dense views; sparsity "
        "= fraction of gated-block channels off in the gated view. Forward ratio of the gated view alone: "
        f"{gated_view_ratio:.3f}.",
        "- cdg / scdg: sparsity = share of conditional-path conv work switched off (FLOPs-weighted), mean of "
        "the two branches. SCDG index reduction: 8x.",
        f"- back_razor (rho = 0.9): pruned share of conv input activations {stats['back_razor'].sparsity:.3f}; "
        f"what the convs themselves save for backward: {statistics.mean(kept) + 1 / 32:.3f} of their dense "
        f"inputs (kept values fp32 + 1 bit/element); whole-model bytes saved for backward (each storage once) "
        f"{bytes_br / 2**20:.1f} MiB vs dense {bytes_dense / 2**20:.1f} MiB = {bytes_br / bytes_dense:.3f}, "
        "the ReLUs saving a 1-bit mask instead of their output (the conv inputs), as the authors' "
        "custom_relu.py; the BatchNorms still save their inputs (trained BN needs them; the authors freeze "
        "BN). Without the bit-mask ReLUs the whole model saves more than dense "
        "(benchmarks/results/gating_memory.md).",
        "- Wall time: every method computes densely and masks (CDG: two convolutions per layer, plus gating), "
        "so none is faster than dense here; the FLOPs ratios are what a sparse executor could skip.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
