"""SimWnW block-matching benchmark: removal ratio and matching overhead with the paper's defaults.

Paper claims (App. B Table 9, App. C): about 30% of pixels removed on CIFAR-10 and 20% on ImageNet at
PSNR >= 20 dB, with a PSNR overhead under 1% of the training computation. This script measures, on
real SimSiam-style view pairs (``TwoViewTransform``):

* the removal ratio (mean over pairs of the removed-pixel share, both views averaged) with diamond
  search, and on a subset with exhaustive search over the same window, plus its sensitivity to the
  threshold;
* PSNR evaluations per block and the matching FLOPs as a share of the dense encoder step
  (forward + backward of both views, measured with ``torch.utils.flop_counter.FlopCounterMode``);
* matching wall time as a share of the dense encoder step wall time, timed interleaved
  (match, step, match, step, ...) on the same machine; the ratio of medians is reported.

Command used for ``benchmarks/results/removal_ratio.md``::

    PYTHONPATH=. python benchmarks/removal_ratio.py --out benchmarks/results/removal_ratio.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import List

import timm
import torch
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.data.datasets import load_image_dataset
from simwnw_hf.data.views import TwoViewTransform, denormalize
from simwnw_hf.simwnw import default_block_size, match_blocks, removal_masks

THRESHOLDS = (15.0, 20.0, 25.0, 30.0)


@dataclass
class Setting:
    name: str
    source: str
    images: int
    size: int
    model: str
    batch: int               # batch used for matching statistics (memory only, no effect on results)
    exhaustive_images: int   # subset also matched exhaustively
    time_batch: int          # batch used for the interleaved wall-time comparison
    flop_batch: int          # batch of the FlopCounterMode measurement (FLOPs are linear in batch)


@dataclass
class Result:
    setting: Setting
    block: int
    window: int
    pair_ratios: List[float] = field(default_factory=list)
    view1: List[float] = field(default_factory=list)
    view2: List[float] = field(default_factory=list)
    similar_blocks: List[float] = field(default_factory=list)
    evals_per_block: float = 0.0
    overhead_flops_per_pair: float = 0.0
    threshold_ratios: dict = field(default_factory=dict)
    exhaustive: dict = field(default_factory=dict)
    dense_flops_per_pair: float = 0.0
    time_match_s: List[float] = field(default_factory=list)
    time_step_s: List[float] = field(default_factory=list)


def pair_batches(setting: Setting, transform: TwoViewTransform, batch: int, limit: int, seed: int = 0):
    """Yields ``(x1, x2, g1, g2, v1, v2)``: [0, 1] pixels, geometry, normalised views."""
    ds = load_image_dataset(setting.source, max_samples=limit)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(ds), batch):
        items = [transform(ds.get_image(i), gen) for i in range(start, min(start + batch, len(ds)))]
        b = default_collate(items)
        v1, v2 = b["views"]
        g1, g2 = b["geometry"]
        yield denormalize(v1, transform.mean, transform.std), denormalize(v2, transform.mean, transform.std), g1, g2, v1, v2


def dense_step_flops(model: torch.nn.Module, size: int, batch: int) -> float:
    """FLOPs of one dense encoder step (forward + backward, both views), per image pair."""
    model.train()
    x = torch.randn(batch, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        for _ in range(2):  # two views, separate calls as in encode_pair
            model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def dense_step(model: torch.nn.Module, v1: torch.Tensor, v2: torch.Tensor):
    (model(v1).sum() + model(v2).sum()).backward()
    model.zero_grad(set_to_none=True)


def run_setting(setting: Setting, threshold: float, reps: int) -> Result:
    model = timm.create_model(setting.model, num_classes=0)
    cfg = model.pretrained_cfg
    transform = TwoViewTransform(setting.size, mean=cfg["mean"], std=cfg["std"])
    block = default_block_size(setting.size)
    res = Result(setting, block, 2 * block)
    evals, blocks, overhead = 0, 0, 0.0
    ratio_sums = {t: 0.0 for t in THRESHOLDS}
    t0 = time.time()
    for x1, x2, g1, g2, _, _ in pair_batches(setting, transform, setting.batch, setting.images):
        m = match_blocks(x1, x2, g1, g2, block_size=block, psnr_threshold=threshold)
        r1 = m.mask1.float().mean(dim=(1, 2))
        r2 = m.mask2.float().mean(dim=(1, 2))
        res.view1 += r1.tolist()
        res.view2 += r2.tolist()
        res.pair_ratios += (0.5 * (r1 + r2)).tolist()
        res.similar_blocks += m.similar.float().mean(dim=1).tolist()
        evals += m.psnr_evaluations
        blocks += m.psnr.numel()
        overhead += m.overhead_flops
        for t in THRESHOLDS:  # same matches, other thresholds: only the masks change
            similar = m.psnr >= t
            a, b = removal_masks(m.src_yx, m.match_yx, similar, block, x1.shape[-2:], x2.shape[-2:])
            ratio_sums[t] += 0.5 * (a.float().mean(dim=(1, 2)) + b.float().mean(dim=(1, 2))).sum().item()
    n = len(res.pair_ratios)
    res.evals_per_block = evals / blocks
    res.overhead_flops_per_pair = overhead / n
    res.threshold_ratios = {t: s / n for t, s in ratio_sums.items()}
    print(f"[{setting.name}] diamond over {n} pairs: removal {statistics.mean(res.pair_ratios):.3f} "
          f"({time.time() - t0:.0f}s)", flush=True)

    # exhaustive search over the same windows, on the first images
    t0 = time.time()
    stats = {"pairs": 0, "ratio_d": 0.0, "ratio_e": 0.0, "evals_d": 0, "evals_e": 0, "blocks": 0,
             "same_match": 0, "psnr_gap": 0.0, "finite": 0}
    for x1, x2, g1, g2, _, _ in pair_batches(setting, transform, min(setting.batch, 64),
                                             min(setting.images, setting.exhaustive_images)):
        d = match_blocks(x1, x2, g1, g2, block_size=block, psnr_threshold=threshold)
        e = match_blocks(x1, x2, g1, g2, block_size=block, psnr_threshold=threshold, method="exhaustive")
        stats["pairs"] += x1.shape[0]
        stats["ratio_d"] += d.removal_ratio * x1.shape[0]
        stats["ratio_e"] += e.removal_ratio * x1.shape[0]
        stats["evals_d"] += d.psnr_evaluations
        stats["evals_e"] += e.psnr_evaluations
        stats["blocks"] += d.psnr.numel()
        stats["same_match"] += int((d.match_yx == e.match_yx).all(-1).sum())
        finite = torch.isfinite(e.psnr) & torch.isfinite(d.psnr)
        stats["psnr_gap"] += float((e.psnr - d.psnr)[finite].sum())
        stats["finite"] += int(finite.sum())
    res.exhaustive = stats
    print(f"[{setting.name}] exhaustive on {stats['pairs']} pairs ({time.time() - t0:.0f}s)", flush=True)

    # FLOPs of the dense encoder step, and interleaved wall time (match vs dense step)
    res.dense_flops_per_pair = dense_step_flops(model, setting.size, setting.flop_batch)
    x1, x2, g1, g2, v1, v2 = next(pair_batches(setting, transform, setting.time_batch, setting.time_batch, seed=1))
    model.train()
    dense_step(model, v1, v2)                                  # warm-up
    match_blocks(x1, x2, g1, g2, block_size=block, psnr_threshold=threshold)
    for _ in range(reps):
        t = time.perf_counter()
        p1 = denormalize(v1, transform.mean, transform.std)     # the encoder must recover pixels too
        p2 = denormalize(v2, transform.mean, transform.std)
        match_blocks(p1, p2, g1, g2, block_size=block, psnr_threshold=threshold)
        res.time_match_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        dense_step(model, v1, v2)
        res.time_step_s.append(time.perf_counter() - t)
    print(f"[{setting.name}] timing: match {statistics.median(res.time_match_s) * 1e3:.1f} ms, "
          f"dense step {statistics.median(res.time_step_s) * 1e3:.0f} ms (batch {setting.time_batch})", flush=True)
    return res


def render(results: List[Result], args, command: str) -> str:
    lines = [
        "# SimWnW block matching: removal ratio and overhead",
        "",
        "Paper defaults: PSNR threshold 20 dB on [0, 1] pixels (MAX_I = 1, all channels), block 5 @32px and "
        "30 @224px, search window 2 x block (App. B), diamond search (Zhu & Ma 2000). Views from "
        "`TwoViewTransform` (SimSiam recipe: RandomResizedCrop scale (0.2, 1), flip, colour jitter "
        "0.4/0.4/0.4/0.1 p=0.8, grayscale p=0.2, blur p=0.5 at 224px only), seed 0.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible (shared with other "
        f"jobs), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Removal ratio (diamond search)",
        "",
        "| dataset | pairs | view size | block / window | removal ratio (mean ± std over pairs) | view 1 | view 2 "
        "| similar blocks | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    paper = {"CIFAR-10 train": "30%", "imagenet-sample": "20% (ImageNet)"}
    for r in results:
        s = r.setting
        lines.append(
            f"| {s.name} | {len(r.pair_ratios)} | {s.size} | {r.block} / {r.window} | "
            f"{statistics.mean(r.pair_ratios):.1%} ± {statistics.pstdev(r.pair_ratios):.1%} | "
            f"{statistics.mean(r.view1):.1%} | {statistics.mean(r.view2):.1%} | "
            f"{statistics.mean(r.similar_blocks):.1%} | {paper.get(s.name, '')} |")
    lines += ["", "Removal ratio vs threshold (same matches):", "",
              "| dataset | " + " | ".join(f"{t:g} dB" for t in THRESHOLDS) + " |",
              "|---|" + "---|" * len(THRESHOLDS)]
    for r in results:
        lines.append(f"| {r.setting.name} | " + " | ".join(f"{r.threshold_ratios[t]:.1%}" for t in THRESHOLDS) + " |")
    lines += ["", "## Diamond vs exhaustive search over the same window", "",
              "| dataset | pairs | PSNR evals / block (diamond) | (exhaustive) | same match | mean PSNR gap exh. - diamond (dB) "
              "| removal diamond | removal exhaustive |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        e = r.exhaustive
        lines.append(
            f"| {r.setting.name} | {e['pairs']} | {e['evals_d'] / e['blocks']:.1f} | {e['evals_e'] / e['blocks']:.1f} | "
            f"{e['same_match'] / e['blocks']:.1%} | {e['psnr_gap'] / max(1, e['finite']):.2f} | "
            f"{e['ratio_d'] / e['pairs']:.1%} | {e['ratio_e'] / e['pairs']:.1%} |")
    lines += ["", "## Matching overhead per training step", "",
              "FLOPs: PSNR evaluations actually computed x (3 x block^2 x 3 channels + 3) (App. C: sub, mul, add per "
              "element, plus mean/ratio/log), against the dense encoder step = forward + backward of both views "
              "(FlopCounterMode, `num_classes=0`; projector/predictor heads not included, which makes the share "
              "slightly pessimistic). Wall time: `denormalize` + `match_blocks` vs the dense encoder step on the same "
              "batch, interleaved, median of the runs, on this CPU.",
              "",
              "| dataset | encoder | dense step GFLOPs / pair | PSNR evals / block | matching MFLOPs / pair | FLOPs share "
              "| batch | match ms | dense step ms | wall-time share |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.setting
        tm, ts = statistics.median(r.time_match_s), statistics.median(r.time_step_s)
        lines.append(
            f"| {s.name} | {s.model} | {r.dense_flops_per_pair / 1e9:.2f} | {r.evals_per_block:.1f} | "
            f"{r.overhead_flops_per_pair / 1e6:.2f} | {r.overhead_flops_per_pair / r.dense_flops_per_pair:.3%} | "
            f"{s.time_batch} | {tm * 1e3:.1f} | {ts * 1e3:.0f} | {tm / ts:.2%} |")
    lines += ["", "## Reading these numbers", "",
              "* *removal ratio* = removed pixels / all pixels, averaged over view 1 and view 2 and over pairs "
              "(`BlockMatch.removal_ratio`); *similar blocks* = share of view-1 blocks whose best match has PSNR >= "
              "threshold, i.e. a block removal ratio of the online view. The paper's Table 9 says \"image block removal "
              "ratio\" without saying which of the two it is, so both are given.",
              "* View 2 loses fewer pixels than view 1: several view-1 blocks often match overlapping view-2 blocks, "
              "and blocks whose counterpart was cropped out all search the same border region (\"nearest region\").",
              "* The ratio depends strongly on the photometric augmentation (colour jitter and grayscale change "
              "PSNR on [0, 1] pixels between the views) and on the image content; the spread over pairs is large.",
              "* imagenet-sample is 500 ImageNet validation-style images (short side 256), not the ImageNet train set "
              "of the paper.",
              "* Wall time is CPU, one thread, a dense step that runs real convolutions; the share on a GPU is not "
              "measured here (matching is a gather + elementwise workload, bound by memory bandwidth).",
              ]
    lines += ["", "Wall-time runs (ms, match / step): " + "; ".join(
        f"{r.setting.name}: " + ", ".join(f"{a * 1e3:.0f}/{b * 1e3:.0f}" for a, b in zip(r.time_match_s, r.time_step_s))
        for r in results), ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar", default="/work/shared/data/cifar10/train.parquet")
    p.add_argument("--cifar-images", type=int, default=4096)
    p.add_argument("--imagenet", default="/work/shared/data/imagenet-sample/dev.parquet")
    p.add_argument("--imagenet-images", type=int, default=500)
    p.add_argument("--threshold", type=float, default=20.0)
    p.add_argument("--reps", type=int, default=5, help="interleaved timing repetitions")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for everything (1 keeps timings stable on a shared CPU)")
    p.add_argument("--out", default=None, help="markdown file for the results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = [
        Setting("CIFAR-10 train", args.cifar, args.cifar_images, 32, "simwnw_resnet18_cifar",
                batch=512, exhaustive_images=2048, time_batch=32, flop_batch=8),
        Setting("imagenet-sample", args.imagenet, args.imagenet_images, 224, "simwnw_resnet50",
                batch=50, exhaustive_images=16, time_batch=8, flop_batch=2),
    ]
    results = [run_setting(s, args.threshold, args.reps) for s in settings]
    command = "PYTHONPATH=. python benchmarks/removal_ratio.py" + (f" --out {args.out}" if args.out else "")
    defaults = {"cifar_images": 4096, "imagenet_images": 500, "threshold": 20.0, "reps": 5, "threads": 1}
    command += "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v)
    text = render(results, args, command)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
