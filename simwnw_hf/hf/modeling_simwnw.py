"""transformers models around a ``simwnw_*`` timm encoder: ``SimWnWModel`` and ``SimWnWForImageClassification``.

Layout follows transformers' ``TimmWrapperModel`` (models/timm_wrapper): the timm network lives at
``self.timm_model`` (also ``base_model_prefix``), so the safetensors keys are
``timm_model.<timm state_dict key>`` and a timm state_dict loads with
``model.timm_model.load_state_dict(sd)``. ``SimWnWModel`` builds the encoder headless
(``num_classes=0``); ``SimWnWForImageClassification`` builds it with ``num_classes=num_labels``, so a
checkpoint of either loads into the other (the head is reported missing / unexpected).

Inference is timm's single-image path, which never prunes (docs/DESIGN.md): pruning exists only in
``forward_pair`` during SSL training.

Remote code: ``save_with_remote_code`` copies this file and ``configuration_simwnw.py`` next to the
weights. The only import beyond torch / timm / transformers is ``simwnw_hf.models`` (the timm
registrations), so a folder loaded with ``trust_remote_code=True`` needs ``simwnw_hf`` installed but
not imported.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

import simwnw_hf.models  # noqa: F401  (registers the simwnw_* architectures with timm)
import timm

from .configuration_simwnw import SimWnWConfig

__all__ = ["SimWnWPreTrainedModel", "SimWnWModel", "SimWnWForImageClassification"]


def create_timm_encoder(config: SimWnWConfig, num_classes: int) -> nn.Module:
    """``timm.create_model(config.architecture, num_classes=..., **config.model_args)`` with clear errors."""
    if not timm.is_model(config.architecture):
        raise ValueError(f"unknown timm architecture {config.architecture!r}: SimWnWConfig expects a registered "
                         f"model such as {timm.list_models('simwnw_*')}")
    return timm.create_model(config.architecture, pretrained=False, num_classes=num_classes, **config.model_args)


def _classifier_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the timm model's classifier (``get_classifier()``); empty when headless."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    prefixes = [name for name, module in model.named_modules() if module is head and name]
    return {k for k in model.state_dict() if any(k.startswith(p + ".") for p in prefixes)}


class SimWnWPreTrainedModel(PreTrainedModel):
    """Shared loading/initialisation rules for the ``simwnw`` models."""

    config_class = SimWnWConfig
    config: SimWnWConfig
    base_model_prefix = "timm_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["SimWnWResNet", "SimWnWVisionTransformer"]  # device_map keeps a timm model whole
    _supports_sdpa = True  # timm's attention already calls F.scaled_dot_product_attention
    supports_gradient_checkpointing = True  # through timm's set_grad_checkpointing (ResNet and ViT have it)
    accepts_loss_kwargs = False

    def _keep_timm_init(self) -> None:
        """Mark the freshly built timm tensors as initialised.

        ``post_init`` would otherwise re-initialise every layer with transformers' generic scheme
        (normal(0.02) convolutions, ...), so ``SimWnWModel(config)`` would no longer start like
        ``timm.create_model(architecture)``. ``from_pretrained`` replaces loaded tensors and gives
        missing ones fresh tensors, which ``_init_weights`` then initialises. Tensors on the meta
        device (``from_pretrained`` builds there) stay unmarked: transformers reads a marked tensor as
        loaded and would never materialise a missing one.
        """
        for tensor in [*self.timm_model.parameters(), *self.timm_model.buffers()]:
            if tensor.device.type != "meta":
                tensor._is_hf_initialized = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Missing weights (e.g. a new classifier) get PyTorch's default layer init."""
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        self.timm_model.set_grad_checkpointing(enable)

    def get_input_embeddings(self):
        return None  # image encoder: no token embedding table

    def _check_hidden_states_request(self, output_hidden_states) -> None:
        if output_hidden_states and not hasattr(self.timm_model, "forward_intermediates"):
            raise ValueError(f"output_hidden_states needs timm's forward_intermediates, which "
                             f"{type(self.timm_model).__name__} does not implement")

    def _features(self, pixel_values: torch.Tensor, output_hidden_states):
        """(last_hidden_state, hidden_states or None): timm's forward_features / forward_intermediates."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got shape "
                             f"{tuple(pixel_values.shape)}")
        pixel_values = pixel_values.to(self.device, self.dtype)
        if output_hidden_states:
            kwargs = {}
            if isinstance(output_hidden_states, (list, tuple)):
                kwargs["indices"] = list(output_hidden_states)
            last, intermediates = self.timm_model.forward_intermediates(pixel_values, **kwargs)
            return last, tuple(intermediates)
        return self.timm_model.forward_features(pixel_values), None

    @classmethod
    def from_timm(cls, model: nn.Module, model_args: dict | None = None, **config_kwargs):
        """Wrap a (trained) ``simwnw_*`` timm model; its weights are copied, its head kept if ``cls`` has one.

        Args:
            model: a timm model created from a registered architecture (``model.pretrained_cfg``
                names it).
            model_args: the extra kwargs the model was created with (``img_size``, ``depth``, ...);
                checked by rebuilding the architecture and comparing every tensor shape.
            **config_kwargs: further ``SimWnWConfig`` fields (``id2label``, ``image_size``, ...).
        """
        architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        if not architecture:
            raise ValueError("from_timm needs a model built by timm.create_model (model.pretrained_cfg['architecture'] "
                             "names the registered architecture)")
        model_args = dict(model_args or {})
        data_cfg = timm.data.resolve_model_data_config(model)
        image_size = model_args.get("img_size", list(data_cfg["input_size"][1:]))
        if isinstance(image_size, (list, tuple)) and len(image_size) == 2 and image_size[0] == image_size[1]:
            image_size = image_size[0]
        num_classes = getattr(model, "num_classes", 0)
        defaults = dict(image_size=image_size, image_mean=list(data_cfg["mean"]), image_std=list(data_cfg["std"]))
        if cls is SimWnWForImageClassification:
            if not num_classes:
                raise ValueError("from_timm for SimWnWForImageClassification needs a model with a classifier "
                                 "(num_classes > 0); use SimWnWModel.from_timm for a headless encoder")
            defaults["num_labels"] = num_classes
        config = SimWnWConfig(architecture=architecture, model_args=model_args, **{**defaults, **config_kwargs})
        wrapper = cls(config)
        source = model.state_dict()
        if cls is SimWnWModel:  # headless: drop the source's classifier, if it has one
            head_keys = _classifier_keys(model)
            source = {k: v for k, v in source.items() if k not in head_keys}
        expected = wrapper.timm_model.state_dict()
        mismatched = [k for k in expected if k not in source or source[k].shape != expected[k].shape]
        unexpected = [k for k in source if k not in expected]
        if mismatched or unexpected:
            raise ValueError(f"model does not match {architecture!r} built with model_args={model_args}: "
                             f"missing/mis-shaped {mismatched[:5]}, unexpected {unexpected[:5]}; pass the kwargs "
                             "the model was created with as model_args")
        wrapper.timm_model.load_state_dict(source, strict=True)
        return wrapper


class SimWnWModel(SimWnWPreTrainedModel):
    """Headless encoder: ``last_hidden_state`` = timm ``forward_features`` (feature map or token sequence),
    ``pooler_output`` = timm ``forward_head(..., pre_logits=True)`` (what SSL heads sit on),
    ``hidden_states`` = timm ``forward_intermediates`` (one entry per stage / block)."""

    def __init__(self, config: SimWnWConfig):
        super().__init__(config)
        self.timm_model = create_timm_encoder(config, num_classes=0)
        self._keep_timm_init()
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | list[int] | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPooling | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        self._check_hidden_states_request(output_hidden_states)
        last_hidden_state, hidden_states = self._features(pixel_values, output_hidden_states)
        pooled = self.timm_model.forward_head(last_hidden_state, pre_logits=True)
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled, hidden_states) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled,
                                          hidden_states=hidden_states)


class SimWnWForImageClassification(SimWnWPreTrainedModel):
    """Encoder plus timm's own classifier (``num_classes = config.num_labels``); loss as in every
    transformers ``*ForImageClassification`` (cross-entropy for single-label problems)."""

    def __init__(self, config: SimWnWConfig):
        super().__init__(config)
        if not config.num_labels:
            raise ValueError("SimWnWForImageClassification needs config.num_labels > 0 "
                             "(e.g. from_pretrained(path, num_labels=10)); use SimWnWModel for features")
        self.num_labels = config.num_labels
        self.timm_model = create_timm_encoder(config, num_classes=config.num_labels)
        self._keep_timm_init()
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.LongTensor | None = None,
                output_hidden_states: bool | list[int] | None = None, return_dict: bool | None = None,
                **kwargs) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        self._check_hidden_states_request(output_hidden_states)
        last_hidden_state, hidden_states = self._features(pixel_values, output_hidden_states)
        logits = self.timm_model.forward_head(last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)
