"""Draw SimWnW's block matching on one image's two augmented views (paper Fig. 1b / Fig. 4).

``python -m simwnw_hf.visualize --dataset PATH_OR_HUB_ID --index N --out pair.png`` builds the two
views with the training transform (:class:`simwnw_hf.data.views.TwoViewTransform`), matches blocks
(:func:`simwnw_hf.simwnw.block_matching.match_blocks`) and draws both views side by side: every similar
pair carries the same letter and colour in both views, removed pixels are shaded white. When the
waxing-and-waning code is available it adds, per ResNet stage, the fraction of channels removed at
each feature-map position after waning and waxing (§4.2), for both views.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from simwnw_hf.simwnw.block_matching import BlockMatch, default_block_size, match_blocks

LABELS = string.ascii_uppercase + string.ascii_lowercase


def block_label(i: int) -> str:
    """A, B, ..., Z, a, ..., z, then AA, AB, ... for pair number ``i``."""
    if i < len(LABELS):
        return LABELS[i]
    return block_label(i // len(LABELS) - 1) + LABELS[i % len(LABELS)]


def _shade(ax, mask: torch.Tensor, alpha: float = 0.6):
    """White veil over removed pixels (the paper draws removed regions as white boxes)."""
    import numpy as np

    rgba = np.zeros(mask.shape + (4,), dtype=np.float32)
    rgba[..., :3] = 1.0
    rgba[..., 3] = mask.numpy().astype(np.float32) * alpha
    ax.imshow(rgba, interpolation="nearest")


def _to_image(x: torch.Tensor):
    return x.clamp(0, 1).permute(1, 2, 0).cpu().numpy()


# strong colours only (tab20's pale half and tab10's grey are unreadable on light pixels)
PAIR_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                "#bcbd22", "#000080", "#800000", "#006400")


def _label_spots(y: float, x: float, block: int):
    """Where a block's label may go, best first: its centre, its four inner corners, its edge middles."""
    near, far = block * 0.22, block * 0.78
    centre = (y - 0.5 + block / 2, x - 0.5 + block / 2)
    corners = [(y - 0.5 + dy, x - 0.5 + dx) for dy in (near, far) for dx in (near, far)]
    edges = [(y - 0.5 + dy, x - 0.5 + dx) for dy, dx in ((near, block / 2), (far, block / 2),
                                                          (block / 2, near), (block / 2, far))]
    return [centre, *corners, *edges]


def place_labels(blocks, block: int, height: float, width_per_char: float, labels):
    """One (y, x) label position per block ``(y, x)`` so that no two label boxes (``height`` x
    ``width_per_char * len(label)``, in image pixels) overlap where the blocks leave room; greedy over
    :func:`_label_spots`, else the spot farthest from the labels already placed."""
    placed = []

    def clearance(p, label):
        if not placed:
            return float("inf")
        return min(max(abs(p[0] - q[0]) - height, abs(p[1] - q[1]) - width_per_char * (len(label) + len(lq)) / 2)
                   for q, lq in placed)

    for (y, x), label in zip(blocks, labels):
        spots = _label_spots(y, x, block)
        free = [p for p in spots if clearance(p, label) >= 0]
        placed.append((free[0] if free else max(spots, key=lambda p: clearance(p, label)), label))
    return [p for p, _ in placed]


def draw_pair(x1: torch.Tensor, x2: torch.Tensor, match: BlockMatch, index: int = 0,
              stages: Optional[List[dict]] = None, title: str = ""):
    """Figure with both views (C, H, W in [0, 1]) of pair ``index`` of ``match``, plus stage masks.

    The views are drawn side by side at a fixed on-screen size whatever their pixel size (a 32px view is
    scaled up with nearest-neighbour), so block letters keep one legible size and do not overlap.
    """
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    block = match.block_size
    similar = match.similar[index].cpu()
    pairs = similar.nonzero().squeeze(1).tolist()
    n_stage = len(stages) if stages else 0
    view_inches = 5.0
    width = max(2 * view_inches + 0.6, 1.25 * n_stage)
    fig = plt.figure(figsize=(width, view_inches + 1.3 + (2.9 if n_stage else 0.0)), layout="constrained")
    top, bottom = (fig.subfigures(2, 1, height_ratios=[view_inches + 1.3, 2.9]) if n_stage else (fig, None))
    axes = top.subplots(1, 2)
    side = x1.shape[-1]
    # letters ~ a third of a block on screen, within 9-14 pt; never closer than one letter apart
    block_points = view_inches * 72.0 * block / side
    fontsize = max(9.0, min(14.0, block_points / 3))
    points_per_pixel = view_inches * 72.0 / side
    letter_height, letter_width = 1.05 * fontsize / points_per_pixel, 0.85 * fontsize / points_per_pixel
    outline = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for view, (ax, x, mask) in enumerate(zip(axes, (x1, x2), (match.mask1[index], match.mask2[index]))):
        ax.imshow(_to_image(x), interpolation="nearest")
        _shade(ax, mask.cpu())
        corners = [tuple((match.src_yx[j] if view == 0 else match.match_yx[index, j]).tolist()) for j in pairs]
        names = [block_label(k) for k in range(len(pairs))]
        spots = place_labels(corners, block, letter_height, letter_width, names)
        for k, ((y, xx), (ly, lx)) in enumerate(zip(corners, spots)):
            colour = PAIR_COLOURS[k % len(PAIR_COLOURS)]
            ax.add_patch(Rectangle((xx - 0.5, y - 0.5), block, block, fill=False, edgecolor=colour, linewidth=1.5))
            ax.text(lx, ly, block_label(k), color=colour, fontsize=fontsize, ha="center", va="center",
                    fontweight="bold", path_effects=outline)
        removed = float(mask.float().mean())
        name = "view 1 (online, divided into blocks)" if view == 0 else "view 2 (target, searched)"
        ax.set_title(f"{name}\n{len(pairs)}/{similar.numel()} similar blocks, {removed:.0%} pixels removed",
                     fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if n_stage:
        grid = bottom.subplots(2, n_stage, squeeze=False)
        for s, stage in enumerate(stages):
            for row, key in ((0, "mask1"), (1, "mask2")):
                ax = grid[row, s]
                mask = stage[key].float()
                frac = mask if mask.dim() == 2 else mask.mean(0)             # (H, W): share of channels removed
                ax.imshow(frac.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"{stage['name']} v{row + 1}: {float(mask.mean()):.0%}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
        bottom.suptitle("removed share of channels per position after waning/waxing "
                        "(black = all channels removed); top row view 1, bottom row view 2", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def dataset_name(source: str) -> str:
    """A short name for a figure title: the bundled sample by name, a local path by its last parts."""
    from pathlib import Path

    from simwnw_hf.data.datasets import SAMPLE_DIR, SAMPLE_NAMES

    text = str(source)
    if text in SAMPLE_NAMES or text == "None" or Path(text).expanduser().resolve() == SAMPLE_DIR.resolve():
        return "bundled CIFAR-10 sample"
    path = Path(text).expanduser()
    if path.exists():
        return f"{path.parent.name}/{path.name}" if path.is_file() else path.name
    return text  # a Hub id


def _stage_masks(model_name: Optional[str], v1, v2, g1, g2, settings: dict) -> Optional[List[dict]]:
    """Per-stage masks from the waxing-and-waning code; None when no model was named."""
    if model_name is None:
        return None
    import timm

    from simwnw_hf.models.resnet_pair import stage_masks

    import simwnw_hf  # noqa: F401  (registers simwnw_* models)

    model = timm.create_model(model_name, num_classes=0)
    return stage_masks(model, v1, v2, g1, g2, **settings)


def _model_norm(model_name: Optional[str]):
    """mean/std the model expects (so the model recovers the same [0, 1] pixels we match on)."""
    if model_name is None:
        return None
    import timm

    import simwnw_hf  # noqa: F401

    cfg = timm.create_model(model_name, num_classes=0, pretrained=False).pretrained_cfg
    return cfg["mean"], cfg["std"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simwnw_hf.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="sample", help="Hub id, parquet file/folder, image folder, or 'sample'")
    p.add_argument("--split", default=None)
    p.add_argument("--image-column", default=None)
    p.add_argument("--index", type=int, default=0, help="image index in the split")
    p.add_argument("--out", default="pair.png", help="output image (png/pdf/svg)")
    p.add_argument("--image-size", type=int, default=None, help="view size (default 32 for images <= 64px, else 224)")
    p.add_argument("--block-size", type=int, default=None, help="default: 5 @32px ... 30 @224px (paper §5)")
    p.add_argument("--psnr-threshold", type=float, default=20.0)
    p.add_argument("--search-window", type=int, default=None, help="default: 2 x block size (App. B)")
    p.add_argument("--method", choices=("diamond", "exhaustive"), default="diamond")
    p.add_argument("--seed", type=int, default=0, help="seed of the two random views")
    p.add_argument("--model", default="auto",
                   help="timm model for per-stage masks ('auto': simwnw_resnet18_cifar <=64px else simwnw_resnet50; "
                        "'none' to skip); randomly initialised")
    return p


def build_figure(args: argparse.Namespace):
    """(figure, match) for parsed CLI arguments: views, block matching, stage masks, title."""
    from torch.utils.data import default_collate

    from simwnw_hf.data.datasets import load_image_dataset
    from simwnw_hf.data.views import TwoViewTransform, denormalize

    dataset = load_image_dataset(args.dataset, split=args.split, image_column=args.image_column)
    if not 0 <= args.index < len(dataset):
        raise SystemExit(f"--index {args.index} is out of range: the split has {len(dataset)} images")
    image = dataset.get_image(args.index)
    size = args.image_size or (32 if max(image.size) <= 64 else 224)
    model_name = args.model
    if model_name == "auto":
        model_name = "simwnw_resnet18_cifar" if size <= 64 else "simwnw_resnet50"
    elif model_name.lower() == "none":
        model_name = None
    norm = _model_norm(model_name)
    transform = TwoViewTransform(image_size=size) if norm is None else TwoViewTransform(size, mean=norm[0], std=norm[1])
    sample = transform(image, torch.Generator().manual_seed(args.seed))
    batch = default_collate([sample])
    x1, x2 = (denormalize(v, transform.mean, transform.std) for v in batch["views"])
    g1, g2 = batch["geometry"]
    block = args.block_size or default_block_size(size)
    match = match_blocks(x1, x2, g1, g2, block_size=block, psnr_threshold=args.psnr_threshold,
                         search_window=args.search_window, method=args.method)
    settings = dict(block_size=block, psnr_threshold=args.psnr_threshold, search_window=args.search_window)
    stages = _stage_masks(model_name, batch["views"][0], batch["views"][1], g1, g2, settings)
    title = (f"{dataset_name(dataset.source)} [{args.index}] @{size}px: block {block}, window {2 * block if args.search_window is None else args.search_window}, "
             f"PSNR >= {args.psnr_threshold:g} dB, {args.method} search; removal ratio {match.removal_ratio:.0%}")
    return draw_pair(x1[0], x2[0], match, 0, stages, title), match


def main(argv: Optional[Sequence[str]] = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    args = build_parser().parse_args(argv)
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)  # --out into a folder that does not exist yet, before any work
    fig, match = build_figure(args)
    fig.savefig(out, dpi=130)
    print(f"wrote {args.out}: {int(match.similar.sum())} similar pairs of {match.similar.numel()} blocks, "
          f"removal ratio {match.removal_ratio:.3f}, {match.psnr_evaluations} PSNR evaluations")
    return args.out


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """``main`` with bad input (missing dataset, unwritable --out, ...) reported in one line."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
