"""timm ViTs for token-pruned SSL: ``simwnw_vit_tiny_patch16_224``, ``simwnw_vit_small_patch16_224`` (DeiT-S,
the encoder of SimWnW App. A.4 and SimPrune), ``simwnw_vit_base_patch16_224``.

A ``SimWnWVisionTransformer`` *is* timm's ``VisionTransformer``: same modules, same state_dict keys,
and the inherited single-image ``forward`` / ``forward_features`` / ``forward_intermediates`` run
untouched (fused attention on), so weights load both ways and inference is exactly timm's. What it adds
is the two-view path that SSL frameworks call through :mod:`simwnw_hf.ssl.pair`: :meth:`plan_pair`
decides once per step what to remove (SimWnW's patch matching; nothing for the in-network SimPrune and
EViT), and :meth:`forward_pair` runs both views through the blocks in lockstep with the pruner picked by
:meth:`configure_pair_pruning` (:mod:`simwnw_hf.tokens`), before the first block (SimWnW) or at chosen
blocks (SimPrune, EViT). Only that path ever prunes.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from simwnw_hf.data.geometry import Geometry
from simwnw_hf.pruning import PairPlan, PairStats, TokenPruningSettings, accepted_settings, model_name
from simwnw_hf.pruning.planners import TokenMatchPlanner
from simwnw_hf.tokens import PairTokenPruner, TokenGroup, build_pair_pruner, vit_flops

from .vit_packed import pack, packable, packed_block, unpack
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
        self.pair_settings: Optional[TokenPruningSettings] = None
        self.pair_pruner: PairTokenPruner = PairTokenPruner()
        self.pair_progress = 0.0
        # run a view's token chunks through the blocks packed (per-token layers once, attention per chunk;
        # simwnw_hf/models/vit_packed.py) instead of one call per chunk: the same computation (float sums in
        # another order), less time
        self.pack_token_groups = True

    def configure_pair_pruning(self, settings: Optional[TokenPruningSettings] = None, *, enabled: bool = True,
                               **legacy) -> "SimWnWVisionTransformer":
        """Choose the pruning of :meth:`plan_pair` / :meth:`forward_pair` from ``settings``
        (:class:`~simwnw_hf.pruning.TokenPruningSettings`; see there for the methods and their fields).

        :attr:`pair_settings` keeps them resolved for this model's patch size (SimWnW's search window).
        The keyword form (``configure_pair_pruning(method="evit", ...)``) is deprecated and builds the
        settings from the keywords. SimWnW CNN settings give a one-line ValueError.
        """
        settings = accepted_settings(settings, legacy, TokenPruningSettings, model_name(self))
        vit_flops(self)  # the FLOPs report needs a standard block layout; fail now, not mid-training
        self.pair_settings = settings.resolve(self.patch_embed.patch_size[0])
        self.pair_pruner = build_pair_pruner(self.pair_settings, depth=len(self.blocks))
        self.pair_pruning_enabled = bool(enabled)
        return self

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (step / total steps); drives SimPrune's difficulty window."""
        progress = float(progress)
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.pair_progress = progress

    def _block(self, block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x)
        return block(x)

    @staticmethod
    def _check_views(x1: torch.Tensor, x2: torch.Tensor) -> None:
        for name, x in (("x1", x1), ("x2", x2)):
            if not torch.is_tensor(x) or x.dim() != 4:
                raise ValueError(f"{name} must be a (B, C, H, W) image tensor")
        if x1.shape[0] != x2.shape[0]:
            raise ValueError(f"the two views must hold the same images, got batches {x1.shape[0]} and {x2.shape[0]}")

    def plan_pair(self, x1: torch.Tensor, x2: torch.Tensor, g1: Optional[Geometry] = None,
                  g2: Optional[Geometry] = None) -> PairPlan:
        """What to remove from this pair: SimWnW's ``TokenMatch`` (patch matching, its FLOPs as the
        plan's overhead), or an in-network plan (``match=None``) for SimPrune and EViT."""
        self._check_views(x1, x2)
        planner = self.pair_planner()
        if planner is None:
            return PairPlan(method=self.pair_pruner.name, settings=self.pair_settings, match=None,
                            overhead_flops=0.0, pairs=int(x1.shape[0]))
        if g1 is None or g2 is None:
            raise ValueError(f"{self.pair_pruner.name} token pruning needs the crop/flip geometry of both views")
        return planner(x1, x2, g1, g2)

    def pair_planner(self) -> Optional[TokenMatchPlanner]:
        """What :meth:`plan_pair` computes from pixels, as a picklable value (the DataLoader can run it in
        its workers, ``--match-in loader``); None for in-network pruners, which plan nothing up front."""
        pruner = self.pair_pruner
        if not pruner.needs_pixels:
            return None
        patch = self.patch_embed.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f"{pruner.name} token pruning needs square patches, got {patch}")
        cfg = getattr(self, "pretrained_cfg", None) or {}
        if cfg.get("mean") is None or cfg.get("std") is None:
            raise ValueError("SimWnW token removal needs pretrained_cfg mean/std to recover [0, 1] pixels; "
                             "create the model with timm.create_model")
        return TokenMatchPlanner(self.pair_settings, patch[0], cfg["mean"], cfg["std"])

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor, plan: Optional[PairPlan] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor, PairStats]:
        """Pooled pre-logits features of both views and the stats of the pruning (contract: ``ssl/pair.py``).

        ``plan``: from :meth:`plan_pair` (possibly of another encoder with the same settings, e.g. the
        online encoder's for a momentum encoder). With ``plan=None`` or pruning disabled both views run
        dense (still in lockstep) and ``pruned_flops == dense_flops``.
        Stats (FLOPs for both views, forward + backward when gradients are on; :mod:`simwnw_hf.tokens.flops`):
        ``dense_flops`` (unpruned encoder), ``pruned_flops`` (encoder at the sequence lengths actually run),
        ``overhead_flops`` (in-network selection work: similarity or class-attention rows, fusion; the
        plan's matching is not included), ``kept_token_fraction_sum`` (tokens x blocks run / dense tokens
        x blocks, summed over pairs), ``pairs`` (= B), and for SimWnW ``removed_fraction_sum``.
        """
        self._check_views(x1, x2)
        pruning = plan is not None and self.pair_pruning_enabled
        pruner = self.pair_pruner if pruning else PairTokenPruner()
        if pruning and plan.method != pruner.name:
            raise ValueError(f"a {plan.method} plan cannot drive this encoder's {pruner.name} pruning")
        prefix, batch = self.num_prefix_tokens, x1.shape[0]
        info_sum: Dict[str, float] = {}

        def add(info: Dict[str, float]) -> None:
            for key, value in info.items():
                info_sum[key] = info_sum.get(key, 0.0) + float(value)

        t1 = self._pos_embed(self.patch_embed(x1))                                  # (B, P + N, D)
        t2 = self._pos_embed(self.patch_embed(x2))
        views = [[TokenGroup(None, t1)], [TokenGroup(None, t2)]]
        if pruner.needs_pixels:
            groups1, groups2, info = pruner.before_blocks(t1, t2, plan.match, prefix)
            views = [groups1, groups2]
            add(info)
        views = [[g._replace(tokens=self.norm_pre(self.patch_drop(g.tokens))) for g in v] for v in views]

        lengths = [[[] for _ in v] for v in views]          # lengths[view][group][block]
        if self._pack_groups(views, pruner):
            packed = [pack([g.tokens for g in view]) for view in views]
            lengths = [[[n] * len(self.blocks) for _, n in p.sizes] for p in packed]   # no pruning inside
            for block in self.blocks:
                packed = [packed_block(block, p) for p in packed]
            views = [[g._replace(tokens=t) for g, t in zip(view, unpack(p))] for view, p in zip(views, packed)]
        else:
            for i, block in enumerate(self.blocks):
                if i in pruner.prune_layers:
                    if len(views[0]) != 1 or len(views[1]) != 1:
                        raise RuntimeError("in-network pruning needs each view as one tensor")
                    t1, t2, info = pruner.at_block(block, views[0][0].tokens, views[1][0].tokens, self.pair_progress,
                                                   prefix)
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
        stats = PairStats(
            pairs=float(batch), dense_flops=2 * flops.dense(batch, grad), pruned_flops=kept,
            overhead_flops=info_sum.get("overhead_flops", 0.0),
            removed_fraction_sum=info_sum.get("removal_ratio", 0.0),
            kept_token_fraction_sum=token_blocks / (2.0 * len(self.blocks) * (flops.num_patches + prefix)),
        )
        return f1, f2, stats

    def _pack_groups(self, views, pruner: PairTokenPruner) -> bool:
        """Whether the blocks run on packed chunks (:mod:`.vit_packed`): some view has several chunks, no
        pruning inside the blocks, :attr:`pack_token_groups` on, no gradient checkpointing, timm blocks."""
        return (self.pack_token_groups and not pruner.prune_layers and max(len(v) for v in views) > 1
                and not (self.grad_checkpointing and torch.is_grad_enabled())
                and all(packable(block) for block in self.blocks))

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
