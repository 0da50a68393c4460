"""Gating mechanisms of the other seed systems: DGNet dual gating (VICReg dense + gated co-training),
Contrastive Dual Gating (CDG / SCDG, on CGNet), and Back Razor (sparse activations for grad-weight).

Each method: a builder/converter, a ``GatingStats`` report, its extra loss terms as pure functions.
docs/GATING.md lists every choice the sources leave open and the integration API.
"""
from .stats import GatingStats  # noqa: F401
from .backrazor import BackRazorConv2d, back_razor_stats, convert_back_razor, saved_tensor_bytes  # noqa: F401
from .cdg import CDGConv2d, cdg_branch, cdg_stats, convert_cdg, forward_branch, threshold_loss  # noqa: F401
from .dualgate import anneal_p, bound_loss, budget_loss, sample_gate  # noqa: F401
from .dualgate_stats import dualgate_losses, dualgate_stats, pair_step_stats  # noqa: F401
