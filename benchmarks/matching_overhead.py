"""Block-matching overhead of a SimWnW step: matcher time as a share of the dense encoder step, interleaved.

Every round runs, back to back and in a rotating order: the dense encoder step (both views forward,
SimSiam-style symmetric negative cosine, backward), ``plan_pair`` of the SimWnW model (what a training
step pays: pixels + block matching, + token scores on ViTs), the fast matcher alone
(``match_pixels`` + ``match_blocks``, once with each engine: ``numba``, the compiled per-pair search,
and ``torch``, the batched tensor search) and the reference matcher alone (``denormalize`` +
``matching_reference.match_blocks_reference``, the definition the fast path is held bit-identical to).
Each round gives the ratio of each matcher to the dense step of the same round (neighbours in time,
so drift on a shared machine cancels); we report the median and min-max over rounds, for wall time
(``perf_counter``) and for thread CPU time (``thread_time``, which other jobs on the cores disturb
less). The settings are the model's ``pair_settings`` resolved for the view size (ResNets: the
paper's block for the size, search window 2x block, step 1; ViTs: block = step = patch size).

    python benchmarks/matching_overhead.py --source <imagenet-sample/dev.parquet> --model simwnw_resnet50 \
        --size 224 --batch 8 --rounds 10 --out benchmarks/results/matching_overhead.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.data.views import denormalize
from simwnw_hf.pruning import SimWnWSettings, TokenPruningSettings
from simwnw_hf.simwnw.block_matching import match_blocks, match_pixels
from simwnw_hf.simwnw.matching_reference import match_blocks_reference
from simwnw_hf.ssl.pair import plan_pair

from report_rows import append_rows  # noqa: E402  (benchmarks/ is the script directory)
from simwnw_step import make_batch  # noqa: E402


def dense_step(model, x1, x2):
    model.zero_grad(set_to_none=True)
    f1, f2 = model(x1), model(x2)
    (-0.5 * (F.cosine_similarity(f1, f2.detach()).mean() + F.cosine_similarity(f2, f1.detach()).mean())).backward()


def matcher_kwargs(model, x1):
    """match_blocks arguments equal to what the model's plan_pair uses."""
    if hasattr(model, "patch_embed"):
        patch = model.patch_embed.patch_size[0]
        return dict(block_size=patch, search_step=patch, psnr_threshold=20.0)
    s = model.pair_settings.resolve(x1.shape[-2])
    return dict(block_size=s.block_size, psnr_threshold=s.psnr_threshold, search_window=s.search_window)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="image dataset (parquet/folder) read by load_image_dataset")
    p.add_argument("--model", default="simwnw_resnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append a markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=0).train()
    if hasattr(model, "patch_embed"):
        model.configure_pair_pruning(TokenPruningSettings("simwnw", psnr_threshold=20.0))
    else:
        model.configure_pair_pruning(SimWnWSettings(psnr_threshold=20.0))
    cfg = model.pretrained_cfg
    x1, x2, g1, g2 = make_batch(args.source, args.batch, args.size, cfg["mean"], cfg["std"], seed=0)
    mean, std = cfg["mean"], cfg["std"]
    kw = matcher_kwargs(model, x1)
    variants = {
        "dense step": lambda: dense_step(model, x1, x2),
        "plan_pair (fast)": lambda: plan_pair(model, x1, x2, g1, g2, True),
        "matcher (numba)": lambda: match_blocks(match_pixels(x1, mean, std), match_pixels(x2, mean, std), g1, g2,
                                                engine="numba", **kw),
        "matcher (torch)": lambda: match_blocks(match_pixels(x1, mean, std), match_pixels(x2, mean, std), g1, g2,
                                                engine="torch", **kw),
        "matcher (reference)": lambda: match_blocks_reference(denormalize(x1, mean, std), denormalize(x2, mean, std),
                                                              g1, g2, **kw),
    }
    ref = variants["matcher (reference)"]()
    fast = {k: variants[k]() for k in ("matcher (numba)", "matcher (torch)")}
    identical = {k: (torch.equal(f.match_yx, ref.match_yx) and torch.equal(f.psnr, ref.psnr)
                     and torch.equal(f.mask1, ref.mask1) and torch.equal(f.mask2, ref.mask2)
                     and f.psnr_evaluations == ref.psnr_evaluations) for k, f in fast.items()}
    for f in variants.values():
        f()   # warm-up
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t, c = time.perf_counter(), time.thread_time()
            variants[name]()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.thread_time() - c)
    lines = []
    tag = f"{args.model} {args.size}px b{args.batch}"
    for name in names:
        w = [100 * a / d for a, d in zip(wall[name], wall["dense step"])]
        c = [100 * a / d for a, d in zip(cpu[name], cpu["dense step"])]
        lines.append(f"| {tag} | {args.threads} | {name} | {1000 * statistics.median(wall[name]):.1f} ms | "
                     f"{1000 * statistics.median(cpu[name]):.1f} ms | "
                     + ("100 | 100 |" if name == "dense step" else
                        f"**{statistics.median(w):.2f}%** ({min(w):.2f}-{max(w):.2f}) | "
                        f"**{statistics.median(c):.2f}%** ({min(c):.2f}-{max(c):.2f}) |"))
    for k, same in identical.items():
        extra = f", {fast[k].exact_rechecks} exact rechecks" if fast[k].exact_rechecks else ""
        lines.append(f"| {tag} | {args.threads} | {k.split()[1][1:-1]} == reference (matches, PSNRs, masks, "
                     f"evaluations) | {'yes' if same else '**NO**'} | {fast[k].psnr_evaluations} PSNRs{extra} | | |")
    for line in lines:
        print(line, flush=True)
    if args.out:
        append_rows(args.out, lines, f"{args.rounds} rounds")
    return all(identical.values())


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
