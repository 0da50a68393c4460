"""All-gather with an exact gradient, for losses over the global batch.

Contrastive negatives (SimCLR) and VICReg's variance/covariance must span the global batch, not one
process's slice. ``torch.distributed.all_gather`` has no autograd; :class:`_GatherLayer` sums the
gradient of every process's loss w.r.t. each gathered slot (all-reduce) and returns this process's
slot. With DDP's gradient averaging this gives exactly the gradient of the single-process loss on the
concatenated batch (checked in ``tests/test_distributed.py``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        stacked = torch.stack(grads)  # (world, *x.shape)
        dist.all_reduce(stacked)
        return stacked[rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0 (rank order); identity on one process."""
    if world_size() == 1:
        return x
    return torch.cat(_GatherLayer.apply(x), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process, without gradient (MoCo keys, DINO centres)."""
    if world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)
