"""Linear probe on frozen features (the linear evaluation protocol of Goyal et al. 2019, on cached features)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from simwnw_hf.data.datasets import load_image_dataset

from .features import extract_features


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
                    test_split: str = "test", epochs: int = 100, lr: float = 1e-3, image_column=None,
                    label_column=None, max_train: Optional[int] = None, max_test: Optional[int] = None,
                    batch_size: int = 256, seed: int = 0) -> dict:
    train = load_image_dataset(dataset, train_split, image_column, label_column, max_train)
    test = load_image_dataset(dataset, test_split, image_column, label_column, max_test)
    train_x, train_y = extract_features(backbone, train, image_size, mean, std, batch_size)
    test_x, test_y = extract_features(backbone, test, image_size, mean, std, batch_size)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    probe = train_linear_probe(train_x, train_y, num_classes, epochs, lr, seed=seed)
    with torch.no_grad():
        pred = probe(test_x).argmax(dim=1)
    return {"top1": 100.0 * (pred == test_y).float().mean().item(), "epochs": epochs, "lr": lr,
            "protocol": "linear probe (BN without affine + Linear, AdamW) on frozen features",
            "dataset": train.source, "train_split": train.split, "test_split": test.split,
            "num_train": len(train_y), "num_test": len(test_y)}
