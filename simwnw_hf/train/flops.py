"""Training FLOPs of a step, measured with ``torch.utils.flop_counter`` (FLOPs, not MACs).

Stock ``FlopCounterMode`` has no formula for the CPU fused-attention kernel and would count ViT
attention as 0 FLOPs on CPU; :func:`simwnw_hf.tokens.flops.flop_counter` adds it.
"""

from __future__ import annotations

import copy

import torch
from simwnw_hf.tokens.flops import flop_counter


def count_step_flops(step_fn) -> int:
    """FLOPs of everything ``step_fn`` runs (forward and backward) under ``FlopCounterMode``."""
    with flop_counter() as counter:
        step_fn()
    return int(counter.get_total_flops())


def dense_step_flops(framework: torch.nn.Module, batch) -> int:
    """Forward+backward FLOPs of one dense (``prune=False``) step on a copy of the framework.

    A copy, so the metering step leaves no trace in BatchNorm statistics, queues or gradients of the
    real model: a resumed run then stays bit-identical to an uninterrupted one.
    """
    twin = copy.deepcopy(framework)
    twin.train()

    def step():
        loss, _ = twin(batch, prune=False)
        loss.backward()

    return count_step_flops(step)
