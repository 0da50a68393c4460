"""Settings of the gating methods (issue 11): dual gating, CDG / SCDG, Back Razor.

They are pruning settings like :class:`~simwnw_hf.pruning.settings.SimWnWSettings`: frozen, validated in
``__post_init__`` with one-line errors, stored with :func:`~simwnw_hf.pruning.settings.pruning_record`
(``{"method": ..., **fields}``) in ``trainer_state.json``, ``summary.json`` and the Hub record. Unlike the
pair pruners they are not handed to ``configure_pair_pruning``: the adapter
:mod:`simwnw_hf.gating.training` converts the backbone and the framework runs the method's pair
encoding. Each type names its flag, the model families and the frameworks it fits, so a wrong pairing
fails in one line before any data is loaded (:func:`check_gating_fit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

GATING_METHODS = ("dualgate", "cdg", "scdg")
"""Values of ``--gating``."""


def _number(name: str, value, low: float, high: float, low_open: bool = True, high_open: bool = False) -> float:
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value}")
    return value


@dataclass(frozen=True)
class DualGateSettings:
    """VICReg dense + gated co-training (seed 002): view 1 through the gated path, view 2 dense.

    target: t_d, the kept fraction of the gated path's inference FLOPs (0.1 / 0.3 / 0.5 in the paper).
    budget_weight: lambda of ``lambda (F_real / F_full - t_d)^2`` (5).
    bound_weight: gamma of DGNet's per-layer bound loss (1).
    anneal_alpha: the bound loss tightness ``p = exp(-alpha * epoch)`` (0.02, the authors' value,
        made for hundreds of epochs: after 10 epochs p is still 0.82 and every layer is held near
        ``sqrt(t_d)`` density, above the budget).
    anneal_final: None (the authors' schedule) or the p reached at the last step of the run: the same
        exponential with alpha scaled to the planned run, ``p = anneal_final ** progress``
        (``= exp(-alpha' epoch)`` with ``alpha' = -ln(anneal_final) / planned epochs``), so a short
        run opens the bounds and can reach t_d. Replaces ``anneal_alpha`` when set.
    """

    target: float = 0.3
    budget_weight: float = 5.0
    bound_weight: float = 1.0
    anneal_alpha: float = 0.02
    anneal_final: Optional[float] = None

    method: ClassVar[str] = "dualgate"
    flag: ClassVar[str] = "--gating dualgate"
    families: ClassVar[str] = "simwnw_dualgate_resnet* models (DualGateResNet)"
    frameworks: ClassVar[Tuple[str, ...]] = ("vicreg",)
    ratios: ClassVar[Tuple[str, ...]] = ("sparsity", "forward_flops_ratio")

    def __post_init__(self):
        object.__setattr__(self, "target", _number("--gate-target", self.target, 0.0, 1.0))
        object.__setattr__(self, "budget_weight", _number("--gate-budget-weight", self.budget_weight, 0.0, math.inf, False, True))
        object.__setattr__(self, "bound_weight", _number("--gate-bound-weight", self.bound_weight, 0.0, math.inf, False, True))
        object.__setattr__(self, "anneal_alpha", _number("--gate-anneal-alpha", self.anneal_alpha, 0.0, math.inf,
                                                         False, True))
        if self.anneal_final is not None:
            object.__setattr__(self, "anneal_final", _number("--gate-anneal-final", self.anneal_final, 0.0, 1.0))

    def bound_p(self, epoch: float, progress: float) -> float:
        """The bound loss's tightness p at ``epoch`` epochs done, ``progress`` (in [0, 1]) of the run done."""
        if self.anneal_final is None:
            return math.exp(-self.anneal_alpha * float(epoch))
        return self.anneal_final ** min(max(float(progress), 0.0), 1.0)


@dataclass(frozen=True)
class CDGSettings:
    """Contrastive Dual Gating (seed 003, on CGNet) in SimCLR: branch 0 gates view 1, branch 1 view 2.

    method: ``cdg`` (a decision per output channel and position) or ``scdg`` (one per
        ``structured_group`` consecutive output channels x 1 x 1 position).
    gate_groups: p, channel groups of the base path (1/p of the input channels; even, 4).
    alpha: slope of the gate's sigmoid (2). tau_target / threshold_weight: CGNet's threshold loss
        ``weight * sum((tau - target)^2)`` (1e-4, target 1).
    """

    method: str = "cdg"
    gate_groups: int = 4
    alpha: float = 2.0
    tau_target: float = 1.0
    threshold_weight: float = 1e-4
    structured_group: int = 8

    flag: ClassVar[str] = "--gating cdg|scdg"
    families: ClassVar[str] = "CNN encoders with 3x3 convs under layer1..layer4 (timm ResNets)"
    frameworks: ClassVar[Tuple[str, ...]] = ("simclr",)
    ratios: ClassVar[Tuple[str, ...]] = ("sparsity", "forward_flops_ratio")

    def __post_init__(self):
        if self.method not in ("cdg", "scdg"):
            raise ValueError(f"CDG method must be cdg or scdg, got '{self.method}'")
        if int(self.gate_groups) != self.gate_groups or self.gate_groups < 2 or self.gate_groups % 2:
            raise ValueError(f"--gate-groups must be an even integer >= 2 (diagonal vs inverse diagonal), "
                             f"got {self.gate_groups}")
        if int(self.structured_group) != self.structured_group or self.structured_group < 1:
            raise ValueError(f"structured_group must be a positive integer, got {self.structured_group}")
        object.__setattr__(self, "gate_groups", int(self.gate_groups))
        object.__setattr__(self, "structured_group", int(self.structured_group))
        object.__setattr__(self, "alpha", _number("--gate-alpha", self.alpha, 0.0, math.inf, True, True))
        object.__setattr__(self, "tau_target", _number("tau_target", self.tau_target, -math.inf, math.inf, True, True))
        object.__setattr__(self, "threshold_weight", _number("threshold_weight", self.threshold_weight, 0.0, math.inf,
                                                             False, True))

    @property
    def group(self):
        """SCDG's channel group (None for CDG: every channel decides alone)."""
        return self.structured_group if self.method == "scdg" else None


@dataclass(frozen=True)
class BackRazorSettings:
    """Back Razor (Jiang et al. 2022): every conv of the online encoder keeps only the largest
    ``1 - rho`` of its input activations per sample for the weight gradient.

    rho: pruned fraction, in (0, 1) (0.8-0.9 in the authors' scripts).
    """

    rho: float = 0.9

    method: ClassVar[str] = "back_razor"
    flag: ClassVar[str] = "--back-razor"
    families: ClassVar[str] = "CNN encoders (models with nn.Conv2d layers)"
    frameworks: ClassVar[Tuple[str, ...]] = ("simclr", "simsiam", "byol", "moco", "vicreg", "dino")
    ratios: ClassVar[Tuple[str, ...]] = ("sparsity", "activation_saved_fraction")

    def __post_init__(self):
        object.__setattr__(self, "rho", _number("--back-razor RHO", self.rho, 0.0, 1.0, True, True))


GatingSettings = (DualGateSettings, CDGSettings, BackRazorSettings)
GATING_RECORD_METHODS = ("dualgate", "cdg", "scdg", "back_razor")


def check_gating_fit(settings, framework: str) -> None:
    """One-line ValueError unless ``framework`` is one the method is defined for."""
    if framework not in settings.frameworks:
        raise ValueError(f"{settings.flag} fits the {'/'.join(settings.frameworks)} framework "
                         f"({settings.families}); --framework is {framework}")


def gating_from_record(record: dict):
    """The gating settings of a pruning record (``record["method"]`` in :data:`GATING_RECORD_METHODS`)."""
    method = record["method"]
    cls = {"dualgate": DualGateSettings, "cdg": CDGSettings, "scdg": CDGSettings,
           "back_razor": BackRazorSettings}[method]
    names = {f for f in cls.__dataclass_fields__ if f != "method"}
    values = {k: v for k, v in record.items() if k in names}
    return cls(method=method, **values) if cls is CDGSettings else cls(**values)
