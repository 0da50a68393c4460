"""Weighted kNN classifier on frozen features (Wu et al. 2018, as used by DINO/SimSiam monitors)."""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .features import extract_features
from .splits import TrainingData, queries_seen_in_training, resolve_eval_splits

logger = logging.getLogger(__name__)


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class scores (N_test, C): each of the k nearest (cosine) neighbours votes ``exp(sim / t)``."""
    train = F.normalize(train_features, dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk):
        query = F.normalize(test_features[start:start + chunk], dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)  # (q, k)
        weights = (sim / temperature).exp()
        votes = F.one_hot(train_labels[idx], num_classes).float()  # (q, k, C)
        scores.append((votes * weights.unsqueeze(-1)).sum(dim=1))
    return torch.cat(scores)


def knn_evaluate(backbone, dataset: Optional[str], image_size: int, mean, std, train_split: Optional[str] = None,
                 test_split: Optional[str] = "test", k: int = 200, temperature: float = 0.1, image_column=None,
                 label_column=None, max_train: Optional[int] = None, max_test: Optional[int] = None,
                 batch_size: int = 256, trained_on: Union[TrainingData, str, None] = "bank") -> dict:
    """kNN top-1: memory bank and queries from :func:`~simwnw_hf.eval.splits.resolve_eval_splits`.

    ``trained_on`` says what the encoder saw in training, for ``queries_seen_in_training`` in the
    result (default ``"bank"``: the whole bank split, as the trainer's run-end kNN).
    """
    splits = resolve_eval_splits(dataset, train_split, test_split, image_column, label_column, max_train, max_test)
    bank_x, bank_y = extract_features(backbone, splits.bank, image_size, mean, std, batch_size, desc="kNN memory bank")
    query_x, query_y = extract_features(backbone, splits.queries, image_size, mean, std, batch_size,
                                      desc="kNN queries")
    num_classes = int(max(bank_y.max(), query_y.max())) + 1
    pred = knn_predict(bank_x, bank_y, query_x, num_classes, k, temperature).argmax(dim=1)
    record = splits.record(queries_seen_in_training(splits, trained_on))
    if record.get("note"):
        logger.warning("evaluation: %s", record["note"])
    return {"top1": 100.0 * (pred == query_y).float().mean().item(), "k": k, "t": temperature,
            "protocol": "weighted kNN, cosine similarity",
            **record,
            "num_train": len(bank_y), "num_test": len(query_y)}
