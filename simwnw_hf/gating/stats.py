"""The per-step report every gating method returns: analytic FLOPs per image and sparsity.

All counts are FLOPs (one multiply-accumulate = 2 FLOPs) of convolutions and matrix products only,
the convention of ``simwnw_hf.simwnw.flops`` and ``torch.utils.flop_counter``. ``train_*`` is the
forward plus the backward passes autograd runs (grad-input where the conv's input needs grad, i.e. not
for a conv fed by the image; grad-weight for every conv); ``forward_*`` is the forward alone
(inference). ``dense`` is the same network without the method; ``actual`` is what an executor that
skips the method's zeros performs (the PyTorch code here computes densely and masks, so wall time does
not follow these numbers; see benchmarks/results/gating_step.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from simwnw_hf.pruning.stats import PairStats


@dataclass(frozen=True)
class GatingStats:
    """FLOPs per image of one step, and the method's sparsity.

    sparsity: fraction of the gated unit switched off (dual gate: block channels; CDG: conditional
        output positions; Back Razor: pruned input activations kept for backward), averaged over the
        batch and weighted by the work each unit carries where ``extra`` says so.
    overhead_flops: the gate's own FLOPs (already inside ``*_actual``), reported separately.
    extra: method-specific numbers (per-layer densities, saved bytes, ...), JSON-serialisable.
    """

    method: str
    forward_dense: float
    forward_actual: float
    train_dense: float
    train_actual: float
    sparsity: float
    overhead_flops: float = 0.0
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def forward_ratio(self) -> float:
        return self.forward_actual / self.forward_dense if self.forward_dense else 1.0

    @property
    def train_ratio(self) -> float:
        return self.train_actual / self.train_dense if self.train_dense else 1.0

    def pair_stats(self, images: float, views: int = 1, overhead_passes: int = 3) -> PairStats:
        """This per-image report as the trainer's :class:`~simwnw_hf.pruning.PairStats` (sums over images).

        The one conversion between the two: mechanisms report per image and view (this class, with
        the method's ``extra`` detail); runs record :class:`PairStats` sums, like every pair pruner.
        ``images``: image pairs of the step; ``views``: views the method ran this report for (CDG: 2,
        its report being the mean of the two branches; dual gate: 1, the gated view; its dense view
        is added by the caller); ``overhead_passes``: passes the gate runs in ``train_actual``
        (forward, grad-input, grad-weight: 3), moved from ``pruned_flops`` to ``overhead_flops``.
        """
        n = float(images) * views
        overhead = overhead_passes * self.overhead_flops * n
        return PairStats(pairs=float(images), dense_flops=self.train_dense * n,
                         pruned_flops=self.train_actual * n - overhead, overhead_flops=overhead,
                         sparsity_sum=self.sparsity * float(images), forward_dense_flops=self.forward_dense * n,
                         forward_pruned_flops=self.forward_actual * n)


def conv_flops(kh: int, kw: int, cin: int, cout: int, positions: float, groups: int = 1) -> float:
    """Forward FLOPs of a conv: ``2 * kh * kw * cin / groups * cout`` per output position."""
    return 2.0 * kh * kw * (cin // groups) * cout * positions
