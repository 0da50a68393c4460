"""Removal masks on feature maps: waning through convolutions and ring-by-ring waxing (paper §4.2).

Convention everywhere: a mask is a bool tensor, ``True`` = *removed* (no computation, value zero),
shaped ``(B, C, H, W)`` (per channel) or ``(B, 1, H, W)`` (one mask shared by all channels).

Waning (§4.2.1, Fig. 5)
    A convolution output is skippable only when its WHOLE receptive window lies in the removed
    region: one kept pixel inside the window makes the output depend on kept data. Padding is not a
    kept pixel (zero padding contributes nothing), so an output whose window covers only removed
    pixels and padding is skippable. Implemented as a max-pool of the *kept* indicator with the
    conv's kernel/stride/dilation over a zero-padded map: ``kept_out = maxpool(kept) > 0``
    (computed as a separable OR of strided slices, :func:`window_any`).
    Per channel, this gives the (output position, input channel) pairs whose partial sum is
    non-zero; see :func:`active_inputs` and ``masked_exec``/``flops`` for how that is used.

Waxing (§4.2.2, "concentric circle approach", channel-wise)
    At every waxing point (each residual block input and each inner 3x3 conv input, see
    ``masked_exec``), the removed region of every channel grows ring by ring. Ring ``k`` is the
    set of view-1 pixels at Chebyshev distance exactly ``k`` from the channel's removed region
    (distance 1 = the 8-neighbourhood "circle" around it). Each ring pixel ``q`` is compared one-to-one
    with the view-2 pixel at the same offset around the *matched* block (no search, App. C):
    ``q`` belongs to the similar block nearest to it (Chebyshev distance to the block rectangle scaled
    to this resolution, ties to the lower block index) and is displaced by that block's match offset
    ``match_yx - src_yx`` divided by the feature stride and rounded (:func:`block_correspondence`).
    The decision is taken per (image, channel, owning block): the ring part owned by a block is added
    to both views while its PSNR is >= the threshold; the first failing ring stops that block's
    growth in that channel, and at most ``max_rings`` rings are examined (default 2: beyond that the
    ring lies more than two feature pixels from anything matched, and each further ring costs another
    pass over the map). Pixels whose counterpart is outside view 2 are never compared nor added;
    pixels whose counterpart is already removed in view 2 are left out of the PSNR (their value there
    is a zero, not an activation) but are added with the ring. A ring part with no comparable pixel
    passes vacuously.

Spatial (all-channel) decisions (``decision="spatial"``; ``SimWnWSettings``' default, this function's is the paper's)
    The paper does not say whether a ring is tested per channel or for the whole feature map. With
    ``decision="spatial"`` masks are positions ``(B, 1, H, W)``: rings are rings of the positions
    removed in every channel, a ring part passes when the MSE over *all channels* of its pixels
    (each channel's error divided by that channel's ``MAX^2``, so no channel's scale dominates; or
    by the map's ``MAX^2`` with ``peak="map"``) is within the threshold, and a passing ring part is
    removed in every channel. Masks then stay one position mask, which a skipping executor can use
    and which costs one comparison per (image, block, ring) instead of one per channel. It keeps as
    much as per-channel decisions do (``benchmarks/results/waxing_options.md``) at a fraction of the
    bookkeeping, which is why training uses it unless ``--wax-decision channel`` is given.

Feature-map PSNR
    ``PSNR = 10 log10(MAX^2 / MSE)`` with ``MAX`` = the largest ``|activation|`` of that channel over
    both views' maps of the image pair at this layer (``peak="channel"``, the default), or of the
    whole map, all channels (``peak="map"``). Images use MAX_I = 1 because pixels live in
    [0, 1]; activations have no fixed range, so the pair's own peak plays that role. This makes the
    test invariant to rescaling a channel (BatchNorm gamma) and the 20 dB threshold keeps its image
    meaning: an RMS difference of 10% of the peak. A dead channel (MAX = 0) has MSE = 0 and passes.
    The test is evaluated as ``MSE <= MAX^2 * 10^(-threshold / 10)`` (no log, no division by zero).

Block structure
    Masks stay unions of rectangles: block rectangles (input), shrunk by waning (rectangles erode to
    rectangles), grown by square rings owned by whole blocks. A tile-skipping executor can therefore
    skip a block-aligned tile whenever the whole tile is removed.

Overhead: a ring PSNR costs 3 FLOPs per compared pixel pair (subtract, square, accumulate; App. C
counts 2,700 FLOPs for a 30x30 block), plus 2 FLOPs per activation for the per-channel peak; spatial
decisions normalised per channel add one multiply per compared pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = [
    "wane", "window_any", "active_inputs", "ring_distance", "Correspondence", "block_correspondence", "wax",
    "WaxResult", "pair_expander", "PSNR_PAIR_FLOPS", "PEAK_FLOPS", "WAX_DECISIONS", "WAX_PEAKS", "wax_peak",
]

PSNR_PAIR_FLOPS = 3  # subtract, square, accumulate per compared pixel pair (paper App. C)
PEAK_FLOPS = 2  # |x| and max per activation for the per-channel MAX
WAX_DECISIONS = ("channel", "spatial")  # a ring passes per (image, block, channel) or per (image, block)
WAX_PEAKS = ("channel", "map")  # the PSNR's MAX: per channel, or over the whole feature map


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_any(mask: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """``True`` where a conv window (padding counts as ``False``) holds any ``True`` of ``mask``.

    ``mask``: (..., H, W) bool. Separable OR of strided slices: a rectangle holds a ``True`` iff one
    of its rows does after OR-ing along the rows (bool ops, much cheaper than a float max-pool).
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    h, w = mask.shape[-2:]
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"window {kh}x{kw} (padding {padding}, dilation {dilation}) does not fit a {h}x{w} map")
    if kh == kw == 1 and ph == pw == 0:
        return mask[..., ::sh, ::sw]  # 1x1 window: a strided view, no copy
    padded = mask
    if ph or pw:
        padded = mask.new_zeros(*mask.shape[:-2], h + 2 * ph, w + 2 * pw)
        padded[..., ph:ph + h, pw:pw + w] = mask

    def rows_at(i):  # (..., Ho, W + 2pw): rows i*dh, i*dh + sh, ...
        return padded[..., i * dh:i * dh + sh * (ho - 1) + 1:sh, :]

    rows = rows_at(0) | rows_at(1) if kh > 1 else rows_at(0)
    for i in range(2, kh):
        rows |= rows_at(i)

    def cols_at(j):  # (..., Ho, Wo)
        return rows[..., j * dw:j * dw + sw * (wo - 1) + 1:sw]

    out = cols_at(0) | cols_at(1) if kw > 1 else cols_at(0)
    for j in range(2, kw):
        out |= cols_at(j)
    return out


def active_inputs(removed: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Output-resolution map of windows that contain at least one kept pixel, per channel.

    ``removed``: (B, C, H, W) bool (C may be 1). Returns (B, C, Ho, Wo) bool: ``True`` where the
    conv window of that channel at that output position holds a kept pixel (padding is not kept).
    """
    if removed.dtype != torch.bool or removed.dim() != 4:
        raise ValueError(f"removed mask must be a 4-d bool tensor (B, C, H, W), got {removed.dtype} "
                         f"with shape {tuple(removed.shape)}")
    return window_any(~removed, kernel_size, stride, padding, dilation)


def wane(removed: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Removed mask after a conv/pool window (§4.2.1): removed iff the whole window is removed.

    ``removed``: (B, H, W) or (B, C, H, W) bool. Returns the same rank at output resolution.
    Channels are waned independently (use ``.all(1)`` to get the positions a conv can skip).
    """
    squeeze = removed.dim() == 3
    r = removed.unsqueeze(1) if squeeze else removed
    out = ~active_inputs(r, kernel_size, stride, padding, dilation)
    return out.squeeze(1) if squeeze else out


def ring_distance(removed: torch.Tensor, max_rings: int) -> torch.Tensor:
    """Chebyshev distance of every pixel to the removed region, capped at ``max_rings + 1``.

    ``removed``: (B, C, H, W) bool. Returns (B, C, H, W) uint8; 0 on removed pixels. Computed by
    ``max_rings`` 3x3 dilations (one 3x3 dilation is one Chebyshev step): the distance is the number
    of dilation levels ``0..max_rings`` that do not reach the pixel.
    """
    grown = removed
    dist = (~grown).to(torch.uint8)  # dist = #{k in 0..max_rings : pixel not within k steps of the region}
    for _ in range(max_rings):
        grown = window_any(grown, 3, 1, 1)  # one Chebyshev ring outward
        dist += ~grown
    return dist


@dataclass(frozen=True)
class Correspondence:
    """One-to-one view-1 -> view-2 pixel map at one feature resolution (see module docstring).

    owner:  (B, H*W) long, index of the similar block owning each view-1 pixel (-1: none)
    target: (B, H*W) long, flat index of the counterpart pixel in view 2 (0 where not ``valid``)
    valid:  (B, H*W) bool, pixel has an owner and its counterpart lies inside view 2
    num_blocks: number of blocks (size of the owner index space)
    """

    owner: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor
    num_blocks: int


def block_correspondence(src_yx: torch.Tensor, match_yx: torch.Tensor, similar: torch.Tensor,
                         block_size: int, image_hw: Sequence[int], feature_hw: Sequence[int]) -> Correspondence:
    """Map view-1 feature pixels to view 2 through the nearest similar block's match offset.

    ``src_yx`` (nb, 2) / ``match_yx`` (B, nb, 2): top-left input pixels of each view-1 block and of
    its match in view 2; ``similar`` (B, nb) bool. A feature pixel ``r`` covers input rows
    ``[r * s, (r + 1) * s)`` with ``s = image_h / feature_h``, so block rows ``[y, y + bs)`` cover
    feature rows ``[floor(y / s), ceil((y + bs) / s))``.
    """
    if src_yx.dim() != 2 or match_yx.dim() != 3 or similar.shape != match_yx.shape[:2]:
        raise ValueError(f"expected src_yx (nb, 2), match_yx (B, nb, 2), similar (B, nb); got "
                         f"{tuple(src_yx.shape)}, {tuple(match_yx.shape)}, {tuple(similar.shape)}")
    device = match_yx.device
    bsz, nb = similar.shape
    h, w = int(feature_hw[0]), int(feature_hw[1])
    sy, sx = float(image_hw[0]) / h, float(image_hw[1]) / w
    src = src_yx.to(device=device, dtype=torch.float64)
    y0 = torch.floor(src[:, 0] / sy).long()
    y1 = torch.ceil((src[:, 0] + block_size) / sy).long() - 1  # inclusive last row
    x0 = torch.floor(src[:, 1] / sx).long()
    x1 = torch.ceil((src[:, 1] + block_size) / sx).long() - 1
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    dy = torch.maximum(y0[:, None] - rows, rows - y1[:, None]).clamp(min=0)  # (nb, H)
    dx = torch.maximum(x0[:, None] - cols, cols - x1[:, None]).clamp(min=0)  # (nb, W)
    dist = torch.maximum(dy[:, :, None], dx[:, None, :]).to(torch.int32)  # (nb, H, W)
    far = h + w + 1
    dist = torch.where(similar[:, :, None, None], dist, far)  # (B, nb, H, W)
    dmin, owner = dist.min(dim=1)  # (B, H, W); min returns the first (lowest) index on ties
    owner = torch.where(dmin < far, owner, -1)
    # match offset per block, in feature pixels (round half to even)
    offset = match_yx.to(torch.float64) - src[None]  # (B, nb, 2)
    off_y = torch.round(offset[..., 0] / sy).long()
    off_x = torch.round(offset[..., 1] / sx).long()
    own = owner.clamp(min=0).view(bsz, h * w)  # (B, H*W)
    ty = rows.repeat_interleave(w)[None] + off_y.gather(1, own)  # (B, H*W)
    tx = cols.repeat(h)[None] + off_x.gather(1, own)
    valid = (owner.view(bsz, h * w) >= 0) & (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    target = torch.where(valid, ty * w + tx, 0)
    return Correspondence(owner=owner.view(bsz, h * w), target=target, valid=valid, num_blocks=nb)


@dataclass(frozen=True)
class WaxResult:
    """Grown masks of both views and what the growth cost."""

    removed1: torch.Tensor  # (B, C, H, W) bool
    removed2: torch.Tensor  # (B, C, H, W) bool
    compared_pairs: torch.Tensor  # 0-d: pixel pairs that entered a ring PSNR (a tensor: no device sync)
    overhead_flops: torch.Tensor  # 0-d: ring PSNRs + per-channel peaks


def check_wax_inputs(h1: torch.Tensor, h2: torch.Tensor, corr: "Correspondence", max_rings: int,
                     decision: str = "channel", peak: str = "channel") -> None:
    """One-line errors for inputs any waxing implementation refuses (shared by ``wax`` and its lean twins)."""
    if decision not in WAX_DECISIONS:
        raise ValueError(f"unknown waxing decision {decision!r}; choose one of {', '.join(WAX_DECISIONS)}")
    if peak not in WAX_PEAKS:
        raise ValueError(f"unknown waxing peak {peak!r}; choose one of {', '.join(WAX_PEAKS)}")
    if h1.shape != h2.shape or h1.dim() != 4:
        raise ValueError(f"wax needs two (B, C, H, W) maps of equal shape, got {tuple(h1.shape)} and {tuple(h2.shape)}")
    if max_rings < 0:
        raise ValueError(f"max_rings must be >= 0, got {max_rings}")
    bsz, _, h, w = h1.shape
    if corr.owner.shape != (bsz, h * w):
        raise ValueError(f"correspondence is for {tuple(corr.owner.shape)} pixels, feature map is {bsz}x{h}x{w}")


def wax_peak(a1: torch.Tensor, a2: torch.Tensor, peak: str = "channel", nonneg: bool = False) -> torch.Tensor:
    """The PSNR's ``MAX`` of flat maps ``a1``/``a2`` (B, C, N): (B, C) per channel, or (B, 1) per map.

    ``nonneg``: the caller knows both maps are >= 0 (ReLU outputs), so ``max |a| = max a`` and the
    minimum pass is skipped (half the cost; the same number).
    """
    if nonneg:
        p = torch.maximum(a1.amax(2), a2.amax(2))
    else:
        p = torch.maximum(torch.maximum(-a1.amin(2), a1.amax(2)), torch.maximum(-a2.amin(2), a2.amax(2)))  # max |a|
    return p.amax(1, keepdim=True) if peak == "map" else p


def wax(h1: torch.Tensor, h2: torch.Tensor, removed1: torch.Tensor, removed2: torch.Tensor,
        corr: Correspondence, psnr_threshold: float = 20.0, max_rings: int = 2,
        decision: str = "channel", peak: str = "channel", nonneg: bool = False) -> WaxResult:
    """Grow the removed regions of both views ring by ring (§4.2.2), per channel or spatially.

    ``h1``/``h2``: (B, C, H, W) feature maps of the two views at one layer; ``removed1``/``removed2``:
    (B, C|1, H, W) bool masks at that layer; ``corr``: :func:`block_correspondence` at (H, W).
    ``decision``/``peak``: see the module docstring. Returns (B, C, H, W) masks. Masks never shrink.
    No gradient flows through the decision. ``nonneg`` (a hint fast twins use: both maps are >= 0)
    is ignored here: the definition always takes ``max |a|``.
    """
    check_wax_inputs(h1, h2, corr, max_rings, decision, peak)
    bsz, ch, h, w = h1.shape
    r1 = removed1.expand(bsz, ch, h, w)
    r2 = removed2.expand(bsz, ch, h, w)
    if max_rings == 0 or corr.num_blocks == 0:
        zero = torch.zeros((), device=h1.device)
        return WaxResult(r1.clone(), r2.clone(), zero, zero)
    a1 = h1.detach().float().reshape(bsz, ch, h * w)
    a2 = h2.detach().float().reshape(bsz, ch, h * w)
    if decision == "spatial":
        return _wax_spatial(a1, a2, r1, r2, corr, psnr_threshold, max_rings, peak)
    with torch.no_grad():
        mse_limit = wax_peak(a1, a2, peak).square().expand(bsz, ch) * 10.0 ** (-psnr_threshold / 10.0)
        target = corr.target[:, None, :].expand(bsz, ch, h * w)  # (B, C, H*W)
        owner = corr.owner.clamp(min=0)[:, None, :].expand(bsz, ch, h * w)
        valid = corr.valid[:, None, :]  # (B, 1, H*W)
        a2_at = a2.gather(2, target)  # view-2 activation at each view-1 pixel's counterpart
        r2_at = r2.reshape(bsz, ch, h * w).gather(2, target)
        sq_err = (a1 - a2_at).square()
        dist = ring_distance(r1, max_rings).reshape(bsz, ch, h * w)
        alive = torch.ones(bsz, ch, corr.num_blocks, dtype=torch.bool, device=h1.device)
        add1 = torch.zeros(bsz, ch, h * w, dtype=torch.bool, device=h1.device)
        compared = torch.zeros((), device=h1.device)
        for k in range(1, max_rings + 1):
            ring = (dist == k) & valid & alive.gather(2, owner)  # ring pixels of still-growing blocks
            compare = ring & ~r2_at
            se = torch.zeros(bsz, ch, corr.num_blocks, device=h1.device).scatter_add_(2, owner, sq_err * compare)
            cnt = torch.zeros_like(se).scatter_add_(2, owner, compare.float())
            alive = alive & (se <= mse_limit[..., None] * cnt)  # per (image, channel, block)
            add1 |= ring & alive.gather(2, owner)
            compared += cnt.sum()
        new1 = r1.reshape(bsz, ch, h * w) | add1
        # the same ring pixels at their counterparts in view 2 (target 0 carries value 0 when not added)
        new2 = r2.reshape(bsz, ch, h * w).to(torch.uint8).scatter_reduce(
            2, torch.where(add1, target, 0), add1.to(torch.uint8), reduce="amax").bool()
    flops = PSNR_PAIR_FLOPS * compared + PEAK_FLOPS * 2 * a1.numel()
    return WaxResult(new1.view(bsz, ch, h, w), new2.view(bsz, ch, h, w), compared, flops)


def _wax_spatial(a1, a2, r1, r2, corr: Correspondence, psnr_threshold: float, max_rings: int,
                 peak: str) -> WaxResult:
    """``wax(decision="spatial")``: one decision per (image, block, ring) over all channels.

    Spelled out over full maps (every pixel, every channel), as the definition: rings of the
    positions removed in every channel; each channel's squared error divided by its ``MAX^2``
    (``peak``); a ring part passes while the normalised errors summed over channels and compared
    pixels are at most ``10^(-threshold/10)`` per (channel, pixel) pair. ``a1``/``a2``: the flat maps
    (B, C, H*W); ``r1``/``r2``: the masks expanded to (B, C, H, W).
    """
    bsz, ch, h, w = r1.shape
    dev = a1.device
    with torch.no_grad():
        pk = wax_peak(a1, a2, peak).expand(bsz, ch)
        inv = torch.where(pk > 0, 1.0 / pk, torch.zeros_like(pk))  # a dead channel (MAX = 0) adds no error
        limit = 10.0 ** (-psnr_threshold / 10.0)
        pos1 = r1.all(dim=1).reshape(bsz, h * w)  # positions removed in every channel
        pos2 = r2.all(dim=1).reshape(bsz, h * w)
        a2_at = a2.gather(2, corr.target[:, None, :].expand(bsz, ch, h * w))
        norm_err = ((a1 - a2_at) * inv[..., None]).square().sum(dim=1)  # (B, H*W): summed over channels
        r2_at = pos2.gather(1, corr.target)
        owner = corr.owner.clamp(min=0)
        dist = ring_distance(pos1.view(bsz, 1, h, w), max_rings).reshape(bsz, h * w)
        alive = torch.ones(bsz, corr.num_blocks, dtype=torch.bool, device=dev)
        add1 = torch.zeros(bsz, h * w, dtype=torch.bool, device=dev)
        compared = torch.zeros((), device=dev)
        for k in range(1, max_rings + 1):
            ring = (dist == k) & corr.valid & alive.gather(1, owner)
            compare = ring & ~r2_at
            se = torch.zeros(bsz, corr.num_blocks, device=dev).scatter_add_(1, owner, norm_err * compare)
            cnt = torch.zeros_like(se).scatter_add_(1, owner, compare.float())
            alive = alive & (se <= limit * ch * cnt)  # per (image, block)
            add1 |= ring & alive.gather(1, owner)
            compared += cnt.sum() * ch
        add2 = torch.zeros(bsz, h * w, dtype=torch.uint8, device=dev).scatter_reduce(
            1, torch.where(add1, corr.target, 0), add1.to(torch.uint8), reduce="amax").bool()
        new1 = r1 | add1.view(bsz, 1, h, w)
        new2 = r2 | add2.view(bsz, 1, h, w)
    pair_flops = PSNR_PAIR_FLOPS + (1 if peak == "channel" else 0)  # + the per-channel normalising multiply
    flops = pair_flops * compared + PEAK_FLOPS * 2 * a1.numel()
    return WaxResult(new1, new2, compared, flops)


def pair_expander(src_yx: torch.Tensor, match_yx: torch.Tensor, similar: torch.Tensor, block_size: int,
                  image_hw: Sequence[int], psnr_threshold: float = 20.0, max_rings: int = 2, wax_fn=None,
                  decision: str = "channel", peak: str = "channel"):
    """Waxing callback for the pair-path executors (``models.resnet_pair``) from one batch's matches.

    The correspondence is built once per feature resolution and cached in this closure, which lives
    for one forward call only (nothing is stored on the model). ``wax_fn``: :func:`wax` (default) or
    ``lean_exec.wax_compact`` (same removal, masks kept (B, 1, H, W) where they agree over channels);
    ``decision``/``peak``: per-channel or spatial ring decisions and the PSNR's MAX (module docstring).
    The callback's ``nonneg`` (the executor knows both maps are ReLU outputs) is passed to ``wax_fn``.
    """
    cache: dict = {}
    wax_fn = wax if wax_fn is None else wax_fn

    def expand(name: str, hs: list, rs: list, nonneg: bool = False):
        hw = tuple(hs[0].shape[-2:])
        if hw not in cache:
            cache[hw] = block_correspondence(src_yx, match_yx, similar, block_size, image_hw, hw)
        res = wax_fn(hs[0], hs[1], rs[0], rs[1], cache[hw], psnr_threshold, max_rings, decision=decision, peak=peak,
                     nonneg=nonneg)
        return [res.removed1, res.removed2], res.overhead_flops

    return expand
