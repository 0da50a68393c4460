"""timm ViTs for token-pruned SSL: ``simwnw_vit_tiny_patch16_224``, ``simwnw_vit_small_patch16_224`` (DeiT-S,
the encoder of SimWnW App. A.4 and SimPrune), ``simwnw_vit_base_patch16_224``.

A ``SimWnWVisionTransformer`` *is* timm's ``VisionTransformer``: same modules, same state_dict keys,
and the inherited single-image ``forward`` / ``forward_features`` / ``forward_intermediates`` run
untouched (fused attention on), so weights load both ways and inference is exactly timm's. What it adds
is the two-view path :meth:`forward_pair` that SSL frameworks call through
:func:`simwnw_hf.ssl.pair.encode_pair`: both views go through the blocks in lockstep, and the pruner
picked with :meth:`configure_pair_pruning` (:mod:`simwnw_hf.tokens`) shortens their sequences, before
the first block (SimWnW) or at chosen blocks (SimPrune, EViT). Only that path ever prunes.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from simwnw_hf.data.geometry import Geometry
from simwnw_hf.data.views import denormalize
from simwnw_hf.tokens import PairTokenPruner, TokenGroup, build_pair_pruner, vit_flops

from .weights import require_weight_source

__all__ = ["SimWnWVisionTransformer"]


class SimWnWVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` plus a token-pruning two-view path for SSL training.

    Pruning is off until :meth:`configure_pair_pruning` is called (``pair_pruning_enabled`` is False
    on a fresh model). Constructor arguments are exactly timm's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pair_pruning_enabled = False
        self.pair_pruner: PairTokenPruner = PairTokenPruner()
        self.pair_progress = 0.0

    def configure_pair_pruning(self, method: str = "simwnw", psnr_threshold: float = 20.0,
                               search_window: Optional[int] = None, prune_layers: Sequence[int] = (4, 7, 10),
                               keep_rate: float = 0.8, difficulty_span: float = 0.5,
                               search_method: str = "diamond", token_groups: int = 4,
                               enabled: bool = True) -> "SimWnWVisionTransformer":
        """Choose the pruning of :meth:`forward_pair` (see :func:`simwnw_hf.tokens.build_pair_pruner`).

        method: ``"simwnw"`` (PSNR-similar patch pairs dropped before ``blocks[0]``; uses
        ``psnr_threshold``, ``search_window``, ``search_method``, and ``token_groups`` equal-length
        chunks per view for the variable lengths), ``"simprune"`` or ``"evit"`` (at the
        input of ``blocks[l]`` for ``l`` in ``prune_layers``, 0-based, keeping ``keep_rate`` of the
        tokens each time; SimPrune's schedule uses ``difficulty_span``).
        """
        vit_flops(self)  # the FLOPs report needs a standard block layout; fail now, not mid-training
        self.pair_pruner = build_pair_pruner(method, depth=len(self.blocks), psnr_threshold=psnr_threshold,
                                             search_window=search_window, prune_layers=prune_layers,
                                             keep_rate=keep_rate, difficulty_span=difficulty_span,
                                             search_method=search_method, token_groups=token_groups)
        self.pair_pruning_enabled = bool(enabled)
        return self

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (step / total steps); drives SimPrune's difficulty window."""
        progress = float(progress)
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.pair_progress = progress

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        cfg = getattr(self, "pretrained_cfg", None) or {}
        if cfg.get("mean") is None or cfg.get("std") is None:
            raise ValueError("SimWnW token removal needs pretrained_cfg mean/std to recover [0, 1] pixels; "
                             "create the model with timm.create_model")
        return denormalize(x.detach(), cfg["mean"], cfg["std"])

    def _block(self, block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x)
        return block(x)

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor, g1: Optional[Geometry] = None,
                     g2: Optional[Geometry] = None) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]:
        """Pooled pre-logits features of both views and the stats of the pruning (contract: ``ssl/pair.py``).

        Stats (FLOPs for both views, forward + backward when gradients are on; :mod:`simwnw_hf.tokens.flops`):
        ``dense_flops`` (unpruned encoder), ``kept_flops`` (encoder at the sequence lengths actually run),
        ``overhead_flops`` (selection work: PSNR matching, similarity or class-attention rows, fusion),
        ``kept_token_ratio`` (tokens x blocks run / dense tokens x blocks, times ``pairs``), ``pairs``
        (= B), and for SimWnW ``removal_ratio`` (similar-pixel fraction of the matcher, times ``pairs``).
        With pruning disabled both views run dense (still in lockstep) and ``kept_flops == dense_flops``.
        """
        for name, x in (("x1", x1), ("x2", x2)):
            if not torch.is_tensor(x) or x.dim() != 4:
                raise ValueError(f"{name} must be a (B, C, H, W) image tensor")
        if x1.shape[0] != x2.shape[0]:
            raise ValueError(f"the two views must hold the same images, got batches {x1.shape[0]} and {x2.shape[0]}")
        pruner = self.pair_pruner if self.pair_pruning_enabled else PairTokenPruner()
        prefix, batch = self.num_prefix_tokens, x1.shape[0]
        stats: Dict[str, float] = {"overhead_flops": 0.0}

        def add(info: Dict[str, float]) -> None:
            for key, value in info.items():
                stats[key] = stats.get(key, 0.0) + float(value)

        t1 = self._pos_embed(self.patch_embed(x1))                                  # (B, P + N, D)
        t2 = self._pos_embed(self.patch_embed(x2))
        views = [[TokenGroup(None, t1)], [TokenGroup(None, t2)]]
        if pruner.needs_pixels:
            if g1 is None or g2 is None:
                raise ValueError(f"{pruner.name} token pruning needs the crop/flip geometry of both views")
            patch = self.patch_embed.patch_size
            if patch[0] != patch[1]:
                raise ValueError(f"{pruner.name} token pruning needs square patches, got {patch}")
            groups1, groups2, info = pruner.before_blocks(t1, t2, self._pixels(x1), self._pixels(x2), g1, g2,
                                                          patch[0], prefix)
            views = [groups1, groups2]
            add(info)
        views = [[g._replace(tokens=self.norm_pre(self.patch_drop(g.tokens))) for g in v] for v in views]

        lengths = [[[] for _ in v] for v in views]          # lengths[view][group][block]
        for i, block in enumerate(self.blocks):
            if i in pruner.prune_layers:
                if len(views[0]) != 1 or len(views[1]) != 1:
                    raise RuntimeError("in-network pruning needs each view as one tensor")
                t1, t2, info = pruner.at_block(block, views[0][0].tokens, views[1][0].tokens, self.pair_progress, prefix)
                views = [[views[0][0]._replace(tokens=t1)], [views[1][0]._replace(tokens=t2)]]
                add(info)
            for v, view in enumerate(views):
                for g, group in enumerate(view):
                    lengths[v][g].append(group.tokens.shape[1])
                    view[g] = group._replace(tokens=self._block(block, group.tokens))
        f1, f2 = (self._pool_groups(view) for view in views)

        flops = vit_flops(self)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        kept = 2 * flops.embed(batch, grad)
        token_blocks = 0
        for view, view_lengths in zip(views, lengths):
            for group, seqs in zip(view, view_lengths):
                size = group.tokens.shape[0]
                kept += flops.blocks(size, seqs, grad)
                token_blocks += size * sum(seqs)
        stats.update(
            dense_flops=2 * flops.dense(batch, grad),
            kept_flops=kept,
            kept_token_ratio=token_blocks / (2.0 * len(self.blocks) * (flops.num_patches + prefix)),
            pairs=float(batch),
        )
        return f1, f2, stats

    def _pool_groups(self, groups) -> torch.Tensor:
        """Pooled pre-logits features of token groups, back in batch order."""
        feats = [self.forward_head(self.norm(g.tokens), pre_logits=True) for g in groups]   # [(b, F)]
        if len(groups) == 1 and groups[0].index is None:
            return feats[0]
        index = torch.cat([g.index for g in groups])                                         # (B,) batch positions
        return torch.cat(feats)[torch.argsort(index)]


def _create(variant: str, pretrained: bool = False, **kwargs) -> SimWnWVisionTransformer:
    require_weight_source(variant, pretrained, kwargs)  # before building: no weights are published
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        SimWnWVisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,  # timm's: loads timm / DeiT / JAX ViT checkpoints too
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(**kwargs):
    return {
        # headless SSL weights: see the note in resnet.py's _cfg
        "num_classes": 0, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,  # DINO / DeiT normalisation
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        **kwargs,
    }


# No weights are published (see the note above resnet.py's default_cfgs): no tags, no Hub ids.
default_cfgs = generate_default_cfgs({
    "simwnw_vit_tiny_patch16_224": _cfg(),
    "simwnw_vit_small_patch16_224": _cfg(),
    "simwnw_vit_base_patch16_224": _cfg(),
})


@register_model
def simwnw_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> SimWnWVisionTransformer:
    """ViT-Ti/16 (timm ``vit_tiny_patch16_224`` layout, DeiT-Ti) for token-pruned SSL."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("simwnw_vit_tiny_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def simwnw_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> SimWnWVisionTransformer:
    """ViT-S/16 (timm ``vit_small_patch16_224`` layout = DeiT-S), the paper's ViT encoder (App. A.4)."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("simwnw_vit_small_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def simwnw_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> SimWnWVisionTransformer:
    """ViT-B/16 (timm ``vit_base_patch16_224`` layout) for token-pruned SSL."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("simwnw_vit_base_patch16_224", pretrained, **dict(args, **kwargs))
