"""SimWnW pair path of timm ResNets: walks stem, stages and blocks, applying the masked mechanisms.

The mechanisms (masked conv / BatchNorm / max-pool, waning and waxing) live in ``simwnw_hf.simwnw``
and know nothing of ResNets; this adapter knows the timm ``ResNet`` / ``BasicBlock`` /
``Bottleneck`` layout and where SimWnW waxes (semantics in ``simwnw.masked_exec``'s docstring).

The executors share this walker and compute the same numbers (``tests/test_lean_exec.py``):

* ``reference``: ``masked_exec`` mechanisms, per-channel masks, every step spelled out. The
  definition and the test oracle.
* ``lean``: ``lean_exec`` mechanisms (compact masks, no re-zeroing of what is zero by
  construction, one-reduction BatchNorm with a fused ReLU), eager ops.
* ``fused``: ``lean`` with kept BatchNorm as compiled kernels (``fused_kernels``; eager where
  compiling fails).
* ``auto``: ``fused`` plus ``skip_exec``: 1x1 convs are computed at kept positions only where a
  per-layer calibration on this machine measured that faster than the dense conv.

All have the signature ``executor(model, xs, removed, expand) -> (features, masks, trace)``;
:func:`select_executor` maps a name (``reference``, ``lean``, ``fused``, ``auto``) to one. Masks returned by
the lean executor may be ``(B, 1, H, W)`` where the reference's are ``(B, C, H, W)`` with equal
channels; expanded, they are identical.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from simwnw_hf.simwnw.lean_exec import (lean_batch_norm, lean_conv2d, wax_compact, zero_by_mask,
                                        zero_grown_relu_output_, zeroable_relu)
from simwnw_hf.simwnw.skip_exec import default_cost_model
from simwnw_hf.simwnw.masks import wane, wax
from simwnw_hf.simwnw.masked_exec import (
    ConvRecord, Expand, MaskRecord, WaxRecord, masked_batch_norm, masked_conv2d, masked_max_pool2d, zero_removed,
)

__all__ = ["masked_forward_features", "lean_forward_features", "fused_forward_features", "auto_forward_features",
           "select_executor",
           "wax_for_executor", "EXECUTORS",
           "stage_masks"]


class _Ops:
    """Per-executor layer operations on the lists of both views (``hs`` tensors, ``rs`` masks)."""

    def __init__(self, lean: bool, cost_model=None, fused: bool = False):
        self.lean = lean
        self.cost_model = cost_model  # skip_exec.SkipCostModel: skip 1x1 convs where measured faster (auto)
        self.fused = fused  # kept BatchNorm by compiled kernels (fused_kernels)

    def conv(self, name, conv, hs, rs, trace, image_input=False):
        if not isinstance(conv, nn.Conv2d):
            raise NotImplementedError(f"{name}: masked execution needs an nn.Conv2d, got {type(conv).__name__}")
        ys, outs, active, kept, dense, input_grad = [], [], 0, 0, 0, False
        for h, r in zip(hs, rs):
            if self.lean:
                y, r_out, a = lean_conv2d(conv, h, r, zero_input=image_input, cost_model=self.cost_model)
            else:
                y, r_out, a = masked_conv2d(conv, h, r)
            ys.append(y)
            outs.append(r_out)
            active = active + a
            kept = kept + (~r_out).sum()
            dense += h.shape[0] * h.shape[1] * y.shape[2] * y.shape[3]
            input_grad |= torch.is_grad_enabled() and h.requires_grad
        trace.append(ConvRecord(
            name=name, kernel_size=tuple(conv.kernel_size), in_channels=conv.in_channels,
            out_channels=conv.out_channels, groups=conv.groups, dense_triples=dense, active_triples=active,
            input_grad=input_grad, weight_grad=torch.is_grad_enabled() and conv.weight.requires_grad,
            kept_positions=kept))
        return ys, outs

    def bn_act(self, bn, act, hs, rs, name):
        """BatchNorm then ``act`` (None: no activation); removed stays zero."""
        if not isinstance(bn, nn.BatchNorm2d):
            raise NotImplementedError(f"{name}: masked execution needs nn.BatchNorm2d, got {type(bn).__name__}")
        if self.lean and (act is None or isinstance(act, nn.ReLU)):
            return [lean_batch_norm(bn, h, r, relu=act is not None, fused=self.fused) for h, r in zip(hs, rs)]
        ys = [masked_batch_norm(bn, h, r) for h, r in zip(hs, rs)]
        return ys if act is None else self.act(act, ys, rs)

    def zeroable(self, act) -> bool:
        """Whether ``bn_act`` / ``add_act`` with ``act`` give outputs ``zero_relu_output_`` may zero in place."""
        return self.lean and isinstance(act, nn.ReLU)

    def add_act(self, act, hs, others, rs):
        """``act(h + o)`` per view (a block's residual)."""
        if self.zeroable(act):
            # h: the block's last lean BatchNorm output (saves its input, not h): summed in place
            return [zeroable_relu(h, o, in_place=True) for h, o in zip(hs, others)]
        return self.act(act, [h + o for h, o in zip(hs, others)], rs)

    def act(self, act, hs, rs):
        if isinstance(act, nn.ReLU):  # relu(0) = 0: removed positions stay zero
            return [act(h) for h in hs]
        return [zero_removed(act(h), r) for h, r in zip(hs, rs)]  # act(0) may be non-zero

    def max_pool(self, pool, hs, rs):
        if not self.lean:
            out = [masked_max_pool2d(pool, h, r) for h, r in zip(hs, rs)]
            return [o[0] for o in out], [o[1] for o in out]
        if pool.ceil_mode or pool.return_indices:
            raise NotImplementedError("masked max-pool supports ceil_mode=False, return_indices=False")
        # lean: a fully removed window holds only zeros, so its max is already 0 (no re-zeroing)
        return [pool(h) for h in hs], [wane(r, pool.kernel_size, pool.stride, pool.padding, pool.dilation) for r in rs]

    def wax(self, name, hs, rs, trace, expand: Optional[Expand], nonneg: bool = False, zeroable: bool = False):
        """Grow both views' masks at a waxing point and zero the newly removed activations.

        ``nonneg``: the maps are ReLU outputs, so fast waxing may skip the peak's minimum.
        ``zeroable``: they are fresh outputs of a lean ReLU (``_Ops.zeroable``), zeroed in place.
        """
        if expand is None or len(hs) != 2:
            return hs, rs
        new, overhead = expand(name, list(hs), list(rs), nonneg=nonneg)
        trace.append(WaxRecord(name, overhead))
        trace.append(MaskRecord(f"{name}:waxed", new[0], new[1]))
        if self.lean:  # zero only where the mask grew (same tensor back: nothing was added)
            if zeroable:  # fresh lean ReLU outputs: already 0 at r, written at the grown positions only
                return [h if n is r else zero_grown_relu_output_(h, r, n) for h, r, n in zip(hs, rs, new)], list(new)
            return [h if n is r else zero_by_mask(h, n) for h, r, n in zip(hs, rs, new)], list(new)
        return [zero_removed(h, n) for h, n in zip(hs, new)], list(new)


def _require_identity(block: nn.Module, name: str):
    for attr in ("drop_block", "aa", "se", "drop_path"):
        mod = getattr(block, attr, None)
        if mod is not None and not isinstance(mod, nn.Identity):
            raise NotImplementedError(f"{name}.{attr} is {type(mod).__name__}; masked execution supports plain "
                                      "ResNet blocks (no SE, anti-aliasing, DropBlock or DropPath)")


def _shortcut(ops: _Ops, block, hs, rs, trace, name):
    ds = block.downsample
    if ds is None:
        return hs, rs
    mods = [m for m in ds if not isinstance(m, nn.Identity)] if isinstance(ds, nn.Sequential) else [ds]
    if len(mods) != 2 or not isinstance(mods[0], nn.Conv2d) or not isinstance(mods[1], nn.BatchNorm2d):
        raise NotImplementedError(f"{name}.downsample must be conv + BatchNorm (timm downsample_conv)")
    s, rs_s = ops.conv(f"{name}.downsample.0", mods[0], hs, rs, trace)
    return ops.bn_act(mods[1], None, s, rs_s, name), rs_s


def _residual(ops: _Ops, block, branch, r_branch, hs, rs, trace, name, act):
    short, r_short = _shortcut(ops, block, hs, rs, trace, name)
    r_out = [rb & rsc for rb, rsc in zip(r_branch, r_short)]  # removed only where both operands are
    return ops.add_act(act, branch, short, r_out), r_out


def _relu(act) -> bool:
    return isinstance(act, nn.ReLU)


def _basic_block(ops: _Ops, name: str, blk: BasicBlock, hs, rs, trace, expand, nonneg_in=False,
                 zeroable_in=False):
    _require_identity(blk, name)
    # block input: feeds conv1 and the shortcut
    hs, rs = ops.wax(f"{name}.conv1", hs, rs, trace, expand, nonneg_in, zeroable_in)
    a, ra = ops.conv(f"{name}.conv1", blk.conv1, hs, rs, trace)
    a = ops.bn_act(blk.bn1, blk.act1, a, ra, name)
    a, ra = ops.wax(f"{name}.conv2", a, ra, trace, expand, _relu(blk.act1), ops.zeroable(blk.act1))
    b, rb = ops.conv(f"{name}.conv2", blk.conv2, a, ra, trace)
    b = ops.bn_act(blk.bn2, None, b, rb, name)
    return _residual(ops, blk, b, rb, hs, rs, trace, name, blk.act2)


def _bottleneck(ops: _Ops, name: str, blk: Bottleneck, hs, rs, trace, expand, nonneg_in=False,
                zeroable_in=False):
    _require_identity(blk, name)
    # block input: feeds conv1 and the shortcut
    hs, rs = ops.wax(f"{name}.conv1", hs, rs, trace, expand, nonneg_in, zeroable_in)
    a, ra = ops.conv(f"{name}.conv1", blk.conv1, hs, rs, trace)
    a = ops.bn_act(blk.bn1, blk.act1, a, ra, name)
    a, ra = ops.wax(f"{name}.conv2", a, ra, trace, expand, _relu(blk.act1), ops.zeroable(blk.act1))
    b, rb = ops.conv(f"{name}.conv2", blk.conv2, a, ra, trace)
    b = ops.bn_act(blk.bn2, blk.act2, b, rb, name)
    c, rc = ops.conv(f"{name}.conv3", blk.conv3, b, rb, trace)
    c = ops.bn_act(blk.bn3, None, c, rc, name)
    return _residual(ops, blk, c, rc, hs, rs, trace, name, blk.act3)


def _check_views(model, xs, removed):
    if len(xs) != len(removed) or len(xs) not in (1, 2):
        raise ValueError(f"need one or two views with one mask each, got {len(xs)} views, {len(removed)} masks")
    for i, (x, r) in enumerate(zip(xs, removed)):
        if r.dim() == 3:
            r = r[:, None]
        if r.dtype != torch.bool or r.shape[0] != x.shape[0] or r.shape[2:] != x.shape[2:]:
            raise ValueError(f"view {i}: mask {tuple(r.shape)} {r.dtype} does not fit input {tuple(x.shape)}")
    if getattr(model, "grad_checkpointing", False) and torch.is_grad_enabled():
        raise ValueError("gradient checkpointing is not supported on the SimWnW pair path (recomputing a block "
                         "would update BatchNorm running statistics twice); call "
                         "model.set_grad_checkpointing(False) or train without SimWnW")


def _walk(ops: _Ops, model: nn.Module, xs: Sequence[torch.Tensor], removed: Sequence[torch.Tensor],
          expand: Optional[Expand] = None):
    _check_views(model, xs, removed)
    rs = [(r[:, None] if r.dim() == 3 else r) for r in removed]
    trace: list = [MaskRecord("input", rs[0], rs[1] if len(rs) > 1 else None)]
    hs, rs = ops.conv("conv1", model.conv1, list(xs), rs, trace, image_input=True)  # block-matched image level
    hs = ops.bn_act(model.bn1, model.act1, hs, rs, "bn1")
    zeroable = ops.zeroable(model.act1)  # the stem's ReLU output, unless pooled
    if isinstance(model.maxpool, nn.MaxPool2d):
        hs, rs = ops.max_pool(model.maxpool, hs, rs)
        zeroable = False
    elif not isinstance(model.maxpool, nn.Identity):
        raise NotImplementedError(f"stem pooling {type(model.maxpool).__name__} is not supported")
    trace.append(MaskRecord("stem", rs[0], rs[1] if len(rs) > 1 else None))
    nonneg = _relu(model.act1)  # the stem's ReLU (a max-pool of a map >= 0 is >= 0)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, blk in enumerate(getattr(model, stage)):
            name = f"{stage}.{i}"
            if isinstance(blk, BasicBlock):
                hs, rs = _basic_block(ops, name, blk, hs, rs, trace, expand, nonneg, zeroable)
                nonneg, zeroable = _relu(blk.act2), ops.zeroable(blk.act2)
            elif isinstance(blk, Bottleneck):
                hs, rs = _bottleneck(ops, name, blk, hs, rs, trace, expand, nonneg, zeroable)
                nonneg, zeroable = _relu(blk.act3), ops.zeroable(blk.act3)
            else:
                raise NotImplementedError(f"{name}: block type {type(blk).__name__} is not supported")
        trace.append(MaskRecord(stage, rs[0], rs[1] if len(rs) > 1 else None))
    return hs, rs, trace


_REFERENCE, _LEAN, _FUSED = _Ops(lean=False), _Ops(lean=True), _Ops(lean=True, fused=True)
_AUTO = _Ops(lean=True, cost_model=default_cost_model, fused=True)


def masked_forward_features(model: nn.Module, xs: Sequence[torch.Tensor], removed: Sequence[torch.Tensor],
                            expand: Optional[Expand] = None):
    """Reference ``forward_features`` of a timm ResNet on one or two masked views.

    ``xs``: list of (B, C, H, W) normalised views; ``removed``: matching list of (B, H, W) or
    (B, 1, H, W) bool input masks; ``expand``: waxing callback (two views only). Returns
    ``(features, masks, trace)``: the per-view final maps (B, C, h, w), their removed masks and the
    list of ``ConvRecord`` / ``WaxRecord`` / ``MaskRecord`` in execution order.
    """
    return _walk(_REFERENCE, model, xs, removed, expand)


def lean_forward_features(model: nn.Module, xs: Sequence[torch.Tensor], removed: Sequence[torch.Tensor],
                          expand: Optional[Expand] = None):
    """:func:`masked_forward_features` with the lean mechanisms: same numbers, compact masks.

    Use with an ``expand`` built by ``pair_expander(..., wax_fn=wax_compact)`` to keep masks compact
    through waxing (a reference expander works too, it is just slower).
    """
    return _walk(_LEAN, model, xs, removed, expand)


def fused_forward_features(model: nn.Module, xs: Sequence[torch.Tensor], removed: Sequence[torch.Tensor],
                           expand: Optional[Expand] = None):
    """:func:`lean_forward_features` with kept BatchNorm as compiled kernels (``simwnw.fused_kernels``).

    The same numbers to float rounding; the first step compiles (seconds; Inductor caches the code on
    disk for later runs). Where compiling fails it warns once and runs the lean executor's eager ops.
    """
    return _walk(_FUSED, model, xs, removed, expand)


def auto_forward_features(model: nn.Module, xs: Sequence[torch.Tensor], removed: Sequence[torch.Tensor],
                          expand: Optional[Expand] = None, cost_model=None):
    """:func:`fused_forward_features` that skips removed positions of 1x1 convs where that measured faster.

    Per conv and kept share, ``skip_exec.default_cost_model`` times dense vs skipping once on this
    machine (a short calibration the first time a case appears) and keeps the faster; everything else
    runs as in the fused executor. Same numbers (to float rounding: a matrix product instead of the
    conv kernel), same masks and trace. ``cost_model``: another ``SkipCostModel`` (tests, tuning).
    """
    ops = _AUTO if cost_model is None else _Ops(lean=True, cost_model=cost_model, fused=True)
    return _walk(ops, model, xs, removed, expand)


Executor = Callable[..., tuple]
EXECUTORS = {"reference": masked_forward_features, "lean": lean_forward_features, "fused": fused_forward_features,
             "auto": auto_forward_features}


def select_executor(name: str) -> Executor:
    """The pair-path executor called ``name``: ``reference``, ``lean``, ``fused`` or ``auto``.

    For ``--simwnw-executor``; every executor takes ``(model, xs, removed, expand)`` and returns
    ``(features, masks, trace)``. ``fused`` is ``lean`` with compiled kept-BatchNorm kernels;
    ``auto`` is ``fused`` plus measured skipping of 1x1 convs.
    """
    if name not in EXECUTORS:
        raise ValueError(f"unknown SimWnW executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name]


def wax_for_executor(name: str):
    """The waxing function whose masks suit executor ``name`` (``pair_expander``'s ``wax_fn``)."""
    return wax if select_executor(name) is masked_forward_features else wax_compact


def _mask_entry(name: str, rec) -> dict:
    m1, m2 = rec.removed1[0].cpu(), rec.removed2[0].cpu()  # (C|1, H, W) of the single pair
    if name == "input":
        m1, m2 = m1[0], m2[0]
    return {"name": name, "mask1": m1, "mask2": m2}


def stage_masks(model, x1: torch.Tensor, x2: torch.Tensor, g1, g2, **settings) -> list[dict]:
    """Per-stage removed masks of one image pair after waxing-and-waning (for the visualiser).

    ``model``: a ``SimWnWResNet``; ``x1``/``x2``: normalised views (C, H, W) or (1, C, H, W);
    ``g1``/``g2``: their geometry (unbatched or batch of 1); ``settings``: ``configure_pair_pruning``
    arguments (block_size, psnr_threshold, search_window, max_rings). Runs the reference executor
    without gradient and with BatchNorm in eval mode (running statistics), so the model is untouched.

    Returns ``[dict(name, mask1, mask2), ...]`` in forward order: ``input`` (masks (H, W)), ``stem``,
    then per stage ``layerN waxed`` (the input of the stage's last spatial conv after waxing, per
    channel (C, H, W)) and ``layerN`` (the stage output, (C, H, W) or (1, H, W) when one mask holds
    for all channels). ``mask*`` are CPU bool tensors, ``True`` = removed.
    """
    if x1.dim() == 3:
        x1, x2 = x1[None], x2[None]
    if x1.shape[0] != 1:
        raise ValueError(f"stage_masks draws one image pair, got a batch of {x1.shape[0]}")

    def batched(g):
        return {k: (v[None] if v.dim() == (1 if k in ("crop", "out_size", "source_size") else 0) else v)
                for k, v in g.items()}

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, _, trace = model.run_pair(x1, x2, batched(g1), batched(g2), **dict(settings, executor="reference"))
    finally:
        model.train(was_training)
    out, waxed = [], None
    for rec in trace:
        if not isinstance(rec, MaskRecord):
            continue
        if rec.name.endswith(":waxed"):
            waxed = rec  # keep the last waxed conv input of the running stage
            continue
        if rec.name.startswith("layer") and waxed is not None:
            out.append(_mask_entry(f"{rec.name} waxed", waxed))
        waxed = None
        out.append(_mask_entry(rec.name, rec))
    return out
