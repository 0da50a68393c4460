"""SSL losses, each a small module written from its paper's equation."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import gather_with_grad, rank


class NTXentLoss(nn.Module):
    """Normalised-temperature cross entropy of SimCLR (Chen et al. 2020, eq. 1).

    For 2N views (N pairs, gathered over all processes) each view's positive is its pair and its
    2N - 2 negatives are every other view. Rows are this process's views, columns the global batch.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
        n = z0.shape[0]
        z0_all = gather_with_grad(z0) if self.gather_distributed else z0  # (N, d)
        z1_all = gather_with_grad(z1) if self.gather_distributed else z1
        offset = rank() * n if self.gather_distributed else 0
        rows = torch.cat([z0, z1])  # (2n, d)
        cols = torch.cat([z1_all, z0_all])  # (2N, d): positives of z0 rows first
        logits = rows @ cols.T / self.temperature  # (2n, 2N)
        big_n = z0_all.shape[0]
        local = torch.arange(n, device=z0.device) + offset
        # a view is never its own negative: z0[i] sits at column N + local[i], z1[i] at column local[i]
        self_cols = torch.cat([local + big_n, local])
        logits = logits.masked_fill(F.one_hot(self_cols, 2 * big_n).bool(), float("-inf"))
        labels = torch.cat([local, local + big_n])
        return F.cross_entropy(logits, labels)


class NegativeCosineSimilarity(nn.Module):
    """``-cos(p, z)`` averaged over the batch (SimSiam eq. 1; the caller applies stop-gradient)."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -F.cosine_similarity(p, z, dim=1).mean()


class InfoNCEWithQueue(nn.Module):
    """MoCo's InfoNCE: one positive key per query, negatives from a FIFO queue of past keys.

    The queue holds keys of the momentum encoder gathered from all processes, so every process sees
    the same negatives. ``enqueue`` is called once per step after the loss.
    """

    def __init__(self, dim: int, queue_size: int = 4096, temperature: float = 0.2):
        super().__init__()
        if queue_size <= 0:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        self.temperature = temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)  # (n, 1)
        negative = q @ self.queue.clone().T  # (n, K)
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(keys, dim=1)
        size = self.queue.shape[0]
        keys = keys[-size:]  # a batch larger than the queue keeps its newest keys
        ptr = int(self.queue_ptr)
        idx = (torch.arange(keys.shape[0], device=keys.device) + ptr) % size
        self.queue[idx] = keys
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)


class VICRegLoss(nn.Module):
    """VICReg (Bardes et al. 2022): invariance + variance hinge + covariance decorrelation.

    As the authors' code (facebookresearch/vicreg ``main_vicreg.py``, ``VICReg.forward``)::

        loss = lambda * mse(z_a, z_b)
             + mu * (mean_j relu(1 - std_j(z_a)) / 2 + mean_j relu(1 - std_j(z_b)) / 2)
             + nu * (sum_{i != j} cov(z_a)_ij^2 / d + sum_{i != j} cov(z_b)_ij^2 / d)

    with ``std = sqrt(var + eps)`` and weights 25 / 25 / 1: the variance term *averages* the two
    branches (the paper's eq. 6 sums them, which doubles its weight). The invariance term is the
    local batch's; variance and covariance are statistics of the *global* batch (gathered first).
    """

    def __init__(self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0,
                 eps: float = 1e-4, gather_distributed: bool = True):
        super().__init__()
        self.lambda_param, self.mu_param, self.nu_param, self.eps = lambda_param, mu_param, nu_param, eps
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        invariance = F.mse_loss(z_a, z_b)
        if self.gather_distributed:
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        return (self.lambda_param * invariance
                + self.mu_param * (self._variance(z_a) + self._variance(z_b)) / 2
                + self.nu_param * (self._covariance(z_a) + self._covariance(z_b)))

    def _variance(self, z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + self.eps)
        return F.relu(1.0 - std).mean()

    @staticmethod
    def _covariance(z: torch.Tensor) -> torch.Tensor:
        n, d = z.shape
        z = z - z.mean(dim=0)
        cov = (z.T @ z) / (n - 1)  # (d, d)
        off_diagonal = cov - torch.diag(torch.diag(cov))
        return off_diagonal.pow(2).sum() / d
