"""timm ResNets for SimWnW: ``simwnw_resnet18``, ``simwnw_resnet50``, ``simwnw_resnet18_cifar``.

A ``SimWnWResNet`` *is* a timm ``ResNet`` (same modules, same state_dict keys), so weights load both
ways and single-image inference is exactly timm's. The only architectural option added is the CIFAR
stem (3x3 stride-1 conv, no max-pool) used by SimCLR/SimSiam for 32px images.

SSL training adds the pair path (paper §4): ``forward_pair(x1, x2, g1, g2)`` block-matches the two
views (``simwnw.block_matching``), removes similar blocks from both, and runs the reference masked
execution with waxing-and-waning (walker ``models.resnet_pair``, mechanisms ``simwnw.masked_exec``,
``simwnw.lean_exec``, ``simwnw.masks``); its stats report the
FLOPs saved (``simwnw.flops``). The contract is in ``simwnw_hf/ssl/pair.py`` and docs/DESIGN.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from simwnw_hf.data.views import denormalize
from simwnw_hf.simwnw.block_matching import match_blocks
from simwnw_hf.simwnw.flops import trace_flops
from simwnw_hf.simwnw.masks import pair_expander

from .resnet_pair import select_executor, wax_for_executor

__all__ = ["SimWnWResNet", "PairPruningConfig"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class PairPruningConfig:
    """SimWnW settings of the pair path (paper defaults: 20 dB, search window 2x block, §4.1/§5).

    block_size: input block side (None: ``default_block_size`` of the view height, 5 @ 32px, 30 @ 224px).
    psnr_threshold: dB; blocks and feature-map rings at or above it are removed.
    search_window: side of the block search region in view 2 (None: 2 x block size).
    max_rings: most rings waxed per conv input (see ``simwnw.masks``).
    executor: pair-path executor (``models.resnet_pair.select_executor``): ``lean`` (default, same
        numbers as the reference with less bookkeeping), ``reference`` (the definition) or ``auto``.
    """

    block_size: Optional[int] = None
    psnr_threshold: float = 20.0
    search_window: Optional[int] = None
    max_rings: int = 2
    executor: str = "lean"

    def __post_init__(self):
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.search_window is not None and self.search_window < 1:
            raise ValueError(f"search_window must be positive, got {self.search_window}")
        if self.max_rings < 0:
            raise ValueError(f"max_rings must be >= 0, got {self.max_rings}")
        select_executor(self.executor)  # one clear line for an unknown name


class SimWnWResNet(ResNet):
    """timm ``ResNet`` with an optional CIFAR stem and the SimWnW pair path.

    Args:
        cifar_stem: replace the 7x7/2 conv + max-pool stem by a 3x3/1 conv and no pooling, so a 32px
            image keeps a 4x4 map at the last stage (SimCLR paper, App. B.9).
        **kwargs: everything timm's ``ResNet`` takes.
    """

    def __init__(self, *args, cifar_stem: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.cifar_stem = cifar_stem
        if cifar_stem:
            stem_out = self.conv1.out_channels if isinstance(self.conv1, nn.Conv2d) else 64
            self.conv1 = nn.Conv2d(self.in_chans, stem_out, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
            # timm assumes a stride-4 stem when it fills feature_info; here the stem does not downsample.
            for info in self.feature_info:
                info["reduction"] = max(1, info["reduction"] // (2 if info["module"] == "act1" else 4))
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        # Plain attributes, not buffers: the state_dict stays timm's.
        self.pair_pruning = PairPruningConfig()
        self.pair_pruning_enabled = False

    def configure_pair_pruning(self, block_size: Optional[int] = None, psnr_threshold: float = 20.0,
                               search_window: Optional[int] = None, max_rings: int = 2,
                               enabled: bool = True) -> "SimWnWResNet":
        """Set the SimWnW settings used by :meth:`forward_pair` and switch pair pruning on/off."""
        self.pair_pruning = PairPruningConfig(block_size, psnr_threshold, search_window, max_rings)
        self.pair_pruning_enabled = bool(enabled)
        return self

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised view -> [0, 1] pixels with this model's ``pretrained_cfg`` mean/std (PSNR, MAX_I = 1)."""
        cfg = getattr(self, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_DEFAULT_MEAN), cfg.get("std", IMAGENET_DEFAULT_STD)
        if len(mean) != x.shape[1]:
            raise ValueError(f"pretrained_cfg mean has {len(mean)} channels, the views have {x.shape[1]}")
        return denormalize(x, mean, std)

    def run_pair(self, x1: torch.Tensor, x2: torch.Tensor, g1, g2, **settings):
        """Block matching + masked forward of both views; returns ``(match, (h1, h2), trace)``.

        ``settings`` override :attr:`pair_pruning` for this call (same names as
        :meth:`configure_pair_pruning`, minus ``enabled``). ``h*``: final feature maps (B, C, h, w);
        ``trace``: the ``masked_exec`` records (convs, waxing overhead, per-stage masks).
        """
        if x1.dim() != 4 or x1.shape != x2.shape:
            raise ValueError(f"forward_pair needs two (B, C, H, W) views of equal shape, got "
                             f"{tuple(x1.shape)} and {tuple(x2.shape)}")
        cfg = PairPruningConfig(**dict(asdict(self.pair_pruning), **settings))
        with torch.no_grad():
            match = match_blocks(self._pixels(x1.detach()), self._pixels(x2.detach()), g1, g2,
                                 block_size=cfg.block_size, psnr_threshold=cfg.psnr_threshold,
                                 search_window=cfg.search_window)
        executor = select_executor(cfg.executor)
        expand = pair_expander(match.src_yx, match.match_yx, match.similar, match.block_size,
                               tuple(x1.shape[-2:]), cfg.psnr_threshold, cfg.max_rings,
                               wax_fn=wax_for_executor(cfg.executor))
        hs, _, trace = executor(self, [x1, x2], [match.mask1, match.mask2], expand)
        return match, tuple(hs), trace

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor, g1, g2
                     ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]:
        """SimWnW forward of an augmented pair (paper §4): pooled pre-logits of both views + stats.

        ``x1``/``x2``: (B, C, H, W) views normalised with ``pretrained_cfg`` mean/std; ``g1``/``g2``:
        their batched geometry. Returns ``f1``/``f2`` (B, num_features) and the stats of
        ``simwnw_hf.ssl.pair``: ``dense_flops``/``kept_flops`` (backbone convs of both views,
        forward + the backward autograd will run), ``overhead_flops`` (block matching + waxing),
        ``removal_ratio`` (input pixels removed, mean of both views) times ``pairs``, ``pairs``.
        """
        match, (h1, h2), trace = self.run_pair(x1, x2, g1, g2)
        f1 = self.forward_head(h1, pre_logits=True)
        f2 = self.forward_head(h2, pre_logits=True)
        fl = trace_flops(trace)
        pairs = float(x1.shape[0])
        removal = 0.5 * (match.mask1.float().mean() + match.mask2.float().mean())
        stats = {
            "dense_flops": fl["dense_flops"],
            "kept_flops": fl["kept_flops"],
            "overhead_flops": float(match.overhead_flops) + fl["wax_flops"],
            "removal_ratio": float(removal) * pairs,
            "pairs": pairs,
        }
        return f1, f2, stats


def _create(variant: str, pretrained: bool = False, **kwargs) -> SimWnWResNet:
    return build_model_with_cfg(SimWnWResNet, variant, pretrained, **kwargs)


def _cfg(**kwargs):
    # num_classes=0: the published weights are headless SSL encoders (timm's convention for
    # self-supervised weights, e.g. ``vit_small_patch16_224.dino``), so ``pretrained=True`` loads
    # strictly and a model built without ``num_classes`` is headless; pass ``num_classes=1000`` for
    # timm's ``resnet50`` head layout, or any N to fine-tune with a fresh classifier.
    return {
        "num_classes": 0, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1", "classifier": "fc", "license": "apache-2.0",
        **kwargs,
    }


# Weights are published by ``hub_upload.py`` under ``simwnw-hf/<model>.<tag>``; the tag names the SSL
# recipe. No weights ship with the package: ``pretrained=True`` resolves them through the Hub cache.
default_cfgs = generate_default_cfgs({
    "simwnw_resnet18.simsiam_simwnw_in1k": _cfg(hf_hub_id="simwnw-hf/simwnw_resnet18.simsiam_simwnw_in1k"),
    "simwnw_resnet50.simsiam_simwnw_in1k": _cfg(hf_hub_id="simwnw-hf/simwnw_resnet50.simsiam_simwnw_in1k"),
    "simwnw_resnet18_cifar.simsiam_simwnw_cifar10": _cfg(
        hf_hub_id="simwnw-hf/simwnw_resnet18_cifar.simsiam_simwnw_cifar10",
        input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
        mean=CIFAR10_MEAN, std=CIFAR10_STD,
    ),
})


@register_model
def simwnw_resnet18(pretrained: bool = False, **kwargs) -> SimWnWResNet:
    """ResNet-18 (timm ``resnet18`` layout) for SimWnW SSL."""
    return _create("simwnw_resnet18", pretrained, **dict(dict(block=BasicBlock, layers=(2, 2, 2, 2)), **kwargs))


@register_model
def simwnw_resnet50(pretrained: bool = False, **kwargs) -> SimWnWResNet:
    """ResNet-50 (timm ``resnet50`` layout) for SimWnW SSL; the paper's ImageNet encoder."""
    return _create("simwnw_resnet50", pretrained, **dict(dict(block=Bottleneck, layers=(3, 4, 6, 3)), **kwargs))


@register_model
def simwnw_resnet18_cifar(pretrained: bool = False, **kwargs) -> SimWnWResNet:
    """ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool); the paper's CIFAR encoder."""
    args = dict(block=BasicBlock, layers=(2, 2, 2, 2), cifar_stem=True)
    return _create("simwnw_resnet18_cifar", pretrained, **dict(args, **kwargs))
