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

from dataclasses import asdict, dataclass, field
from typing import Dict


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

    def as_dict(self) -> Dict[str, float]:
        """Flat ``gating_*`` record of this report, for benchmarks and inspection.

        The trainer does not write it: runs record gating through :class:`~simwnw_hf.pruning.PairStats`
        (``simwnw_hf.gating.training``), the one stats path of every method.
        """
        out = {f"gating_{k}": v for k, v in asdict(self).items() if k != "extra"}
        out["gating_forward_ratio"] = self.forward_ratio
        out["gating_train_ratio"] = self.train_ratio
        out.update({f"gating_{k}": v for k, v in self.extra.items()})
        return out


def conv_flops(kh: int, kw: int, cin: int, cout: int, positions: float, groups: int = 1) -> float:
    """Forward FLOPs of a conv: ``2 * kh * kw * cin / groups * cout`` per output position."""
    return 2.0 * kh * kw * (cin // groups) * cout * positions
