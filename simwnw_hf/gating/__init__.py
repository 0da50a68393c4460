"""Gating mechanisms of the other seed systems: DGNet dual gating (VICReg dense + gated co-training),
Contrastive Dual Gating (CDG / SCDG, on CGNet), and Back Razor (sparse activations for grad-weight).

Each method: a builder/converter, a ``GatingStats`` report (``stats``), its extra loss terms as pure
functions. See docs/GATING.md for every choice the sources leave open.
"""
from .stats import GatingStats  # noqa: F401
