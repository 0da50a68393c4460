"""timm ResNet-18 with DGNet channel gates: ``simwnw_dualgate_resnet18`` and ``..._cifar`` (seed 002).

The registered model is the deployable *gated* network: every BasicBlock has ``conv1, bn1, gate, conv2,
bn2`` and ``model(x)`` / ``forward_features`` / features_only run it (eval mode: hard gates
``logits >= 0``; train mode: sampled straight-through gates), so every parameter is used and timm's
fx / TorchScript / backward tests hold.

Seed 002 co-trains a *dense* path through the same convs with its own block BN (stem and downsample BN
shared, as in the authors' ``separate_bn``). That BN is training-time state: :meth:`DualGateResNet.
add_dense_path` adds ``bn1_dense`` / ``bn2_dense`` to every block (the trainer's gating preparation calls
it) and ``forward_dual(x, gated)`` runs either path and returns the masks. :func:`dense_state_dict`
turns that state into a plain timm ``resnet18`` / ``simwnw_resnet18_cifar`` state_dict and
:func:`gated_state_dict` into the registered model's. The gating mechanism (sampler, losses, FLOPs) is
``simwnw_hf.gating.dualgate`` and the stats ``simwnw_hf.gating.dualgate_stats``.
"""

from __future__ import annotations

import copy
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from simwnw_hf.models.weights import require_weight_source
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock

from simwnw_hf.gating.dualgate import ChannelGate

from .resnet import CIFAR10_MEAN, CIFAR10_STD, SimWnWResNet, _cfg

__all__ = ["DualGateBasicBlock", "DualGateResNet", "DENSE_BN_SUFFIX", "dense_state_dict", "gated_state_dict",
           "has_dense_path_keys"]

DENSE_BN_SUFFIX = "_dense"
"""``bn1`` + this suffix is the dense path's BN of a block (training-time state, see module docstring)."""

NO_DENSE_PATH = ("the dense path needs the dense BatchNorms: call model.add_dense_path() first "
                 "(the trainer does this for --gating dualgate)")


class DualGateBasicBlock(BasicBlock):
    """timm ``BasicBlock`` + a channel gate on conv1's output; ``bn1`` / ``bn2`` are the gated path's BN."""

    def __init__(self, inplanes: int, planes: int, *args, gate_reduction: int = 4, **kwargs):
        super().__init__(inplanes, planes, *args, **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.gate = ChannelGate(inplanes, planes, reduction=gate_reduction, **dd)
        # the dense path's BN, added for co-training by add_dense_path(); None in the deployable model
        self.bn1_dense: Optional[nn.Module] = None
        self.bn2_dense: Optional[nn.Module] = None

    @torch.jit.ignore
    def add_dense_path(self) -> None:
        """Give the block its dense-path BN (copies of the gated ones); a no-op when it has them."""
        if self.bn1_dense is None:
            self.bn1_dense = copy.deepcopy(self.bn1)
        if self.bn2_dense is None:
            self.bn2_dense = copy.deepcopy(self.bn2)

    def _finish(self, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """After the second BN: SE, drop path, residual, activation (shared by both paths)."""
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(out + shortcut)

    def forward_gated(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Gated path: block output and the ``(N, planes)`` mask of conv1's output channels."""
        mask = self.gate(x)
        out = self.act1(self.drop_block(self.bn1(self.conv1(x))))
        out = out * mask[:, :, None, None]
        out = self.bn2(self.conv2(self.aa(out)))
        return self._finish(out, x), mask

    @torch.jit.unused
    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Dense path (training only): the same convs, every channel on, the dense BN."""
        if self.bn1_dense is None or self.bn2_dense is None:
            raise ValueError(NO_DENSE_PATH)
        out = self.act1(self.drop_block(self.bn1_dense(self.conv1(x))))
        out = self.bn2_dense(self.conv2(self.aa(out)))
        return self._finish(out, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_gated(x)[0]


class DualGateResNet(SimWnWResNet):
    """``SimWnWResNet`` whose BasicBlocks are :class:`DualGateBasicBlock`; ``model(x)`` is the gated network."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not all(isinstance(b, DualGateBasicBlock) for b in self.gated_blocks()):
            raise ValueError("DualGateResNet needs block=DualGateBasicBlock in every stage")

    @torch.jit.ignore
    def gated_blocks(self) -> List[DualGateBasicBlock]:
        return [blk for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for blk in stage]

    @torch.jit.ignore
    def add_dense_path(self) -> "DualGateResNet":
        """Add the dense path's block BN for co-training (idempotent); :meth:`forward_dual` needs it."""
        for blk in self.gated_blocks():
            blk.add_dense_path()
        return self

    @property
    @torch.jit.unused
    def has_dense_path(self) -> bool:
        return all(blk.bn1_dense is not None and blk.bn2_dense is not None for blk in self.gated_blocks())

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        if enable:
            raise NotImplementedError("DualGateResNet does not support gradient checkpointing")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    @torch.jit.unused
    def forward_dual(self, x: torch.Tensor, gated: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Feature map of the chosen path and the per-block masks ``[(N, planes)]`` (empty if dense).

        The dense path needs :meth:`add_dense_path` (one-line ValueError otherwise).
        """
        if not gated and not self.has_dense_path:
            raise ValueError(NO_DENSE_PATH)
        x = self.forward_stem(x)
        masks = []
        for blk in self.gated_blocks():
            if gated:
                x, m = blk.forward_gated(x)
                masks.append(m)
            else:
                x = blk.forward_dense(x)
        return x, masks


_BLOCK_BN_KEY = re.compile(r"^(layer\d+\.\d+\.)(bn[12])(_dense)?\.(.+)$")


def has_dense_path_keys(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a dual-gate state_dict holds the dense path's BN (a training checkpoint, not an export)."""
    return any((m := _BLOCK_BN_KEY.match(k)) is not None and m.group(3) for k in state_dict)


def gated_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The registered (gated) model's state_dict: the dense path's ``*_dense`` BN dropped."""
    return {k: v for k, v in state_dict.items() if not ((m := _BLOCK_BN_KEY.match(k)) and m.group(3))}


def dense_state_dict(source) -> Dict[str, torch.Tensor]:
    """The dense sub-network as a plain timm ResNet state_dict, from a model or a training state_dict.

    Shared convs + stem / downsample BN kept, each block's ``bn1_dense`` / ``bn2_dense`` renamed to
    ``bn1`` / ``bn2``; gates and the gated BN dropped. One-line ValueError without the dense path.
    """
    state_dict = source.state_dict() if isinstance(source, nn.Module) else source
    if not has_dense_path_keys(state_dict):
        raise ValueError("these weights hold no dense path (no layer*.bn1_dense keys): they are a gated-only "
                         "model, export the dense sub-network from the training run's checkpoint instead")
    dense = {}
    for k, v in state_dict.items():
        if ".gate." in k:
            continue
        m = _BLOCK_BN_KEY.match(k)
        if m is None:
            dense[k] = v
        elif m.group(3):
            dense[f"{m.group(1)}{m.group(2)}.{m.group(4)}"] = v
    return dense


def _checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: DualGateResNet) -> Dict[str, torch.Tensor]:
    """timm's pretrained hook: a training checkpoint (dense path's BN included) loads as the gated model."""
    return gated_state_dict(state_dict)


def _create(variant: str, pretrained: bool = False, **kwargs) -> DualGateResNet:
    # timm would only warn and return random weights; refuse instead of handing back a plausible model
    require_weight_source(variant, pretrained, kwargs)
    return build_model_with_cfg(DualGateResNet, variant, pretrained, pretrained_filter_fn=_checkpoint_filter_fn,
                                **kwargs)


# No weights are published for these yet: no hf_hub_id, so pretrained=True has nothing to load.
default_cfgs = generate_default_cfgs({
    "simwnw_dualgate_resnet18": _cfg(),
    "simwnw_dualgate_resnet18_cifar": _cfg(
        input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD),
})


@register_model
def simwnw_dualgate_resnet18(pretrained: bool = False, **kwargs) -> DualGateResNet:
    """ResNet-18 (timm layout) with DGNet channel gates; ``model(x)`` runs the gated network."""
    args = dict(block=DualGateBasicBlock, layers=(2, 2, 2, 2))
    return _create("simwnw_dualgate_resnet18", pretrained, **dict(args, **kwargs))


@register_model
def simwnw_dualgate_resnet18_cifar(pretrained: bool = False, **kwargs) -> DualGateResNet:
    """As ``simwnw_dualgate_resnet18`` with the CIFAR stem (3x3/1 conv, no max-pool)."""
    args = dict(block=DualGateBasicBlock, layers=(2, 2, 2, 2), cifar_stem=True)
    return _create("simwnw_dualgate_resnet18_cifar", pretrained, **dict(args, **kwargs))
