"""Token gathering shared by every pruner: keep chosen patch tokens, never the prefix (cls/reg) tokens.

Tokens are gathered *after* the positional embedding was added, so each kept token carries the
position of the patch it came from (the sequence shrinks, positions follow the tokens; SimWnW App. A.4).
All samples of a batch keep the same number of tokens, so the result is a dense (B, P + k, D) tensor:
no padding, no attention mask, and timm's ``Block`` runs on it unchanged.
"""

from __future__ import annotations

import torch

__all__ = ["keep_tokens", "complement_indices", "indices_from_mask"]


def keep_tokens(x: torch.Tensor, keep: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Prefix tokens followed by the patch tokens ``keep`` (indices among the patch tokens).

    x: (B, P + n, D); keep: (B, k) long in ``[0, n)``  ->  (B, P + k, D)
    """
    if keep.dim() != 2 or keep.shape[0] != x.shape[0]:
        raise ValueError(f"keep must be (B, k) with B = {x.shape[0]}, got {tuple(keep.shape)}")
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    kept = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))   # (B, k, D)
    return torch.cat([prefix, kept], dim=1)


def indices_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Column indices of the True entries of each row, ascending; every row must hold as many.

    mask: (B, n) bool  ->  (B, k) long
    """
    counts = mask.sum(dim=1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(f"every sample must keep the same number of tokens, got counts {counts.tolist()}")
    k = int(counts[0]) if counts.numel() else 0
    return mask.nonzero()[:, 1].view(mask.shape[0], k)                          # row-major: ascending


def complement_indices(chosen: torch.Tensor, n: int) -> torch.Tensor:
    """Indices in ``[0, n)`` not in ``chosen`` (B, r), ascending: (B, n - r)."""
    mask = torch.ones(chosen.shape[0], n, dtype=torch.bool, device=chosen.device)
    mask.scatter_(1, chosen, False)
    return indices_from_mask(mask)
