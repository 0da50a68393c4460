"""Packed token chunks (simwnw_hf/models/vit_packed.py) against timm's own Block run chunk by chunk."""

import pytest
import timm
import torch
from timm.models.vision_transformer import Block

import simwnw_hf  # noqa: F401  (registers simwnw_vit_*)
from simwnw_hf.data.geometry import make_geometry
from simwnw_hf.models.vit_packed import pack, packable, packed_block, unpack
from simwnw_hf.pruning import TokenPruningSettings
from torch.utils.data import default_collate

SIZES = [(1, 7), (3, 5), (2, 9)]   # (samples, tokens) per chunk: odd lengths, a one-sample chunk


def _close(a, b):
    """Equal to 1e-5 of the tensor's scale: packing changes only the order of float32 sums (weight
    gradients sum over the tokens of all chunks at once instead of chunk after chunk)."""
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= 1e-5 * scale, (float((a - b).abs().max()), scale)


@pytest.mark.parametrize("options", [
    dict(),
    dict(qk_norm=True, init_values=1e-2),
    dict(fused_attn=False),
    dict(train=True, qkv_bias=False, mlp_ratio=2.0),
    dict(train=True, proj_drop=1.0),                      # dropout in training, deterministic at p = 1
    dict(train=True, attn_drop=1.0, fused_attn=False),
])
def test_packed_block_is_timm_block_per_chunk_outputs_and_gradients(options):
    options = dict(options)
    fused, train = options.pop("fused_attn", True), options.pop("train", False)
    torch.manual_seed(0)
    block = Block(dim=24, num_heads=3, **options).train(train)
    block.attn.fused_attn = fused
    assert packable(block)
    chunks = [torch.randn(b, n, 24, requires_grad=True) for b, n in SIZES]
    weights = [torch.randn(b, n, 24) for b, n in SIZES]

    ref_out = [block(c) for c in chunks]
    sum((o * w).sum() for o, w in zip(ref_out, weights)).backward()
    ref_grads = {name: p.grad.clone() for name, p in block.named_parameters()}
    ref_in = [c.grad.clone() for c in chunks]
    block.zero_grad()
    for c in chunks:
        c.grad = None

    out = unpack(packed_block(block, pack(chunks)))
    sum((o * w).sum() for o, w in zip(out, weights)).backward()
    for o, r in zip(out, ref_out):
        assert o.shape == r.shape
        _close(o, r)
    for c, r in zip(chunks, ref_in):
        _close(c.grad, r)
    for name, p in block.named_parameters():
        _close(p.grad, ref_grads[name])


def test_pack_unpack_round_trip_and_what_is_not_packable():
    chunks = [torch.randn(b, n, 4) for b, n in SIZES]
    packed = pack(chunks)
    assert packed.flat.shape == (sum(b * n for b, n in SIZES), 4) and packed.sizes == tuple(SIZES)
    assert all(torch.equal(a, b) for a, b in zip(unpack(packed), chunks))
    assert not packable(Block(dim=8, num_heads=2, drop_path=0.1))          # one drop mask per sample
    assert packable(Block(dim=8, num_heads=2, drop_path=0.1).eval())       # eval: drop path is the identity
    assert not packable(torch.nn.Linear(8, 8))


def _views(model, batch=4, seed=0):
    """View 2 = view 1 shifted by one patch, with b + 1 rows of patches replaced: unequal needs."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.rand(batch, 3, 64, 64, generator=gen)
    x1, x2 = src[:, :, :32, :32].clone(), src[:, :, 8:40, 8:40].clone()
    for b in range(batch):
        x2[b, :, : 8 * (b % 3 + 1)] = torch.rand(3, 8 * (b % 3 + 1), 32, generator=gen)
    geo = lambda top, left: make_geometry(top, left, 32, 32, False, (32, 32), (64, 64))  # noqa: E731
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    return ((x1 - mean) / std, (x2 - mean) / std, default_collate([geo(0, 0)] * batch),
            default_collate([geo(8, 8)] * batch))


def test_forward_pair_packed_equals_chunk_by_chunk_with_gradients():
    """The whole SimWnW pair path, training mode: features, stats and every parameter's gradient."""
    torch.manual_seed(0)
    model = timm.create_model("simwnw_vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=3,
                              embed_dim=48, num_heads=3).train()
    model.configure_pair_pruning(TokenPruningSettings("simwnw", token_groups=4))
    x1, x2, g1, g2 = _views(model)
    plan = model.plan_pair(x1, x2, g1, g2)
    results, calls = {}, []
    handle = model.blocks[0].register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape))
    for packed in (False, True):
        model.pack_token_groups = packed
        model.zero_grad(set_to_none=True)
        calls.clear()
        f1, f2, stats = model.forward_pair(x1, x2, plan)
        (f1.pow(2).sum() - (f1 * f2).sum()).backward()
        results[packed] = (f1, f2, stats, {n: p.grad.clone() for n, p in model.named_parameters()})
        assert (len(calls) == 0) if packed else (len(calls) > 2)   # packed: the block module is never called
    handle.remove()
    (a1, a2, sa, ga), (b1, b2, sb, gb) = results[False], results[True]
    _close(b1, a1)
    _close(b2, a2)
    assert sa == sb and sa.pruned_flops < sa.dense_flops
    for name, grad in ga.items():
        _close(gb[name], grad)
