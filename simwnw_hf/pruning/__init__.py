"""The pair-pruning contract between SSL frameworks, trainer, Hub record and pruning-aware encoders.

Three typed objects, no model code: the *settings* of a pruning method (:mod:`.settings`, validated
once, accepted by the model, stored in the record), the *plan* of what to remove from a pair of views
(:class:`PairPlan`, computed once per step), and the *stats* of what a pair forward saved
(:class:`PairStats`). docs/DESIGN.md, "Pair pruning contract", describes how they flow.
"""

from .settings import (PRUNING_METHODS, TOKEN_PRUNING_METHODS, PruningSettings, SimWnWSettings,  # noqa: F401
                       TokenPruningSettings, accepted_settings, check_family, model_name, pruning_record, reported_ratios,
                       settings_from_record)
from .stats import RATIO_NAMES, PairPlan, PairStats  # noqa: F401
from .gating import (GATING_METHODS, BackRazorSettings, CDGSettings, DualGateSettings,  # noqa: F401
                     GatingSettings, check_gating_fit)

__all__ = ["PRUNING_METHODS", "TOKEN_PRUNING_METHODS", "PruningSettings", "SimWnWSettings",
           "TokenPruningSettings", "accepted_settings", "check_family", "model_name", "pruning_record", "reported_ratios", "settings_from_record", "PairPlan", "PairStats", "RATIO_NAMES", "GATING_METHODS",
           "BackRazorSettings", "CDGSettings", "DualGateSettings", "GatingSettings", "check_gating_fit"]
