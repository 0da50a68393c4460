"""Where ``pretrained=True`` weights of a ``simwnw_*`` architecture can come from.

No simwnw_hf weights are published (the ``default_cfgs`` tables carry no tag and no Hub id), so a plain
``timm.create_model("simwnw_resnet50", pretrained=True)`` has nothing to load. timm would build the
model, then fail with a generic error (or, with an invented Hub id, retry the network for ~47 s):
:func:`require_weight_source` fails first, in one message saying how to get weights. A weight source
the caller gives still works: ``hf-hub:ORG/NAME`` / ``local-dir:PATH`` model names and
``pretrained_cfg_overlay=dict(file=...)`` (or ``url`` / ``state_dict``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from timm.models import resolve_pretrained_cfg

__all__ = ["NoPublishedWeightsError", "require_weight_source", "how_to_get_weights"]


class NoPublishedWeightsError(RuntimeError):
    """``pretrained=True`` on an architecture with no published weights and no weight source given."""


def how_to_get_weights(variant: str) -> str:
    return (f"no published weights for {variant}: simwnw_hf publishes none. Train an encoder (e.g. "
            f"`python training/simsiam.py --model {variant} ...`), publish it with `python hub_upload.py RUN_DIR "
            f"--repo-id ORG/NAME` and load it with timm.create_model('hf-hub:ORG/NAME', pretrained=True); or load "
            f"a local file with timm.create_model('{variant}', pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='model.safetensors')); or pass pretrained=False")


def require_weight_source(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> None:
    """Raise :class:`NoPublishedWeightsError` when ``pretrained`` has no weight source to load from.

    ``kwargs`` are the entrypoint's keyword arguments (``pretrained_cfg`` from ``hf-hub:`` /
    ``local-dir:`` names or a tag, ``pretrained_cfg_overlay`` from the caller); nothing is downloaded.
    """
    if not pretrained:
        return
    cfg: Optional[Any] = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                                pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    if cfg.get("source") in ("hf-hub", "local-dir") or any(cfg.get(k) for k in ("file", "url", "state_dict",
                                                                                "hf_hub_id")):
        return
    raise NoPublishedWeightsError(how_to_get_weights(variant))
