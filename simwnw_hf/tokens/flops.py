"""Analytic FLOPs of a timm ViT at the sequence lengths that were actually run.

Token pruning makes the sequence length change from block to block, so the FLOPs of a pruned step
cannot be measured once and reused like a dense step. A ViT block's cost is a closed form in its
sequence length ``N`` (FLOPs, not MACs; one multiply-add = 2 FLOPs):

* ``qkv`` / ``proj`` / ``fc1`` / ``fc2`` linears: ``2 * B * N * in * out`` each;
* attention (``Q K^T`` and ``A V``): ``4 * B * N^2 * attn_dim``.

Backward costs 2x the forward for the linears (input and weight gradients) and 2.5x for attention
(the flash/efficient kernels recompute ``Q K^T``), as ``torch.utils.flop_counter`` counts them. The
patch embedding's input (the image) needs no gradient, so its backward is the weight gradient only
(1x). LayerNorm, GELU, softmax, residual adds and gathers are not counted, exactly like
``FlopCounterMode``, which counts matmuls, convolutions and attention only.

:func:`flop_counter` returns a ``FlopCounterMode`` that also knows the CPU attention kernel
(``_scaled_dot_product_flash_attention_for_cpu``); stock ``FlopCounterMode`` counts 0 FLOPs for
attention on CPU in torch 2.14.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Tuple

import torch
import torch.nn as nn
from torch.utils import flop_counter as _fc

__all__ = ["ViTFlops", "vit_flops", "flop_counter", "LINEAR_BACKWARD", "ATTENTION_BACKWARD"]

LINEAR_BACKWARD = 2.0      # grad wrt input + grad wrt weight, each as costly as the forward
ATTENTION_BACKWARD = 2.5   # FlopCounterMode's sdpa backward: 5 bmm of the size of the 2 forward ones


@dataclass(frozen=True)
class ViTFlops:
    """Per-token sizes of a timm ``VisionTransformer`` needed for its FLOPs."""

    dim: int              # embedding width D
    attn_dim: int         # heads * head_dim (== D for timm's standard blocks)
    mlp_hidden: int       # fc1 width
    depth: int
    patch_flops: float    # forward FLOPs of the patch embedding per patch: 2 * C * p * p * D
    num_patches: int
    num_prefix_tokens: int

    def block_forward(self, batch: int, seq: int) -> Tuple[float, float]:
        """(linear, attention) forward FLOPs of one block on ``batch`` sequences of ``seq`` tokens."""
        d, a, h = self.dim, self.attn_dim, self.mlp_hidden
        linear = 2.0 * batch * seq * (d * 3 * a + a * d + d * h + h * d)
        attention = 4.0 * batch * seq * seq * a
        return linear, attention

    def blocks(self, batch: int, seqs: Iterable[int], grad: bool) -> float:
        """FLOPs of running the blocks with sequence length ``seqs[i]`` at block ``i``."""
        total = 0.0
        for seq in seqs:
            linear, attention = self.block_forward(batch, seq)
            if grad:
                linear, attention = linear * (1 + LINEAR_BACKWARD), attention * (1 + ATTENTION_BACKWARD)
            total += linear + attention
        return total

    def embed(self, batch: int, grad: bool) -> float:
        """Patch embedding of every patch (it runs before any token is dropped); weight grad only."""
        forward = batch * self.num_patches * self.patch_flops
        return forward * (2.0 if grad else 1.0)

    def dense(self, batch: int, grad: bool) -> float:
        """FLOPs of one view through the dense encoder."""
        seq = self.num_patches + self.num_prefix_tokens
        return self.embed(batch, grad) + self.blocks(batch, [seq] * self.depth, grad)


def vit_flops(model: nn.Module) -> ViTFlops:
    """Read the sizes off a timm ViT; refuse layouts the closed form does not describe."""
    blocks = list(model.blocks)
    if not blocks:
        raise ValueError("the ViT has no blocks")
    for i, blk in enumerate(blocks):
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if not (isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(mlp, "fc1", None), nn.Linear)
                and isinstance(getattr(mlp, "fc2", None), nn.Linear)):
            raise ValueError(f"blocks[{i}] is not a standard timm Block (Attention with fused qkv + Mlp fc1/fc2); "
                             "token-pruning FLOPs are only defined for that layout")
        if getattr(attn, "gate", None) is not None:
            raise ValueError(f"blocks[{i}].attn is gated; token-pruning FLOPs do not cover gated attention")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("global_pool='map'/'prr' adds an attention pool the token-pruning FLOPs do not cover")
    blk = blocks[0]
    proj = model.patch_embed.proj
    if not isinstance(proj, nn.Conv2d):
        raise ValueError("patch_embed.proj must be a Conv2d")
    kh, kw = proj.kernel_size
    patch_flops = 2.0 * proj.in_channels * kh * kw * proj.out_channels / proj.groups
    return ViTFlops(dim=blk.attn.qkv.in_features, attn_dim=blk.attn.qkv.out_features // 3,
                    mlp_hidden=blk.mlp.fc1.out_features, depth=len(blocks), patch_flops=patch_flops,
                    num_patches=model.patch_embed.num_patches, num_prefix_tokens=model.num_prefix_tokens)


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter(display: bool = False) -> _fc.FlopCounterMode:
    """``FlopCounterMode`` that also counts the CPU fused-attention kernel (forward and backward)."""
    aten = torch.ops.aten
    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_flop),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward_flop)):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = formula
    return _fc.FlopCounterMode(display=display, custom_mapping=mapping)
