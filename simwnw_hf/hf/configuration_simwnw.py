"""``SimWnWConfig``: the transformers config of a ``simwnw_*`` timm encoder.

The config names the timm architecture and its constructor kwargs instead of restating the
architecture in transformers terms, as transformers' own ``TimmWrapperConfig`` does: the timm
registration stays the single source of truth for the network, and the config only has to be
JSON. Image size and normalisation travel with it because the encoder was trained on views
normalised with them (docs/DESIGN.md, "Batch").

This file only imports ``transformers``: ``save_with_remote_code`` copies it next to the weights,
where transformers loads it as ``configuration_simwnw.py`` under ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
from dataclasses import field
from typing import Any

from transformers import PreTrainedConfig

__all__ = ["SimWnWConfig"]

IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]


class SimWnWConfig(PreTrainedConfig):
    r"""Config of a ``simwnw_*`` timm encoder wrapped for transformers.

    Args:
        architecture: registered timm model name, e.g. ``"simwnw_resnet50"``,
            ``"simwnw_resnet18_cifar"`` or ``"simwnw_vit_small_patch16_224"``.
        model_args: extra JSON-safe kwargs for ``timm.create_model`` (``{"img_size": 32, "depth": 2}``).
            ``num_classes`` is not allowed here: the head size is ``num_labels``.
        image_size: side (or ``[height, width]``) of the images the encoder expects.
        image_mean / image_std: per-channel normalisation of the input pixels.
        num_labels / id2label / label2id: the transformers classification-head fields
            (used by ``SimWnWForImageClassification`` only).
    """

    model_type = "simwnw"

    architecture: str = "simwnw_resnet50"
    model_args: dict[str, Any] | None = None
    image_size: int | list[int] = 224
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_DEFAULT_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_DEFAULT_STD))
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ValueError(f"SimWnWConfig.architecture must be a timm model name, got {self.architecture!r}")
        self.model_args = dict(self.model_args or {})
        if "num_classes" in self.model_args:
            raise ValueError("SimWnWConfig.model_args must not set 'num_classes'; use num_labels for the "
                             "classification head (SimWnWModel is always headless)")
        try:
            round_trip = json.loads(json.dumps(self.model_args))
        except (TypeError, ValueError) as err:
            raise ValueError(f"SimWnWConfig.model_args must be JSON-serialisable (numbers, strings, lists, "
                             f"dicts), got {self.model_args!r}: {err}") from err
        # JSON has no tuples: store the list form now so a saved-and-reloaded config compares equal.
        self.model_args = round_trip
        if isinstance(self.image_size, (tuple, list)):
            if len(self.image_size) != 2:
                raise ValueError(f"SimWnWConfig.image_size must be an int or [height, width], got {self.image_size!r}")
            self.image_size = [int(s) for s in self.image_size]
        else:
            self.image_size = int(self.image_size)
        self.image_mean = [float(v) for v in self.image_mean]
        self.image_std = [float(v) for v in self.image_std]
        if len(self.image_mean) != len(self.image_std):
            raise ValueError(f"SimWnWConfig.image_mean {self.image_mean} and image_std {self.image_std} "
                             "must have one value per channel")
        super().__post_init__(**kwargs)
