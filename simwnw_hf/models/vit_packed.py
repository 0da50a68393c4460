"""Run timm ViT blocks over token chunks of different lengths as one packed (tokens, dim) tensor.

Why: SimWnW token removal runs each view as several chunks of equal length (:mod:`simwnw_hf.tokens.simwnw`).
Run chunk by chunk, every chunk pays each block's per-call costs (dispatch, autograd nodes, small
kernels), and those do not shrink with the tokens removed. Only attention mixes tokens of one sample;
LayerNorm, the qkv / proj / MLP linears, LayerScale and the residual adds act on each token alone. So
the chunks of a view are packed into one (tokens, dim) tensor that those layers run on once, and
attention alone runs per chunk on its (b, n) slice. ViT-Ti, batch 8, 224 px
(``benchmarks/results/token_pruning_step.md``): the same SimWnW chunks took 0.946 of the dense step one
call each and 0.908 packed at 1 CPU thread, 1.012 and 0.920 at 2 threads.

:func:`packed_block` computes what timm's ``Block.forward`` computes on each chunk (the reference, timm's
own code: ``tests/test_vit_packed.py`` holds them equal, outputs and gradients); :func:`packable` says
for which blocks that holds: timm's ``Block`` with timm's ``Attention`` (no gate) and no stochastic depth
(in training, drop path draws one mask per sample, which a packed tensor no longer has).
"""

from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block

__all__ = ["PackedTokens", "pack", "unpack", "packable", "packed_block"]


class PackedTokens(NamedTuple):
    """Chunks ``(b_i, n_i, D)`` stored row after row as ``flat`` (sum b_i * n_i, D)."""

    flat: torch.Tensor
    sizes: Tuple[Tuple[int, int], ...]   # (b_i, n_i) per chunk, in order


def pack(chunks: Sequence[torch.Tensor]) -> PackedTokens:
    """One (tokens, D) tensor of the chunks (B_i, N_i, D), in order."""
    sizes = tuple((int(t.shape[0]), int(t.shape[1])) for t in chunks)
    return PackedTokens(torch.cat([t.reshape(-1, t.shape[-1]) for t in chunks]), sizes)


def unpack(packed: PackedTokens) -> List[torch.Tensor]:
    """The chunks back, (b_i, n_i, D) each (views of ``flat``, split as one autograd node)."""
    parts = packed.flat.split([b * n for b, n in packed.sizes])
    return [part.view(b, n, -1) for part, (b, n) in zip(parts, packed.sizes)]


def _no_drop_path(module: nn.Module) -> bool:
    """Identity, a zero rate, or not training (timm's DropPath is the identity in eval mode)."""
    return isinstance(module, nn.Identity) or not module.training or float(getattr(module, "drop_prob", 1.0)) == 0.0


def packable(block: nn.Module) -> bool:
    """Whether :func:`packed_block` computes ``block`` exactly: timm ``Block`` + ``Attention`` (no gate),
    no stochastic depth in training. Assumed, not checked: its norm and MLP layers act on each token
    alone (every ``norm_layer`` / ``mlp_layer`` timm builds a ``Block`` with does)."""
    attn = getattr(block, "attn", None)
    return (type(block) is Block and type(attn) is Attention and attn.gate is None
            and _no_drop_path(block.drop_path1) and _no_drop_path(block.drop_path2))


def _attention_core(attn: Attention, qkv: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """timm ``Attention.forward`` from its qkv projection on to before ``norm``/``proj``, for one chunk."""
    q, k, v = qkv.view(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        q = q * attn.scale
        weights = attn.attn_drop((q @ k.transpose(-2, -1)).softmax(dim=-1))
        x = weights @ v
    return x.transpose(1, 2).reshape(b * n, attn.attn_dim)


def packed_block(block: Block, packed: PackedTokens) -> PackedTokens:
    """``block`` applied to every chunk of ``packed`` (timm ``Block.forward``), per-token layers run once."""
    attn = block.attn
    qkv = attn.qkv(block.norm1(packed.flat))                                       # (T, 3 A)
    parts = qkv.split([b * n for b, n in packed.sizes])
    mixed = [_attention_core(attn, part, b, n) for part, (b, n) in zip(parts, packed.sizes)]
    mixed = mixed[0] if len(mixed) == 1 else torch.cat(mixed)                      # (T, A)
    x = packed.flat + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(attn.norm(mixed)))))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return PackedTokens(x, packed.sizes)
