"""What a pair forward saved (:class:`PairStats`) and what it was told to remove (:class:`PairPlan`).

Both are plain typed values so that frameworks, trainer and Hub record read fields, never method
names. Ratios are stored as sums weighted by ``pairs`` (image pairs) so that stats of several calls,
steps or processes add up exactly; the properties turn them into means.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Optional


RATIO_NAMES = ("removal_ratio", "kept_token_ratio", "sparsity", "forward_flops_ratio", "activation_saved_fraction")
"""Per-pair means a method can measure (``settings.ratios`` names the ones it does); PairStats properties."""


@dataclass(frozen=True)
class PairStats:
    """Cost and effect of pair pruning, summed over encoder calls (FLOPs: forward + backward when grad is on).

    pairs: image pairs encoded (a momentum framework counts each encoder: 2 encoders x B).
    dense_flops: backbone FLOPs of both views without pruning.
    pruned_flops: backbone FLOPs actually run with pruning (``kept_flops`` in older code).
    overhead_flops: work pruning added (block/patch matching, waxing, token selection).
    removed_fraction_sum: sum over pairs of the fraction of input pixels/tokens removed (SimWnW).
    kept_token_fraction_sum: sum over pairs of tokens x blocks run / dense tokens x blocks (ViTs).
    sparsity_sum: sum over pairs of the gating method's sparsity (dual gate: block channels off; CDG:
        conditional conv work off; Back Razor: conv input activations dropped from the backward).
    forward_dense_flops / forward_pruned_flops: forward-only (inference) FLOPs of the gated view(s),
        dense vs as run (dual gate: the gated view; CDG: both branches); 0 for the other methods.
    activation_bytes_dense / activation_bytes_kept: bytes the method's layers save for backward, dense
        vs as run (Back Razor's convs: kept values + a 1-bit mask); 0 for the other methods.
    plan_seconds: wall seconds the step spent making its plan (block/patch matching); 0 when the
        DataLoader made it (``--match-in loader``) or nothing was planned. The FLOPs say what matching
        costs in work; this says what it cost the step in time.
    """

    pairs: float = 0.0
    dense_flops: float = 0.0
    pruned_flops: float = 0.0
    overhead_flops: float = 0.0
    removed_fraction_sum: float = 0.0
    kept_token_fraction_sum: float = 0.0
    sparsity_sum: float = 0.0
    forward_dense_flops: float = 0.0
    forward_pruned_flops: float = 0.0
    activation_bytes_dense: float = 0.0
    activation_bytes_kept: float = 0.0
    plan_seconds: float = 0.0

    def __add__(self, other: "PairStats") -> "PairStats":
        if not isinstance(other, PairStats):
            return NotImplemented
        return PairStats(*(float(getattr(self, f.name)) + float(getattr(other, f.name)) for f in fields(self)))

    @staticmethod
    def sum(items: Iterable["PairStats"]) -> "PairStats":
        total = PairStats()
        for item in items:
            total = total + item
        return total

    def _per_pair(self, total: float) -> float:
        """A pair-weighted sum as a mean over pairs; 0 when no pair was encoded."""
        return total / self.pairs if self.pairs else 0.0

    @property
    def pruned(self) -> bool:
        """True when a pruning-aware pair forward ran (dense steps leave the stats empty)."""
        return self.pairs > 0

    @property
    def removal_ratio(self) -> float:
        """Mean fraction of input removed per pair (0 when nothing was pruned)."""
        return self._per_pair(self.removed_fraction_sum)

    @property
    def kept_token_ratio(self) -> float:
        """Mean fraction of token-block work kept per pair (0 when nothing was pruned)."""
        return self._per_pair(self.kept_token_fraction_sum)

    @property
    def sparsity(self) -> float:
        """Mean sparsity of a gating method per pair (0 when nothing was gated)."""
        return self._per_pair(self.sparsity_sum)

    @property
    def forward_flops_ratio(self) -> float:
        """Inference FLOPs of the gated view(s) as run / dense; 1.0 when no gated forward ran."""
        return self.forward_pruned_flops / self.forward_dense_flops if self.forward_dense_flops else 1.0

    @property
    def activation_saved_fraction(self) -> float:
        """Share of the method's saved-for-backward activation bytes it did not keep; 0 when none."""
        return 1.0 - self.activation_bytes_kept / self.activation_bytes_dense if self.activation_bytes_dense else 0.0

    @property
    def flops_ratio(self) -> float:
        """(pruned + overhead) / dense FLOPs of the pair forwards; 1.0 when nothing ran."""
        return (self.pruned_flops + self.overhead_flops) / self.dense_flops if self.dense_flops else 1.0

    def as_dict(self) -> dict:
        """Field values plus the ratio properties, as floats."""
        out = {f.name: float(getattr(self, f.name)) for f in fields(self)}
        out.update({name: getattr(self, name) for name in RATIO_NAMES}, flops_ratio=self.flops_ratio)
        return out


@dataclass(frozen=True)
class PairPlan:
    """What an encoder will remove from a pair of views, decided once per step (issue 9, "a plan, then a forward").

    method: the pruning method that made it (``simwnw``, ``simprune``, ``evit``).
    settings: the resolved settings object it was made with.
    match: the decision: a ``BlockMatch`` (SimWnW ResNet), a ``TokenMatch`` (SimWnW ViT tokens), or
        None for in-network pruners (SimPrune, EViT decide inside the blocks from the activations).
    overhead_flops: work of making the plan (matching); the framework counts it once per step, however
        many encoders (online, momentum) run the plan.
    pairs: number of image pairs the plan is for.
    seconds: wall seconds the training step spent making it (set by :func:`simwnw_hf.ssl.pair.plan_pair`);
        0 for a plan the DataLoader made, whose cost is the worker's (``LoaderPlan.seconds``), not the step's.
    """

    method: str
    settings: Any
    match: Optional[Any]
    overhead_flops: float
    pairs: int
    seconds: float = 0.0

    @property
    def in_network(self) -> bool:
        return self.match is None

    @property
    def stats(self) -> PairStats:
        """The plan's own cost, to be added once to the stats of the step."""
        return PairStats(overhead_flops=float(self.overhead_flops), plan_seconds=float(self.seconds))
