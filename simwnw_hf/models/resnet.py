"""timm ResNets for SimWnW: ``simwnw_resnet18``, ``simwnw_resnet50``, ``simwnw_resnet18_cifar``.

A ``SimWnWResNet`` *is* a timm ``ResNet`` (same modules, same state_dict keys), so weights load both
ways and single-image inference is exactly timm's. The only architectural option added is the CIFAR
stem (3x3 stride-1 conv, no max-pool) used by SimCLR/SimSiam for 32px images.

SSL training adds the pair path (paper §4): ``plan_pair(x1, x2, g1, g2)`` block-matches the two views
(``simwnw.block_matching``) once per step, and ``forward_pair(x1, x2, plan)`` removes the similar blocks
from both and runs the masked execution with waxing-and-waning (walker and executors in
``models.resnet_pair``; mechanisms in ``simwnw.masked_exec``, ``simwnw.lean_exec``, ``simwnw.masks``);
its :class:`~simwnw_hf.pruning.PairStats` report the FLOPs saved (``simwnw.flops``). The contract is in
``simwnw_hf/ssl/pair.py`` and docs/DESIGN.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from simwnw_hf.pruning import PairPlan, PairStats, SimWnWSettings, accepted_settings, model_name
from simwnw_hf.pruning.planners import BlockMatchPlanner
from simwnw_hf.simwnw.flops import trace_flops
from simwnw_hf.simwnw.masks import pair_expander

from .resnet_pair import select_executor, wax_for_executor
from .weights import require_weight_source

__all__ = ["SimWnWResNet", "SimWnWSettings", "PairPruningConfig"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# The settings type of this family; the old name stays importable for one release.
PairPruningConfig = SimWnWSettings


class SimWnWResNet(ResNet):
    """timm ``ResNet`` with an optional CIFAR stem and the SimWnW pair path.

    Args:
        cifar_stem: replace the 7x7/2 conv + max-pool stem by a 3x3/1 conv and no pooling, so a 32px
            image keeps a 4x4 map at the last stage (SimCLR paper, App. B.9).
        **kwargs: everything timm's ``ResNet`` takes.
    """

    # training-time settings, not part of the scripted single-image model (TorchScript cannot compile them)
    __jit_ignored_attributes__ = ["pair_settings"]
    __jit_unused_properties__ = ["pair_pruning"]

    def __init__(self, *args, cifar_stem: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.cifar_stem = cifar_stem
        if cifar_stem:
            stem_out = self.conv1.out_channels if isinstance(self.conv1, nn.Conv2d) else 64
            # on the factory's device / dtype like every other layer (timm's device="meta" included)
            factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
            self.conv1 = nn.Conv2d(self.in_chans, stem_out, kernel_size=3, stride=1, padding=1, bias=False, **factory)
            self.maxpool = nn.Identity()
            # timm assumes a stride-4 stem when it fills feature_info; here the stem does not downsample.
            for info in self.feature_info:
                info["reduction"] = max(1, info["reduction"] // (2 if info["module"] == "act1" else 4))
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        # Plain attributes, not buffers: the state_dict stays timm's.
        self.pair_settings = SimWnWSettings()
        self.pair_pruning_enabled = False

    @property
    def pair_pruning(self) -> SimWnWSettings:
        """Old name of :attr:`pair_settings`."""
        return self.pair_settings

    def configure_pair_pruning(self, settings: Optional[SimWnWSettings] = None, *, enabled: bool = True,
                               **legacy) -> "SimWnWResNet":
        """Use ``settings`` (:class:`~simwnw_hf.pruning.SimWnWSettings`) in :meth:`plan_pair` and switch pair
        pruning on (or off with ``enabled=False``).

        The keyword form (``configure_pair_pruning(block_size=5, ...)``) is deprecated and builds the
        settings from the keywords. Token-pruning settings give a one-line ValueError.
        """
        settings = accepted_settings(settings, legacy, SimWnWSettings, model_name(self))
        self.pair_settings = settings
        self.pair_pruning_enabled = bool(enabled)
        return self

    def pair_planner(self) -> BlockMatchPlanner:
        """What :meth:`plan_pair` runs, as a picklable value: the DataLoader can make the plan in its
        worker processes (``--match-in loader``), and a plan made there is accepted only when its
        planner equals this one (same settings, same normalisation)."""
        cfg = getattr(self, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_DEFAULT_MEAN), cfg.get("std", IMAGENET_DEFAULT_STD)
        return BlockMatchPlanner(self.pair_settings, mean, std)

    def plan_pair(self, x1: torch.Tensor, x2: torch.Tensor, g1, g2, **overrides) -> PairPlan:
        """Block-match the two views (paper §4.1) with :attr:`pair_settings` (``overrides`` replace fields).

        Returns a :class:`~simwnw_hf.pruning.PairPlan` whose ``match`` is the ``BlockMatch`` and whose
        ``settings`` are the ones used, resolved for the view size; its ``overhead_flops`` is the matching.
        Matching reads [0, 1] pixels recovered with this model's ``pretrained_cfg`` mean/std (PSNR, MAX_I = 1).
        """
        if x1.dim() != 4 or x1.shape != x2.shape:
            raise ValueError(f"forward_pair needs two (B, C, H, W) views of equal shape, got "
                             f"{tuple(x1.shape)} and {tuple(x2.shape)}")
        if g1 is None or g2 is None:
            raise ValueError("SimWnW pair pruning needs the crop/flip geometry of both views; "
                             "build the dataset with TwoViewTransform (it records it)")
        planner = self.pair_planner()
        if overrides:
            planner = replace(planner, settings=replace(planner.settings, **overrides))
        return planner(x1, x2, g1, g2)

    def run_pair(self, x1: torch.Tensor, x2: torch.Tensor, g1=None, g2=None, plan: Optional[PairPlan] = None,
                 **settings):
        """Masked forward of both views from a plan; returns ``(match, (h1, h2), trace)``.

        Without ``plan`` one is made with :meth:`plan_pair` (``settings`` override :attr:`pair_settings`
        for this call, same names as :class:`~simwnw_hf.pruning.SimWnWSettings`). ``h*``: final feature
        maps (B, C, h, w); ``trace``: the ``masked_exec`` records (convs, waxing overhead, per-stage masks).
        """
        if plan is None:
            plan = self.plan_pair(x1, x2, g1, g2, **settings)
        match, cfg = plan.match, plan.settings
        executor = select_executor(cfg.executor)
        expand = pair_expander(match.src_yx, match.match_yx, match.similar, match.block_size,
                               tuple(x1.shape[-2:]), cfg.psnr_threshold, cfg.max_rings,
                               wax_fn=wax_for_executor(cfg.executor), decision=cfg.wax_decision, peak=cfg.wax_peak)
        hs, _, trace = executor(self, [x1, x2], [match.mask1, match.mask2], expand)
        return match, tuple(hs), trace

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor, plan: Optional[PairPlan] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor, PairStats]:
        """SimWnW forward of an augmented pair (paper §4): pooled pre-logits of both views + stats.

        ``x1``/``x2``: (B, C, H, W) views normalised with ``pretrained_cfg`` mean/std; ``plan``: from
        :meth:`plan_pair`. With ``plan=None`` or pruning disabled both views run dense (timm's
        ``forward_features``) and ``pruned_flops == dense_flops == 0``: nothing was metered.
        Stats (:class:`~simwnw_hf.pruning.PairStats`): ``dense_flops``/``pruned_flops`` (backbone convs
        of both views, forward + the backward autograd will run), ``overhead_flops`` (waxing only: the
        matching belongs to the plan), ``removed_fraction_sum`` (input pixels removed, mean of both views,
        summed over pairs), ``pairs``.
        """
        if plan is None or not self.pair_pruning_enabled:
            return (self.forward_head(self.forward_features(x1), pre_logits=True),
                    self.forward_head(self.forward_features(x2), pre_logits=True), PairStats())
        match, (h1, h2), trace = self.run_pair(x1, x2, plan=plan)
        f1 = self.forward_head(h1, pre_logits=True)
        f2 = self.forward_head(h2, pre_logits=True)
        fl = trace_flops(trace)
        pairs = float(x1.shape[0])
        removal = 0.5 * (match.mask1.float().mean() + match.mask2.float().mean())
        return f1, f2, PairStats(pairs=pairs, dense_flops=fl["dense_flops"], pruned_flops=fl["kept_flops"],
                                 overhead_flops=fl["wax_flops"], removed_fraction_sum=float(removal) * pairs)


def _create(variant: str, pretrained: bool = False, **kwargs) -> SimWnWResNet:
    require_weight_source(variant, pretrained, kwargs)  # before building: no weights are published
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


# No weights are published: the tables hold no tag and no Hub id, so ``timm.list_models(pretrained=True)``
# lists none and ``pretrained=True`` fails at once (``weights.require_weight_source``) saying how to get
# weights. Add a tagged entry with its ``hf_hub_id`` here only once weights are really on the Hub.
default_cfgs = generate_default_cfgs({
    "simwnw_resnet18": _cfg(),
    "simwnw_resnet50": _cfg(),
    "simwnw_resnet18_cifar": _cfg(
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
