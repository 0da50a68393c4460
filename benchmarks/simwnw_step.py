"""SimWnW training-step cost: wall time of dense vs the reference / lean / fused / auto executors, next to FLOPs.

One SimSiam-style encoder step: both views through the encoder (pooled features), symmetric negative
cosine with stop-gradient, backward. Variants, timed interleaved within every repeat (dense first,
then each executor) so that drift on a shared machine hits all of them alike:

* dense: ``encoder(x1)``, ``encoder(x2)``; FLOPs from ``torch.utils.flop_counter.FlopCounterMode``;
* dense-compiled (``--compiled-dense``): the same through ``torch.compile(encoder)``: what compiling alone
  buys a dense step, to read the ``fused`` executor's compiled BatchNorm against;
* reference / lean / fused / auto: the pair contract (``configure_pair_pruning(SimWnWSettings(executor=...))``,
  ``plan = plan_pair(x1, x2, g1, g2)``, ``forward_pair(x1, x2, plan)``): block matching + masked
  execution with waxing-and-waning. FLOPs = dense step FLOPs - (``PairStats.dense_flops -
  pruned_flops``) + overhead (``plan.overhead_flops`` matching + ``PairStats.overhead_flops`` waxing).

``--force-removal P`` replaces the block-matching decision by a random one removing about P of the
input blocks (the matched positions are kept, so view 2 removes the matched blocks): it shows what
the executors cost at removal levels the 20 dB test rarely reaches at random init.

``--tune-malloc`` sets glibc malloc as the training scripts do (``simwnw_hf/train/allocator.py``: no
trimming, so freed memory is not faulted in again every step) for all variants alike.

``--batches N`` cycles N different batches (seeds 0..N-1; repeat r runs batch r mod N in every variant, each
batch warmed up once per variant): masks, band sizes and compiled kernels' shapes change from batch to
batch as in training, which one repeated batch hides. FLOPs ratio and removal are then means over repeats.

Rows report the median step time with its min-max over repeats, and the median (min-max) over
repeats of the ratio to the dense step of the same repeat (neighbours in time, so drift cancels).
``cpu ratio`` is the same ratio of process CPU time (``time.process_time``, all threads): on a
shared machine it is less sensitive than wall time to other jobs taking the cores. ``match`` is
block matching's (``plan_pair``) CPU time as a share of the dense step's CPU time (medians). ``--profile ARM``
prints torch.profiler's self-CPU tables of one dense step and one step of that arm instead of timing. Commands for ``benchmarks/results/simwnw_step.md`` are in that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import replace

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.data.datasets import load_image_dataset
from simwnw_hf.data.views import TwoViewTransform
from simwnw_hf.pruning.settings import SimWnWSettings
from simwnw_hf.simwnw.block_matching import removal_masks
from simwnw_hf.train.allocator import tune_malloc

from report_rows import append_rows  # noqa: E402  (benchmarks/ is the script directory)


def simsiam_loss(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient (SimSiam without projector/predictor)."""
    return -0.5 * (F.cosine_similarity(f1, f2.detach()).mean() + F.cosine_similarity(f2, f1.detach()).mean())


def make_batch(source: str, batch: int, size: int, mean, std, seed: int):
    data = load_image_dataset(source)
    transform = TwoViewTransform(size, mean=mean, std=std)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[:batch].tolist()
    b = default_collate([transform(data.get_image(i), gen) for i in idx])
    return b["views"][0], b["views"][1], b["geometry"][0], b["geometry"][1]


def make_batches(source: str, count: int, batch: int, size: int, mean, std) -> list:
    """``count`` different batches (seeds 0..count-1) of :func:`make_batch`, for ``--batches``."""
    if count < 1:
        raise SystemExit(f"--batches must be at least 1, got {count}")
    return [make_batch(source, batch, size, mean, std, seed=s) for s in range(count)]


def dense_step(model, x1, x2):
    model.zero_grad(set_to_none=True)
    simsiam_loss(model(x1), model(x2)).backward()


def parse_arm(spec: str) -> tuple[str, dict]:
    """``lean`` or ``lean:wax_decision=spatial:max_rings=0``: an executor and SimWnWSettings overrides."""
    name, *pairs = spec.split(":")
    fields = {f.name: f.type for f in dataclasses.fields(SimWnWSettings)}
    over = {}
    for item in pairs:
        key, _, value = item.partition("=")
        if key not in fields or not value:
            raise SystemExit(f"--executors: {item!r} in {spec!r} is not field=value of SimWnWSettings "
                             f"({', '.join(fields)})")
        over[key] = int(value) if value.lstrip("-").isdigit() else value
    return spec, dict(over, executor=name)


def pair_step(model, x1, x2, g1, g2, settings: SimWnWSettings, force: float | None = None, seed: int = 0):
    """One SimWnW step through the pair contract: ``plan_pair`` once, ``forward_pair(x1, x2, plan)``,
    loss, backward. Returns (step stats, seconds spent in ``plan_pair`` = block matching)."""
    model.zero_grad(set_to_none=True)
    model.configure_pair_pruning(settings)
    t0 = time.process_time()
    plan = model.plan_pair(x1, x2, g1, g2)
    t_match = time.process_time() - t0
    if force is not None:
        match = plan.match
        gen = torch.Generator().manual_seed(seed)
        similar = torch.rand(match.similar.shape, generator=gen) < force
        mask1, mask2 = removal_masks(match.src_yx, match.match_yx, similar, match.block_size,
                                     tuple(x1.shape[-2:]), tuple(x2.shape[-2:]))
        plan = replace(plan, match=replace(match, similar=similar, mask1=mask1, mask2=mask2))
    f1, f2, stats = model.forward_pair(x1, x2, plan)
    simsiam_loss(f1, f2).backward()
    return dict(dense_flops=stats.dense_flops, kept_flops=stats.pruned_flops,
                overhead_flops=plan.overhead_flops + stats.overhead_flops,
                removal=stats.removed_fraction_sum / stats.pairs), t_match


def run_case(model, batches, arms, repeats, force, compiled=None):
    """``arms``: [(label, settings overrides)]; every repeat times dense, then each arm, back to back, on
    ``batches[repeat % len(batches)]``.

    ``compiled``: ``torch.compile(model)``, timed as arm ``dense-compiled`` right after dense (the same
    work with fused kernels: what a dense step gains from compiling alone)."""
    base = model.pair_settings
    arms = [(label, replace(base, **over)) for label, over in arms]
    x1, x2, _, _ = batches[0]
    with FlopCounterMode(display=False) as counter:  # the same shapes, so the same FLOPs, for every batch
        dense_step(model, x1, x2)
    dense_flops = float(counter.get_total_flops())
    for _, settings in arms:
        for x1, x2, g1, g2 in batches:  # warm-up (any executor calibration, compiled kernels' shapes)
            pair_step(model, x1, x2, g1, g2, settings, force)
    labels = [label for label, _ in arms]
    dense_arms = {"dense": model} if compiled is None else {"dense": model, "dense-compiled": compiled}
    for m in dense_arms.values():
        dense_step(m, *batches[0][:2])  # warm-up (the compiled model compiles here)
    times = {k: [] for k in [*dense_arms, *labels]}
    cpu = {k: [] for k in [*dense_arms, *labels]}
    stats, match_t = {k: [] for k in labels}, {k: [] for k in labels}
    for r in range(repeats):
        x1, x2, g1, g2 = batches[r % len(batches)]
        for name, m in dense_arms.items():
            t, c = time.perf_counter(), time.process_time()
            dense_step(m, x1, x2)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        for label, settings in arms:
            t, c = time.perf_counter(), time.process_time()
            st, tm = pair_step(model, x1, x2, g1, g2, settings, force)
            times[label].append(time.perf_counter() - t)
            cpu[label].append(time.process_time() - c)
            stats[label].append(st)
            match_t[label].append(tm)
    model.configure_pair_pruning(base)
    flops_ratio = {k: statistics.fmean((dense_flops - (st["dense_flops"] - st["kept_flops"]) + st["overhead_flops"])
                                       / dense_flops for st in sts) for k, sts in stats.items()}
    d = statistics.median(cpu["dense"])
    return dict(times=times, cpu=cpu, flops_ratio=flops_ratio,
                removal=statistics.fmean(st["removal"] for st in stats[labels[0]]),
                match_pct={k: 100 * statistics.median(v) / d for k, v in match_t.items()})


def profile_steps(model, batch, overrides: dict, rows: int = 20):
    """Print torch.profiler's self-CPU table of one dense step and one step of the arm (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    x1, x2, g1, g2 = batch
    settings = replace(model.pair_settings, **overrides)
    steps = {"dense": lambda: dense_step(model, x1, x2), "arm": lambda: pair_step(model, x1, x2, g1, g2, settings)}
    for name, step in steps.items():
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"== {name}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def match_cell(name: str, res: dict) -> str:
    return f"{res['match_pct'][name]:.2f}%" if name in res["match_pct"] else ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="image dataset (parquet/folder) read by load_image_dataset")
    p.add_argument("--model", default="simwnw_resnet18_cifar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tune-malloc", action="store_true",
                   help="glibc malloc as the training scripts set it (simwnw_hf/train/allocator.py), for every arm")
    p.add_argument("--batches", type=int, default=1,
                   help="cycle this many different batches over the repeats (masks change as in training)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--executors", default="reference,lean,fused",
                   help="comma-separated arms: an executor (reference, lean, fused, auto), optionally with SimWnWSettings "
                        "overrides, e.g. lean:wax_decision=spatial or auto:max_rings=0")
    p.add_argument("--force-removal", default="", help="comma-separated input removal levels, e.g. 0.3,0.5,0.7 "
                                                       "(real block-matching masks are always measured)")
    p.add_argument("--psnr-threshold", type=float, default=20.0)
    p.add_argument("--max-rings", type=int, default=None, help="waxing rings (default: SimWnWSettings' 2; 0 = no waxing)")
    p.add_argument("--profile", default=None, metavar="ARM",
                   help="instead of timing: torch.profiler self-CPU tables of one dense step and one step of ARM")
    p.add_argument("--compiled-dense", action="store_true",
                   help="also time torch.compile(model)'s dense step (arm dense-compiled; compiles for a minute first)")
    p.add_argument("--out", default=None, help="append a markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tune_malloc:
        applied, why = tune_malloc()
        if not applied:
            raise SystemExit(f"--tune-malloc: {why}")
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=0).train()
    rings = {} if args.max_rings is None else {"max_rings": args.max_rings}
    model.configure_pair_pruning(SimWnWSettings(psnr_threshold=args.psnr_threshold, **rings))
    cfg = model.pretrained_cfg
    batches = make_batches(args.source, args.batches, args.batch, args.size, cfg["mean"], cfg["std"])
    arms = [parse_arm(e) for e in args.executors.split(",") if e]
    if args.profile:
        return profile_steps(model, batches[0], parse_arm(args.profile)[1])
    levels = [None] + [float(v) for v in args.force_removal.split(",") if v]
    compiled = torch.compile(model) if args.compiled_dense else None
    lines = []
    for force in levels:
        res = run_case(model, batches, arms, args.repeats, force, compiled)
        for name in res["times"]:
            ts = res["times"][name]
            ratios = [t / d for t, d in zip(ts, res["times"]["dense"])]  # per repeat: interleaved neighbours
            cpu_ratios = [t / d for t, d in zip(res["cpu"][name], res["cpu"]["dense"])]
            lines.append(f"| {args.model} {args.size}px b{args.batch} | {args.threads} | "
                         f"{f'real ({args.psnr_threshold:g} dB)' if force is None else f'forced {force:.0%}'}"
                         f"{'' if args.max_rings is None else f', {args.max_rings} rings'}"
                         f"{'' if args.batches == 1 else f', {args.batches} batches'}"
                         f"{', tuned malloc' if args.tune_malloc else ''} | {res['removal']:.3f} | {name} | "
                         f"{statistics.median(ts):.2f} s ({min(ts):.2f}-{max(ts):.2f}) | "
                         f"**{statistics.median(ratios):.3f}** ({min(ratios):.2f}-{max(ratios):.2f}) | "
                         f"{statistics.median(cpu_ratios):.3f} ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}) | "
                         f"{res['flops_ratio'].get(name, 1.0):.3f} | {match_cell(name, res)} |")
            print(lines[-1], flush=True)
    if args.out:
        append_rows(args.out, lines)
    return lines


if __name__ == "__main__":
    main()
