"""The two exports of a dual-gate run (seed 002): the dense sub-network and the gated network.

One pre-training yields both (docs/GATING.md §1). ``dense``: the dense path's weights under timm's
keys (the training checkpoint's ``bn*_dense`` renamed), exported as the plain ResNet twin of the architecture (``simwnw_dualgate_resnet18_cifar`` ->
``simwnw_resnet18_cifar``, ``simwnw_dualgate_resnet18`` -> ``simwnw_resnet18``, which timm's
``resnet18`` also loads). ``gated``: the registered ``simwnw_dualgate_*`` model, whose ``model(x)`` runs
eval-mode hard gates; its inference FLOPs depend on the input, so they are measured on a batch of real
images (:func:`measure_inference_flops`) and stated on the card.
"""

from __future__ import annotations

from typing import Optional

import torch

SUBNETWORKS = ("gated", "dense")


def is_dualgate_record(record: dict) -> bool:
    return (record.get("pruning") or {}).get("method") == "dualgate"


def dense_twin(model_name: str) -> str:
    """The plain timm architecture of a dual-gate model's dense path."""
    if "_dualgate" not in model_name:
        raise ValueError(f"{model_name} is not a simwnw_dualgate_* model")
    return model_name.replace("_dualgate", "")


def dense_subnetwork(record: dict, state_dict: dict):
    """``(record, state_dict)`` of the dense sub-network: the plain twin architecture, gates and gated BN
    dropped, the dense path's ``bn*_dense`` renamed to timm's ``bn*``."""
    from simwnw_hf.models.dualgate_resnet import dense_state_dict

    return {**record, "model": dense_twin(record["model"]), "subnetwork": "dense",
            "trained_as": record["model"]}, dense_state_dict(state_dict)


def gated_subnetwork(record: dict, state_dict: dict):
    """``(record, state_dict)`` of the gated network: the registered model's keys (dense path's BN dropped)."""
    from simwnw_hf.models.dualgate_resnet import gated_state_dict

    return {**record, "subnetwork": "gated"}, gated_state_dict(state_dict)


@torch.no_grad()
def measure_inference_flops(model, images: torch.Tensor) -> dict:
    """Forward FLOPs per image of the gated network in eval mode (hard gates ``logits >= 0``) on ``images``.

    Counted analytically per block from the gates that fire (``dualgate_stats``), batch mean, stem and
    gates included, fc excluded (headless). ``dense``: the same network with every channel on.
    """
    from simwnw_hf.gating.dualgate_stats import dualgate_stats

    was = model.training
    model.eval()
    try:
        _, masks = model.forward_dual(images, gated=True)
        stats = dualgate_stats(model, masks, images.shape[-2:])
    finally:
        model.train(was)
    return {"flops_per_image": stats.forward_actual, "dense_flops_per_image": stats.forward_dense,
            "flops_ratio": stats.forward_ratio, "gate_sparsity": stats.sparsity, "num_images": int(images.shape[0]),
            "mode": "eval-mode hard gates (logits >= 0)"}


def inference_batch(record: dict, model, num_images: int = 256, dataset: Optional[str] = None,
                    split: Optional[str] = None) -> tuple:
    """A batch of the run's evaluation images, transformed as the kNN evaluation does; and its source."""
    from simwnw_hf.data.datasets import load_image_dataset
    from simwnw_hf.eval.features import eval_transform

    cfg = record.get("train_config") or {}
    source = dataset if dataset is not None else cfg.get("dataset")
    split = split or cfg.get("eval_split") or "test"
    try:
        images = load_image_dataset(source, split, cfg.get("image_column"), cfg.get("label_column"), num_images)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"cannot read images to measure the gated network's inference FLOPs ({exc}); "
                         f"pass --flops-dataset") from exc
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    transform = eval_transform(int(record["image_size"]), mean, std)
    batch = torch.stack([transform(images.get_image(i)) for i in range(len(images))])
    return batch, {"dataset": images.source, "split": images.split}
