"""Projection and prediction heads; they sit on the backbone's pooled pre-logits features."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn


def mlp(dims: Sequence[int], batch_norm: bool = True, last_batch_norm: bool = False,
        last_affine: bool = True) -> nn.Sequential:
    """Linear(-BN)-ReLU blocks between consecutive ``dims``; the last block has no ReLU."""
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output dims, got {list(dims)}")
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        use_bn = last_batch_norm if last else batch_norm
        layers.append(nn.Linear(d_in, d_out, bias=not use_bn))
        if use_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_affine if last else True))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def simclr_projection(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """SimCLR v1 head: 2-layer MLP."""
    return mlp([in_dim, hidden_dim, out_dim])


def simsiam_projection(in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048) -> nn.Sequential:
    """SimSiam projector: 3 layers, BN on every output, the last BN without affine (SimSiam §4.4)."""
    return mlp([in_dim, hidden_dim, hidden_dim, out_dim], last_batch_norm=True, last_affine=False)


def simsiam_prediction(dim: int = 2048, hidden_dim: int = 512) -> nn.Sequential:
    """SimSiam predictor: bottleneck MLP, no BN on the output."""
    return mlp([dim, hidden_dim, dim])


def byol_mlp(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> nn.Sequential:
    """BYOL projector and predictor: Linear-BN-ReLU-Linear."""
    return mlp([in_dim, hidden_dim, out_dim])


def moco_projection(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """MoCo v2 head: 2-layer MLP without BN."""
    return mlp([in_dim, hidden_dim, out_dim], batch_norm=False)


def vicreg_projection(in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048) -> nn.Sequential:
    """VICReg expander: 3 layers with BN."""
    return mlp([in_dim, hidden_dim, hidden_dim, out_dim])
