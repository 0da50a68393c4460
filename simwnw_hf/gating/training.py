"""The gating methods as training methods: backbone preparation, pair encoding, step stats (issue 11).

The adapter between the settings (:mod:`simwnw_hf.pruning.gating`), the mechanisms of this package
and the SSL frameworks / trainer. Every pair encoder returns ``(f1, f2, extra_loss, PairStats)``: the
pooled pre-logits features of both views (as :func:`simwnw_hf.ssl.pair.encode_pair`), the method's
own loss terms, and its FLOPs in the trainer's convention (backbone forward + backward of the step,
dense vs as run, summed over the batch), so the trainer's accounting, ``summary.json`` and the Hub
record treat them exactly like SimWnW's. ``prune=False`` always runs the dense network (the trainer's
dense FLOPs meter relies on it).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Tuple

import torch
import torch.nn as nn

from simwnw_hf.models.family import is_vit
from simwnw_hf.pruning.gating import BackRazorSettings, CDGSettings, DualGateSettings, GatingSettings
from simwnw_hf.pruning.settings import model_name
from simwnw_hf.pruning.stats import PairStats

from .backrazor import BackRazorConv2d, convert_back_razor, reset_tally, step_tally
from .cdg import CDGConv2d, cdg_stats, convert_cdg, forward_branch, threshold_loss
from .dualgate_stats import dualgate_losses, dualgate_stats

__all__ = ["is_gating", "is_dualgate_model", "prepare_backbone", "checkpoint_encoder", "encode_dualgate_pair", "encode_cdg_pair",
           "attach_back_razor", "revert_cdg"]


def is_gating(settings) -> bool:
    return isinstance(settings, GatingSettings)


def is_dualgate_model(backbone: nn.Module) -> bool:
    from simwnw_hf.models.dualgate_resnet import DualGateResNet

    return isinstance(backbone, DualGateResNet)


def prepare_backbone(backbone: nn.Module, settings) -> nn.Module:
    """Check the model family and convert the backbone in place; one-line ValueError when it does not fit.

    A dual-gate model only trains with ``--gating dualgate``: any other run would train its gates
    (the default path) without the FLOPs budget, a gated network nobody asked for.
    """
    name = model_name(backbone)
    if is_dualgate_model(backbone) and not isinstance(settings, DualGateSettings):
        raise ValueError(f"'{name}' trains only with --gating dualgate (--framework vicreg); for a dense run use "
                         f"its dense twin ({name.replace('_dualgate', '')})")
    if isinstance(settings, DualGateSettings):
        if not is_dualgate_model(backbone):
            raise ValueError(f"{settings.flag} fits {settings.families}; '{name}' is not one "
                             f"(use --model simwnw_dualgate_resnet18_cifar or simwnw_dualgate_resnet18)")
        return backbone.add_dense_path()  # seed 002 co-trains the dense path with its own block BN
    if is_vit(backbone):
        raise ValueError(f"{settings.flag} fits {settings.families}; '{name}' is a ViT")
    if isinstance(settings, CDGSettings):
        try:
            convert_cdg(backbone, gate_groups=settings.gate_groups, structured_group=settings.group,
                        alpha=settings.alpha)
        except ValueError as exc:
            raise ValueError(f"{settings.flag} does not fit '{name}': {exc}") from exc
        return backbone
    if isinstance(settings, BackRazorSettings):
        try:
            convert_back_razor(backbone, settings.rho)
        except ValueError as exc:
            raise ValueError(f"{settings.flag} does not fit '{name}': {exc}") from exc
        return backbone
    raise TypeError(f"not a gating settings object: {type(settings).__name__}")


def revert_cdg(model: nn.Module) -> nn.Module:
    """Replace every ``CDGConv2d`` by the plain ``nn.Conv2d`` of the same weights, in place (the dense network)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, CDGConv2d):
            conv = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                             mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode)
            conv = conv.to(mod.weight.device, mod.weight.dtype)
            conv.load_state_dict({k: v for k, v in mod.state_dict().items() if k in ("weight", "bias")})
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], conv)
    return model


def checkpoint_encoder(backbone: nn.Module) -> nn.Module:
    """The module whose state_dict a checkpoint's ``model.safetensors`` holds: timm's keys for the model name.

    A CDG backbone is a timm model with converted convs: its dense network (thresholds and gate norms
    dropped) is saved, so kNN evaluation and Hub export load it as the plain model (the full state,
    thresholds included, is in the Accelerate training state for resume). Back Razor convs have
    ``nn.Conv2d``'s state_dict. A dual-gate backbone is saved whole, the dense path's ``*_dense`` BN
    included: both sub-networks are exported from it (:mod:`simwnw_hf.hub.subnetworks`), final kNN and
    resume build it with ``build_backbone`` (which adds the dense path), and ``python -m simwnw_hf.eval``
    adds the dense path when the weights hold it.
    """
    if any(isinstance(m, CDGConv2d) for m in backbone.modules()):
        return revert_cdg(copy.deepcopy(backbone))
    return backbone


def _pooled(backbone: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return backbone.forward_head(fmap, pre_logits=True)


def encode_dualgate_pair(backbone: nn.Module, x1: torch.Tensor, x2: torch.Tensor, settings: DualGateSettings,
                         epoch: float, prune: bool = True, progress: float = 0.0
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, PairStats]:
    """Seed 002's co-training pair: view 1 through the gated path, view 2 through the dense path.

    Extra loss: the FLOPs budget loss plus DGNet's bound loss annealed with ``exp(-alpha * epoch)``
    (or, with ``settings.anneal_final``, ``anneal_final ** progress``: :meth:`DualGateSettings.bound_p`).
    ``prune=False``: both views dense, no extra loss.
    """
    if not prune:
        f1 = _pooled(backbone, backbone.forward_dual(x1, gated=False)[0])
        f2 = _pooled(backbone, backbone.forward_dual(x2, gated=False)[0])
        return f1, f2, f1.new_zeros(()), PairStats()
    fmap1, masks = backbone.forward_dual(x1, gated=True)
    fmap2, _ = backbone.forward_dual(x2, gated=False)
    hw = x1.shape[-2:]
    budget, bound = dualgate_losses(backbone, masks, hw, target=settings.target, epoch=epoch,
                                    lam=settings.budget_weight, gamma=settings.bound_weight,
                                    p=settings.bound_p(epoch, progress))
    gated = dualgate_stats(backbone, masks, hw)
    n = float(x1.shape[0])
    # the gated view (its gate convs on the pooled map: forward, grad-input, grad-weight) + the dense view
    dense_view = gated.train_dense * n
    stats = gated.pair_stats(n) + PairStats(dense_flops=dense_view, pruned_flops=dense_view)
    return _pooled(backbone, fmap1), _pooled(backbone, fmap2), budget + bound, stats


@contextlib.contextmanager
def cdg_disabled(backbone: nn.Module) -> Iterator[nn.Module]:
    """Every ``CDGConv2d`` runs as its plain conv inside the block (restored after)."""
    convs = [m for m in backbone.modules() if isinstance(m, CDGConv2d)]
    old = [c.gating_enabled for c in convs]
    for c in convs:
        c.gating_enabled = False
    try:
        yield backbone
    finally:
        for c, e in zip(convs, old):
            c.gating_enabled = e


def encode_cdg_pair(backbone: nn.Module, x1: torch.Tensor, x2: torch.Tensor, settings: CDGSettings,
                    prune: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, PairStats]:
    """CDG / SCDG in SimCLR: branch 0's masks gate view 1, branch 1's view 2; extra loss: the threshold loss."""
    if not prune:
        with cdg_disabled(backbone):
            f1, f2 = _pooled(backbone, backbone.forward_features(x1)), _pooled(backbone, backbone.forward_features(x2))
        return f1, f2, f1.new_zeros(()), PairStats()
    f1 = _pooled(backbone, forward_branch(backbone, x1, 0))
    f2 = _pooled(backbone, forward_branch(backbone, x2, 1))
    extra = threshold_loss(backbone, target=settings.tau_target, weight=settings.threshold_weight)
    stats = cdg_stats(backbone, x1.shape[-2:]).pair_stats(x1.shape[0], views=2)  # per image, mean of the branches
    return f1, f2, extra, stats


def back_razor_pair_stats(backbone: nn.Module, pairs: int) -> PairStats:
    """PairStats of the Back Razor convs' training forwards since the last reset (the online encoder's step)."""
    t = step_tally(backbone)
    if not t["elements"]:
        return PairStats()
    sparsity = 1.0 - t["kept_elements"] / t["elements"]
    return PairStats(pairs=float(pairs), dense_flops=t["dense_train_flops"],
                     pruned_flops=t["dense_train_flops"] - t["skipped_flops"], sparsity_sum=sparsity * pairs,
                     activation_bytes_dense=t["bytes_dense"], activation_bytes_kept=t["bytes_kept"])


def _set_back_razor(backbone: nn.Module, enabled: bool) -> None:
    for m in backbone.modules():
        if isinstance(m, BackRazorConv2d):
            m.enabled = enabled


def attach_back_razor(framework: nn.Module) -> nn.Module:
    """Add the online encoder's Back Razor stats to ``framework(batch, prune)``'s PairStats (any framework).

    Forward hooks on the framework: before, the tallies are reset (and ``prune=False`` turns Back
    Razor off for that call); after, the step's tally is added to the returned stats. Only the online
    backbone (``framework.backbone``) counts: momentum encoders run under no_grad, where Back Razor
    convs are plain convs.
    """
    def before(module, args, kwargs):
        prune = kwargs.get("prune", args[1] if len(args) > 1 else True)
        reset_tally(module.backbone)
        _set_back_razor(module.backbone, bool(prune))

    def after(module, args, kwargs, output):
        _set_back_razor(module.backbone, True)
        loss, stats = output
        batch = kwargs.get("batch", args[0] if args else None)
        pairs = int(batch["views"][0].shape[0])
        return loss, stats + back_razor_pair_stats(module.backbone, pairs)

    framework.register_forward_pre_hook(before, with_kwargs=True)
    framework.register_forward_hook(after, with_kwargs=True)
    return framework
