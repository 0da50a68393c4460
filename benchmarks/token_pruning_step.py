"""Training-step wall time of each token-pruning mode vs the dense step, interleaved in one run.

A step is what an SSL framework runs for its encoder: both views forward through the ViT (pooled
pre-logits features), a loss on the two features, backward. The dense step is the trainer's own
(``encode_pair(encoder, x1, x2, plan=None)``: two separate calls); pruned steps make the plan
(``plan_pair``: for SimWnW the PSNR patch matching on the CPU) and run ``forward_pair`` with it.
Modes run interleaved (A, B, C, D, A, B, ...; order rotated every round) so drifting machine load hits
them alike; we report median times as ratios to the dense step next to the FLOPs ratio
``(pruned_flops + overhead_flops) / dense_flops`` of the step's :class:`~simwnw_hf.pruning.PairStats`
(the plan's matching included).

Views are real: images of ``--dataset`` (anything :func:`simwnw_hf.data.datasets.load_image_dataset`
reads; the tables were made with the ImageNet sample ``imagenet-sample/dev.parquet``) through
``TwoViewTransform(image_size)`` (SimCLR-style crops, flips and colour jitter, geometry recorded),
normalised with the model's mean/std.

    python benchmarks/token_pruning_step.py --dataset ../shared/data/imagenet-sample/dev.parquet \
        --model simwnw_vit_tiny_patch16_224 --batch-size 16 --rounds 6 --out benchmarks/results/token_pruning_step.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import timm
import torch
from torch.utils.data import default_collate

import simwnw_hf  # noqa: F401  (registers simwnw_vit_*)
from simwnw_hf.data.datasets import load_image_dataset
from simwnw_hf.data.views import TwoViewTransform
from simwnw_hf.pruning import TokenPruningSettings
from simwnw_hf.pruning.settings import parse_token_groups
from simwnw_hf.ssl.pair import encode_pair, plan_pair, plan_stats
from simwnw_hf.train.allocator import tune_malloc


def load_batch(model, dataset: str, batch_size: int, image_size: int, seed: int):
    images = load_image_dataset(dataset)
    if len(images) < batch_size:
        raise SystemExit(f"error: {dataset} has {len(images)} images, fewer than --batch-size {batch_size}")
    cfg = model.pretrained_cfg
    transform = TwoViewTransform(image_size=image_size, mean=cfg["mean"], std=cfg["std"])
    gen = torch.Generator().manual_seed(seed)
    batch = default_collate([transform(images.get_image(i), gen) for i in range(batch_size)])
    return batch["views"][0], batch["views"][1], batch["geometry"][0], batch["geometry"][1]


def make_modes(args):
    """name -> TokenPruningSettings (None: the trainer's dense step).

    Besides ``simwnw`` (``--token-groups``, ``--group-call-tokens``): ``simwnw_<N>group(s)`` for each
    ``--group-arms`` N (equal chunks; 1 = one tensor per view, nothing removed when a sample has nothing
    similar; 4 = the default before ``token_groups="auto"``) and ``simwnw_auto_c<T>`` for each
    ``--call-token-arms`` T (auto chunks priced at T tokens per call: what the default was chosen from);
    ``simwnw_chunk_calls`` runs ``simwnw``'s chunks one block call each instead of packed
    (``model.pack_token_groups = False``, :mod:`simwnw_hf.models.vit_packed`).
    """
    layers = tuple(args.prune_layers)
    simwnw = TokenPruningSettings("simwnw", psnr_threshold=args.psnr_threshold,
                                  token_groups=parse_token_groups(args.token_groups),
                                  group_call_tokens=args.group_call_tokens)
    modes = {"dense": None, "simwnw": simwnw}
    modes["simwnw_chunk_calls"] = ("chunks", simwnw)   # the same chunks, one block call each (not packed)
    for n in args.group_arms:
        modes[f"simwnw_{n}group{'' if n == 1 else 's'}"] = TokenPruningSettings(
            "simwnw", psnr_threshold=args.psnr_threshold, token_groups=n)
    for tokens in args.call_token_arms:
        modes[f"simwnw_auto_c{tokens:g}"] = TokenPruningSettings(
            "simwnw", psnr_threshold=args.psnr_threshold, group_call_tokens=tokens)
    return {
        **modes,
        "simprune": TokenPruningSettings("simprune", prune_layers=layers, keep_rate=args.keep_rate),
        "evit": TokenPruningSettings("evit", prune_layers=layers, keep_rate=args.keep_rate),
        "simwnw_matching_only": ("match", simwnw),   # the plan (PSNR patch matching) of a simwnw step, alone
    }


def step(model, settings, x1, x2, g1, g2):
    """One encoder training step; returns ((wall seconds, process CPU seconds), stats)."""
    model.zero_grad(set_to_none=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    if isinstance(settings, tuple) and settings[0] == "match":
        model.configure_pair_pruning(settings[1])
        plan = plan_pair(model, x1, x2, g1, g2)
        return (time.perf_counter() - start, time.process_time() - cpu_start), plan_stats(plan)
    model.pack_token_groups = not (isinstance(settings, tuple) and settings[0] == "chunks")
    if isinstance(settings, tuple):
        settings = settings[1]
    if settings is None:
        plan = None
    else:
        model.configure_pair_pruning(settings)
        plan = plan_pair(model, x1, x2, g1, g2)
    f1, f2, stats = encode_pair(model, x1, x2, plan)
    stats = plan_stats(plan) + stats
    loss = -torch.nn.functional.cosine_similarity(f1, f2, dim=-1).mean()
    loss.backward()
    return (time.perf_counter() - start, time.process_time() - cpu_start), stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True,
                        help="images to cut the views from: parquet file/folder, image folder, Hub id or 'sample'")
    parser.add_argument("--model", default="simwnw_vit_tiny_patch16_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--psnr-threshold", type=float, default=20.0)
    parser.add_argument("--token-groups", default="auto",
                        help="SimWnW token removal: 'auto' (chunks of least estimated cost) or a number of equal chunks")
    parser.add_argument("--group-call-tokens", type=float, default=24.0,
                        help="SimWnW token removal with --token-groups auto: the cost of one more chunk, in tokens")
    parser.add_argument("--group-arms", type=int, nargs="*", default=[1, 4],
                        help="also time SimWnW with this many equal chunks per view (one arm each)")
    parser.add_argument("--call-token-arms", type=float, nargs="*", default=[],
                        help="also time SimWnW auto chunks priced at these call costs (one arm each)")
    parser.add_argument("--keep-rate", type=float, default=0.8)
    parser.add_argument("--prune-layers", type=int, nargs="+", default=[4, 7, 10])
    parser.add_argument("--progress", type=float, default=0.5, help="SimPrune schedule position")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune-malloc", action="store_true",
                        help="glibc malloc as the training scripts set it (simwnw_hf/train/allocator.py), for every mode")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    try:
        modes = make_modes(args)   # settings are validated here, before any model or data is loaded
    except ValueError as err:
        parser.error(str(err))

    torch.set_num_threads(args.threads)
    if args.tune_malloc:
        applied, why = tune_malloc()
        if not applied:
            raise SystemExit(f"--tune-malloc: {why}")
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, num_classes=0).train()
    model.set_progress(args.progress)
    x1, x2, g1, g2 = load_batch(model, args.dataset, args.batch_size, args.image_size, args.seed)
    names = list(modes)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    stats = {}
    for r in range(args.warmup + args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            (seconds, cpu), st = step(model, modes[name], x1, x2, g1, g2)
            if r >= args.warmup:
                times[name].append(seconds)
                cpu_times[name].append(cpu)
            stats[name] = st
        print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names if times[n]), flush=True)

    dense_time = statistics.median(times["dense"])
    dense_cpu = statistics.median(cpu_times["dense"])
    ref = stats["simprune"]  # every pruned mode reports the same dense_flops
    lines = [
        f"# Token-pruning training step: {args.model}, batch {args.batch_size} pairs, {args.image_size}px",
        "",
        f"Command: `python benchmarks/token_pruning_step.py --dataset {args.dataset} --model {args.model} "
        f"--batch-size {args.batch_size} "
        f"--image-size {args.image_size} --rounds {args.rounds} --threads {args.threads} "
        f"--psnr-threshold {args.psnr_threshold} --token-groups {args.token_groups} "
        f"--group-call-tokens {args.group_call_tokens:g} --group-arms {' '.join(map(str, args.group_arms))} "
        f"{'--call-token-arms ' + ' '.join(f'{t:g}' for t in args.call_token_arms) + ' ' if args.call_token_arms else ''}"
        f"--keep-rate {args.keep_rate} "
        f"--prune-layers {' '.join(map(str, args.prune_layers))} --progress {args.progress}"
        f"{' --tune-malloc' if args.tune_malloc else ''}`",
        "",
        f"CPU, {args.threads} threads (shared machine), torch {torch.__version__}, timm {timm.__version__}. "
        f"Median of {args.rounds} interleaved rounds after {args.warmup} warm-up; one step = forward of both views + "
        "cosine loss + backward. Dense = the trainer's dense step (two `encoder(x)` calls). CPU = process CPU "
        "time (with 1 thread, the compute the step did, less sensitive than wall time to the other jobs on the "
        "machine). "
        f"Dense step FLOPs (fwd+bwd, both views): {ref.dense_flops / 1e9:.1f} GFLOPs.",
        "",
        "| mode | median wall (s) | wall / dense | median CPU (s) | CPU / dense | FLOPs / dense (pruned + overhead) | "
        "kept-token ratio | overhead FLOPs / dense | similar-pixel ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        t, c = statistics.median(times[name]), statistics.median(cpu_times[name])
        st = stats[name]
        if name == "dense":
            lines.append(f"| dense | {t:.3f} | 1.000 | {c:.3f} | 1.000 | 1.000 | 1.000 | 0 | - |")
            continue
        if name == "simwnw_matching_only":
            lines.append(f"| (PSNR matching of a simwnw step, alone) | {t:.3f} | {t / dense_time:.3f} | {c:.3f} | "
                         f"{c / dense_cpu:.3f} | {st.overhead_flops / ref.dense_flops:.4f} | - | - | - |")
            continue
        mode = modes[name][1] if isinstance(modes[name], tuple) else modes[name]
        removal = f"{st.removal_ratio:.3f}" if "removal_ratio" in mode.ratios else "-"
        lines.append(f"| {name} | {t:.3f} | {t / dense_time:.3f} | {c:.3f} | {c / dense_cpu:.3f} | "
                     f"{st.flops_ratio:.3f} | {st.kept_token_ratio:.3f} | "
                     f"{st.overhead_flops / st.dense_flops:.4f} | {removal} |")
    lines.append("")
    lines.append("Wall times (s): " + "; ".join(f"{n}: " + ", ".join(f"{t:.2f}" for t in times[n]) for n in names))
    lines.append("")
    lines.append("CPU times (s): " + "; ".join(f"{n}: " + ", ".join(f"{t:.2f}" for t in cpu_times[n]) for n in names))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
