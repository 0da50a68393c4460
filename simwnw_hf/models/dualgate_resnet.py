"""timm ResNet-18 with DGNet channel gates: ``simwnw_dualgate_resnet18`` and ``..._cifar`` (seed 002).

One set of conv weights, two paths: the *dense* path (``gated=False``: a plain ResNet, BN ``bn1``/``bn2``)
and the *gated* path (``gated=True``: each BasicBlock's gate switches conv1's output channels off, BN
``bn1_gated``/``bn2_gated``). Stem and downsample BN are shared, as in the authors' ``separate_bn``.
The dense path's keys are timm's, so :func:`dense_state_dict` is a plain ``resnet18`` /
``simwnw_resnet18_cifar`` state_dict.

``model(x)`` / ``forward_features`` run the path in ``model.default_gated`` (True: the registered model's
inference is the gated network with eval-mode hard gates). Training code calls
``forward_dual(x, gated)`` to get the masks as well; the gating mechanism (sampler, losses, FLOPs) is
``simwnw_hf.gating.dualgate`` and the stats ``simwnw_hf.gating.dualgate_stats``.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from simwnw_hf.models.weights import require_weight_source
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock

from simwnw_hf.gating.dualgate import ChannelGate

from .resnet import CIFAR10_MEAN, CIFAR10_STD, SimWnWResNet, _cfg

__all__ = ["DualGateBasicBlock", "DualGateResNet", "GATED_KEY_PARTS", "dense_state_dict"]


class DualGateBasicBlock(BasicBlock):
    """timm ``BasicBlock`` + a channel gate and a second pair of BN for the gated path."""

    def __init__(self, inplanes: int, planes: int, *args, gate_reduction: int = 4, **kwargs):
        super().__init__(inplanes, planes, *args, **kwargs)
        self.gate = ChannelGate(inplanes, planes, reduction=gate_reduction)
        self.bn1_gated = copy.deepcopy(self.bn1)
        self.bn2_gated = copy.deepcopy(self.bn2)
        self.gated = True  # path used by a plain ``forward(x)`` (features_only, timm wrappers)

    def forward_path(self, x: torch.Tensor, gated: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Block output and the ``(N, planes)`` mask of the gated path (None on the dense path)."""
        shortcut = x
        mask = self.gate(x) if gated else None
        out = self.conv1(x)
        out = (self.bn1_gated if gated else self.bn1)(out)
        out = self.drop_block(out)
        out = self.act1(out)
        if mask is not None:
            out = out * mask[:, :, None, None]
        out = self.aa(out)
        out = self.conv2(out)
        out = (self.bn2_gated if gated else self.bn2)(out)
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        out = out + shortcut
        return self.act2(out), mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_path(x, self.gated)[0]


class DualGateResNet(SimWnWResNet):
    """``SimWnWResNet`` whose BasicBlocks are :class:`DualGateBasicBlock` (dense + gated paths)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not all(isinstance(b, DualGateBasicBlock) for b in self.gated_blocks()):
            raise ValueError("DualGateResNet needs block=DualGateBasicBlock in every stage")
        self.set_default_path(gated=True)

    def gated_blocks(self) -> List[DualGateBasicBlock]:
        return [blk for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for blk in stage]

    def set_default_path(self, gated: bool) -> "DualGateResNet":
        """Path of ``model(x)`` / ``forward_features`` / features_only: gated (default) or dense."""
        self.default_gated = bool(gated)
        for blk in self.gated_blocks():
            blk.gated = self.default_gated
        return self

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        if enable:
            raise NotImplementedError("DualGateResNet does not support gradient checkpointing")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_dual(self, x: torch.Tensor, gated: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Feature map of the chosen path and the per-block masks ``[(N, planes)]`` (empty if dense)."""
        x = self.forward_stem(x)
        masks = []
        for blk in self.gated_blocks():
            x, m = blk.forward_path(x, gated)
            if m is not None:
                masks.append(m)
        return x, masks

    def forward_features(self, x: torch.Tensor, gated: Optional[bool] = None) -> torch.Tensor:
        return self.forward_dual(x, self.default_gated if gated is None else gated)[0]

    def forward(self, x: torch.Tensor, gated: Optional[bool] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, gated))


GATED_KEY_PARTS = (".gate.", ".bn1_gated.", ".bn2_gated.")
"""Parts of the state_dict keys that belong to the gated path only (dropped for the dense sub-network)."""


def dense_state_dict(model: DualGateResNet) -> Dict[str, torch.Tensor]:
    """The dense sub-network as a plain timm ResNet state_dict (gates and gated BN dropped)."""
    return {k: v for k, v in model.state_dict().items() if not any(d in k for d in GATED_KEY_PARTS)}


def _create(variant: str, pretrained: bool = False, **kwargs) -> DualGateResNet:
    # timm would only warn and return random weights; refuse instead of handing back a plausible model
    require_weight_source(variant, pretrained, kwargs)
    return build_model_with_cfg(DualGateResNet, variant, pretrained, **kwargs)


# No weights are published for these yet: no hf_hub_id, so pretrained=True has nothing to load.
default_cfgs = generate_default_cfgs({
    "simwnw_dualgate_resnet18": _cfg(),
    "simwnw_dualgate_resnet18_cifar": _cfg(
        input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD),
})


@register_model
def simwnw_dualgate_resnet18(pretrained: bool = False, **kwargs) -> DualGateResNet:
    """ResNet-18 (timm layout) with DGNet channel gates; dense and gated paths share the convs."""
    args = dict(block=DualGateBasicBlock, layers=(2, 2, 2, 2))
    return _create("simwnw_dualgate_resnet18", pretrained, **dict(args, **kwargs))


@register_model
def simwnw_dualgate_resnet18_cifar(pretrained: bool = False, **kwargs) -> DualGateResNet:
    """As ``simwnw_dualgate_resnet18`` with the CIFAR stem (3x3/1 conv, no max-pool)."""
    args = dict(block=DualGateBasicBlock, layers=(2, 2, 2, 2), cifar_stem=True)
    return _create("simwnw_dualgate_resnet18_cifar", pretrained, **dict(args, **kwargs))
