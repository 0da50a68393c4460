"""EViT token reorganisation (Liang et al., ICLR 2022, "Not All Patches are What You Need"), the
single-branch baseline SimPrune and SimWnW (App. A.4, Table 6) compare against.

At a pruning layer, the attention of the class token to each patch token (mean over heads) ranks the
tokens; the top ``ceil(keep_rate * n)`` are kept and the inattentive rest is fused into one token
``sum_i a_i x_i`` (EViT eq. 3: attention-weighted, not renormalised), appended after the kept ones.
A fused token of an earlier layer is an ordinary token for later layers, as in EViT.

Where we differ from EViT, and why:
* The cut sits at the *input* of ``blocks[l]`` and the class attention is that block's own
  (``norm1`` -> ``qkv`` -> softmax of the class row), so timm's ``Block`` runs untouched; EViT cuts
  inside the layer between attention and MLP. With fused attention on, the block does not expose its
  weights, so the class row is recomputed here from the qkv weights: the query of one token and the
  keys of all (``2 B D^2 + 2 B N D^2 + 2 B N D`` FLOPs, forward only, reported as overhead).
* Selection runs without gradient, so the fusion weights ``a_i`` are constants in the backward pass
  (EViT back-propagates through them); gradient still flows to every fused token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import PairTokenPruner, PruneResult
from .gather import complement_indices, keep_tokens

__all__ = ["class_attention", "class_attention_flops", "evit_keep_count", "evit_select", "evit_reorganize", "EViT"]


@torch.no_grad()
def class_attention(x: torch.Tensor, norm: nn.Module, attn: nn.Module, num_prefix_tokens: int) -> torch.Tensor:
    """Softmax attention of the class token (first token) to each patch token, mean over heads.

    Exactly the class row of ``softmax(q k^T / sqrt(d))`` that ``attn(norm(x))`` computes inside.
    x: (B, P + n, D) -> (B, n)
    """
    y = norm(x.detach())                                                          # (B, N, D)
    a, heads, hd = attn.attn_dim, attn.num_heads, attn.head_dim
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(y[:, :1], w[:a], None if b is None else b[:a])                   # (B, 1, a)
    k = F.linear(y, w[a:2 * a], None if b is None else b[a:2 * a])                # (B, N, a)
    q = attn.q_norm(q.view(y.shape[0], 1, heads, hd).transpose(1, 2))             # (B, h, 1, hd)
    k = attn.k_norm(k.view(y.shape[0], -1, heads, hd).transpose(1, 2))            # (B, h, N, hd)
    scores = torch.matmul(q * attn.scale, k.transpose(-2, -1))                    # (B, h, 1, N)
    return scores.softmax(dim=-1).mean(dim=1)[:, 0, num_prefix_tokens:]           # (B, n)


def class_attention_flops(batch: int, seq: int, dim: int, attn_dim: int) -> float:
    """Matmul FLOPs of :func:`class_attention`: one query row, all keys, one score row."""
    return 2.0 * batch * dim * attn_dim + 2.0 * batch * seq * dim * attn_dim + 2.0 * batch * seq * attn_dim


def evit_keep_count(n: int, keep_rate: float) -> int:
    """Tokens kept out of ``n`` (EViT: ``ceil(keep_rate * n)``)."""
    return min(n, max(1, math.ceil(keep_rate * n)))


def evit_select(cls_attn: torch.Tensor, keep_rate: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attentive (kept) and inattentive (fused) patch-token indices, each ascending.

    cls_attn: (B, n) -> keep (B, k), fuse (B, n - k)
    """
    n = cls_attn.shape[1]
    k = evit_keep_count(n, keep_rate)
    top = cls_attn.topk(k, dim=1, sorted=False).indices                           # (B, k)
    keep = top.sort(dim=1).values
    return keep, complement_indices(keep, n)


def evit_reorganize(x: torch.Tensor, cls_attn: torch.Tensor, keep_rate: float,
                    num_prefix_tokens: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the attentive tokens, fuse the rest into one token appended at the end (EViT eq. 3).

    x: (B, P + n, D), cls_attn: (B, n) -> (B, P + k + 1, D) (no fused token when nothing is pruned),
    and the kept / fused patch indices.
    """
    keep, fuse = evit_select(cls_attn, keep_rate)
    out = keep_tokens(x, keep, num_prefix_tokens)                                 # (B, P + k, D)
    if fuse.shape[1] == 0:
        return out, keep, fuse
    patches = x[:, num_prefix_tokens:]
    dropped = patches.gather(1, fuse.unsqueeze(-1).expand(-1, -1, x.shape[-1]))   # (B, n - k, D)
    weight = cls_attn.gather(1, fuse).to(x.dtype)                                 # (B, n - k)
    fused = (dropped * weight.unsqueeze(-1)).sum(dim=1, keepdim=True)             # (B, 1, D)
    return torch.cat([out, fused], dim=1), keep, fuse


@dataclass(frozen=True)
class EViT(PairTokenPruner):
    """EViT at the input of ``blocks[l]`` for ``l`` in ``prune_layers``; each branch on its own."""

    prune_layers: Tuple[int, ...] = (4, 7, 10)
    keep_rate: float = 0.8

    name = "evit"

    def at_block(self, block, t1, t2, progress, num_prefix_tokens) -> PruneResult:
        overhead = 0.0
        out = []
        for t in (t1, t2):
            if t.shape[1] - num_prefix_tokens < 2:   # nothing left to reorganise
                out.append(t)
                continue
            cls_attn = class_attention(t, block.norm1, block.attn, num_prefix_tokens)
            overhead += class_attention_flops(t.shape[0], t.shape[1], t.shape[2], block.attn.attn_dim)
            pruned, keep, fuse = evit_reorganize(t, cls_attn, self.keep_rate, num_prefix_tokens)
            # fusion: a multiply and an add per element of the fused tokens (forward)
            overhead += 2.0 * fuse.numel() * t.shape[2]
            out.append(pruned)
        return out[0], out[1], {"overhead_flops": overhead}
