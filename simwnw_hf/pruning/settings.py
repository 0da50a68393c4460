"""One frozen, validated settings type per pruning method (issue 9, "one settings type per method").

The same object travels from the command line (:attr:`simwnw_hf.train.config.TrainConfig.pruning`)
to the model (``configure_pair_pruning(settings)``) and into ``summary.json`` and the Hub record
(:func:`pruning_record`), so the values a run used are written exactly once. Each type names the flag
it comes from and the model families that accept it, so a wrong pairing fails with one line before
any data is loaded (:func:`check_family`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Optional, Tuple, Union

PRUNING_METHODS = ("simwnw", "simprune", "evit")
"""Every pruning method a run can use: ``--simwnw`` (CNN blocks) or ``--token-pruning <method>`` (ViT)."""
TOKEN_PRUNING_METHODS = PRUNING_METHODS
"""Methods of ``--token-pruning`` (``simwnw`` there is SimWnW's token removal for ViTs, App. A.4)."""
TOKEN_SEARCH_METHODS = ("diamond", "exhaustive")


def _positive_or_none(name: str, value) -> Optional[int]:
    if value is None:
        return None
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _finite(name: str, value) -> float:
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number of dB, got {value}")
    return float(value)


SIMWNW_EXECUTORS = ("fused", "lean", "reference", "auto")
WAX_DECISIONS = ("channel", "spatial")  # = simwnw.masks.WAX_DECISIONS (held equal by a test; no torch import here)
WAX_PEAKS = ("channel", "map")


@dataclass(frozen=True)
class SimWnWSettings:
    """SimWnW block removal on CNNs (paper §4; defaults §4.1/§5: 20 dB, search window 2x block).

    block_size: input block side; None = ``default_block_size`` of the view height (5 @ 32px, 30 @ 224px).
    psnr_threshold: dB; blocks and feature-map rings at or above it are removed.
    search_window: side of the block search region in view 2; None = 2 x block size.
    max_rings: most rings waxed per conv input (``simwnw.masks``).
    wax_decision: ``spatial`` (default: a ring passes per (image, block), over all channels, so masks
        stay one position mask per image: what an executor can skip, and a step of 1.00-1.09x dense
        at 1 thread on CPU) or ``channel`` (the paper's literal reading, §4.2.2: per (image, block,
        channel); the same kept FLOPs and kNN accuracy within noise, but 1.13-1.4x the dense step:
        ``benchmarks/results/simwnw_step.md``, ``waxing_options.md``; ``simwnw.masks``).
    wax_peak: the feature-map PSNR's MAX: ``channel`` (default) or ``map`` (all channels of the map).
    executor: how the pair path runs (``models.resnet_pair.select_executor``): ``fused`` (default: the
        lean executor with kept BatchNorm as compiled kernels, ``simwnw.fused_kernels``; the first step
        compiles, and where compiling fails it warns once and runs ``lean``), ``lean`` (the reference's
        numbers with less bookkeeping, eager ops), ``reference`` (the definition, the test oracle) or
        ``auto`` (fused, plus 1x1 convs computed at kept positions only where a per-layer calibration
        on this machine measured that faster; ``simwnw.skip_exec``). It changes time, never the numbers
        (beyond float rounding).
    """

    block_size: Optional[int] = None
    psnr_threshold: float = 20.0
    search_window: Optional[int] = None
    max_rings: int = 2
    executor: str = "fused"
    wax_decision: str = "spatial"
    wax_peak: str = "channel"

    method: ClassVar[str] = "simwnw"
    flag: ClassVar[str] = "--simwnw"
    families: ClassVar[str] = "simwnw_resnet* models (SimWnWResNet)"
    ratios: ClassVar[Tuple[str, ...]] = ("removal_ratio",)   # what its PairStats measure

    def __post_init__(self):
        object.__setattr__(self, "block_size", _positive_or_none("block_size", self.block_size))
        object.__setattr__(self, "search_window", _positive_or_none("search_window", self.search_window))
        object.__setattr__(self, "psnr_threshold", _finite("psnr_threshold", self.psnr_threshold))
        if int(self.max_rings) != self.max_rings or self.max_rings < 0:
            raise ValueError(f"max_rings must be an integer >= 0, got {self.max_rings}")
        object.__setattr__(self, "max_rings", int(self.max_rings))
        if self.wax_decision not in WAX_DECISIONS:
            raise ValueError(f"unknown waxing decision {self.wax_decision!r}; choose one of {', '.join(WAX_DECISIONS)}")
        if self.wax_peak not in WAX_PEAKS:
            raise ValueError(f"unknown waxing peak {self.wax_peak!r}; choose one of {', '.join(WAX_PEAKS)}")
        if self.executor not in SIMWNW_EXECUTORS:
            raise ValueError(f"unknown SimWnW executor {self.executor!r}; choose one of {', '.join(SIMWNW_EXECUTORS)}")

    def resolve(self, image_size: int) -> "SimWnWSettings":
        """The same settings with ``None`` replaced by the values used for ``image_size`` px views."""
        from simwnw_hf.simwnw.block_matching import default_block_size

        block = self.block_size or default_block_size(int(image_size))
        return replace(self, block_size=block, search_window=self.search_window or 2 * block)


def parse_token_groups(value) -> Union[int, str]:
    """``--token-groups`` as the settings take it: ``"auto"`` or a positive integer (from text or int)."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"--token-groups must be 'auto' or a positive integer, got '{value}'")
    return int(value)


@dataclass(frozen=True)
class TokenPruningSettings:
    """Token pruning on ViTs: SimWnW token removal (App. A.4), SimPrune or the EViT baseline.

    method: ``simwnw`` (similar patch pairs dropped before ``blocks[0]``: ``psnr_threshold``,
        ``search_window`` (None = 2 x patch), ``search_method``, ``token_groups``) or ``simprune`` /
        ``evit`` (in-network, at the input of ``blocks[l]`` for ``l`` in ``prune_layers``, 0-based,
        keeping ``keep_rate`` of the tokens each time; SimPrune's schedule uses ``difficulty_span``).
    """

    method: str = "simwnw"
    keep_rate: float = 0.8
    prune_layers: Tuple[int, ...] = (4, 7, 10)
    psnr_threshold: float = 20.0
    search_window: Optional[int] = None
    difficulty_span: float = 0.5
    search_method: str = "diamond"
    token_groups: Union[int, str] = "auto"
    group_call_tokens: float = 24.0

    flag: ClassVar[str] = "--token-pruning"
    families: ClassVar[str] = "simwnw_vit_* models (SimWnWVisionTransformer)"

    def __post_init__(self):
        if self.method not in TOKEN_PRUNING_METHODS:
            raise ValueError(f"--token-pruning must be one of {', '.join(TOKEN_PRUNING_METHODS)}, got '{self.method}'")
        if not 0.0 < float(self.keep_rate) <= 1.0:
            raise ValueError(f"keep_rate must be in (0, 1], got {self.keep_rate}")
        layers = tuple(sorted({int(layer) for layer in self.prune_layers}))
        if self.method != "simwnw" and (not layers or layers[0] < 0):
            raise ValueError(f"prune_layers must be non-negative block indices, got {tuple(self.prune_layers)}")
        if not 0.0 <= float(self.difficulty_span) <= 1.0:
            raise ValueError(f"difficulty_span must be in [0, 1], got {self.difficulty_span}")
        if self.search_method not in TOKEN_SEARCH_METHODS:
            raise ValueError(f"search_method must be one of {TOKEN_SEARCH_METHODS}, got '{self.search_method}'")
        groups = self.token_groups
        integral = isinstance(groups, (int, float)) and not isinstance(groups, bool) and float(groups).is_integer()
        if groups != "auto" and not (integral and groups >= 1):
            raise ValueError(f"token_groups must be 'auto' or a positive integer, got {groups!r}")
        if not float(self.group_call_tokens) >= 0:
            raise ValueError(f"group_call_tokens must be >= 0, got {self.group_call_tokens}")
        object.__setattr__(self, "prune_layers", layers)
        object.__setattr__(self, "keep_rate", float(self.keep_rate))
        object.__setattr__(self, "psnr_threshold", _finite("psnr_threshold", self.psnr_threshold))
        object.__setattr__(self, "search_window", _positive_or_none("search_window", self.search_window))
        object.__setattr__(self, "token_groups", groups if groups == "auto" else int(groups))
        object.__setattr__(self, "group_call_tokens", float(self.group_call_tokens))

    @property
    def ratios(self) -> Tuple[str, ...]:
        """What its PairStats measure: every token pruner keeps a token fraction; SimWnW also removes pixels."""
        return ("removal_ratio", "kept_token_ratio") if self.method == "simwnw" else ("kept_token_ratio",)

    def resolve(self, patch_size: int) -> "TokenPruningSettings":
        """The same settings with the search window a ViT of ``patch_size`` px patches uses."""
        if self.method != "simwnw":
            return self
        return replace(self, search_window=self.search_window or 2 * int(patch_size))


PruningSettings = Union[SimWnWSettings, TokenPruningSettings]


def check_family(settings: PruningSettings, accepted: type, model_name: str) -> None:
    """One-line ValueError unless ``settings`` is the type a model family (``accepted``) takes."""
    if not isinstance(settings, (SimWnWSettings, TokenPruningSettings)):
        raise TypeError(f"pair-pruning settings must be SimWnWSettings or TokenPruningSettings, "
                        f"got {type(settings).__name__}")
    if not isinstance(settings, accepted):
        raise ValueError(f"{settings.flag} fits {settings.families}; '{model_name}' is not one "
                         f"(it takes {accepted.flag}, see --help)")


def model_name(model) -> str:
    """The timm name of a model (``pretrained_cfg["architecture"]``), else its class name."""
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def accepted_settings(settings: Optional[PruningSettings], legacy: dict, accepted: type,
                      model_name: str) -> PruningSettings:
    """The settings a model's ``configure_pair_pruning(settings, **legacy)`` was given, checked for its family.

    ``legacy`` keywords are the deprecated form (``configure_pair_pruning(block_size=5)``): they build an
    ``accepted`` object, with a DeprecationWarning.
    """
    if settings is None:
        if legacy:
            warnings.warn(f"configure_pair_pruning(**keywords) is deprecated; pass {accepted.__name__}(...)",
                          DeprecationWarning, stacklevel=3)
        settings = accepted(**legacy)
    elif legacy:
        raise TypeError("pass either a settings object or keywords to configure_pair_pruning, not both")
    check_family(settings, accepted, model_name)
    return settings


def pruning_record(settings: Optional[PruningSettings]) -> dict:
    """``{"method", **settings}`` as summary.json and the Hub record store it (``{"method": None}``: dense)."""
    if settings is None:
        return {"method": None}
    fields = asdict(settings)
    method = fields.pop("method", None) or settings.method
    if isinstance(fields.get("prune_layers"), tuple):
        fields["prune_layers"] = list(fields["prune_layers"])
    return {"method": method, **fields}


def settings_from_record(record: Optional[dict]) -> Optional[PruningSettings]:
    """Inverse of :func:`pruning_record` (token settings are the ones with ``keep_rate``; gating methods
    by name, :mod:`.gating`); None: dense."""
    if not record or record.get("method") is None:
        return None
    from .gating import GATING_RECORD_METHODS, gating_from_record

    if record["method"] in GATING_RECORD_METHODS:
        return gating_from_record(record)
    cls = TokenPruningSettings if "keep_rate" in record else SimWnWSettings
    names = {f for f in cls.__dataclass_fields__ if f != "method"}
    values = {k: v for k, v in record.items() if k in names}
    if "prune_layers" in values:
        values["prune_layers"] = tuple(values["prune_layers"])
    return cls(method=record["method"], **values) if cls is TokenPruningSettings else cls(**values)


def reported_ratios(record: Optional[dict]) -> Tuple[str, ...]:
    """Ratios the method of a pruning record measures (names in :data:`.stats.RATIO_NAMES`); () when dense."""
    settings = settings_from_record(record)
    return settings.ratios if settings is not None else ()
