"""timm ResNets for SimWnW: ``simwnw_resnet18``, ``simwnw_resnet50``, ``simwnw_resnet18_cifar``.

A ``SimWnWResNet`` *is* a timm ``ResNet`` (same modules, same state_dict keys), so weights load both
ways and single-image inference is exactly timm's. The only architectural option added is the CIFAR
stem (3x3 stride-1 conv, no max-pool) used by SimCLR/SimSiam for 32px images.
"""

from __future__ import annotations

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["SimWnWResNet"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class SimWnWResNet(ResNet):
    """timm ``ResNet`` with an optional CIFAR stem.

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


def _create(variant: str, pretrained: bool = False, **kwargs) -> SimWnWResNet:
    return build_model_with_cfg(SimWnWResNet, variant, pretrained, **kwargs)


def _cfg(**kwargs):
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
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
        num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
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
