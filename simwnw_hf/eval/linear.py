"""Linear probe on frozen features (the linear evaluation protocol of Goyal et al. 2019, on cached features)."""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import extract_features
from .splits import TrainingData, queries_seen_in_training, resolve_eval_splits

logger = logging.getLogger(__name__)


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, epochs: int = 100,
                       lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0) -> nn.Module:
    """BatchNorm (no affine, as MAE's probe) + Linear, trained with AdamW on cached features."""
    generator = torch.Generator().manual_seed(seed)
    probe = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    n = train_x.shape[0]
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            loss = F.cross_entropy(probe(train_x[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    return probe.eval()


def linear_evaluate(backbone, dataset: Optional[str], image_size: int, mean, std, train_split: Optional[str] = None,
                    test_split: Optional[str] = "test", epochs: int = 100, lr: float = 1e-3, image_column=None,
                    label_column=None, max_train: Optional[int] = None, max_test: Optional[int] = None,
                    batch_size: int = 256, seed: int = 0,
                    trained_on: Union[TrainingData, str, None] = "bank") -> dict:
    """Linear-probe top-1: probe trained on the bank, scored on the queries (see ``resolve_eval_splits``)."""
    splits = resolve_eval_splits(dataset, train_split, test_split, image_column, label_column, max_train, max_test)
    train_x, train_y = extract_features(backbone, splits.bank, image_size, mean, std, batch_size, desc="probe train features")
    test_x, test_y = extract_features(backbone, splits.queries, image_size, mean, std, batch_size,
                                    desc="probe query features")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    probe = train_linear_probe(train_x, train_y, num_classes, epochs, lr, seed=seed)
    with torch.no_grad():
        pred = probe(test_x).argmax(dim=1)
    record = splits.record(queries_seen_in_training(splits, trained_on))
    if record.get("note"):
        logger.warning("evaluation: %s", record["note"])
    return {"top1": 100.0 * (pred == test_y).float().mean().item(), "epochs": epochs, "lr": lr,
            "protocol": "linear probe (BN without affine + Linear, AdamW) on frozen features",
            **record,
            "num_train": len(train_y), "num_test": len(test_y)}
