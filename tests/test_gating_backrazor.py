"""Back Razor: weight gradient equals a slow masked-activation reference; rho=0 is dense; bytes; FLOPs."""

import itertools

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import simwnw_hf  # noqa: F401
from simwnw_hf.gating.backrazor import (BackRazorConv2d, back_razor_stats, convert_back_razor, coverage,
                                        keep_mask, pack_bits, saved_tensor_bytes, unpack_bits)


def test_keep_mask_keeps_the_largest_fraction_per_sample():
    x = torch.randn(3, 4, 5, 5)
    m = keep_mask(x, 0.8)
    # 100 elements: threshold = 80th smallest |x|, kept with ``>=`` (the authors' rule): 21 survive
    assert (m.flatten(1).sum(1) == 21).all()
    kept_min = x.abs().flatten(1).masked_fill(~m.flatten(1), float("inf")).min(1).values
    dropped_max = x.abs().flatten(1).masked_fill(m.flatten(1), -1.0).max(1).values
    assert (kept_min > dropped_max).all()
    assert keep_mask(x, 0.0).all()
    with pytest.raises(ValueError, match="rho"):
        keep_mask(x, 1.0)


def test_bit_packing_round_trip():
    m = torch.rand(3, 5, 7) > 0.5
    packed = pack_bits(m)
    assert packed.dtype == torch.uint8 and packed.numel() == (m.numel() + 7) // 8
    assert torch.equal(unpack_bits(packed, m.shape), m)


@pytest.mark.parametrize("stride,padding,groups,bias", [(1, 1, 1, False), (2, 1, 1, True), (1, 0, 2, False)])
def test_weight_gradient_equals_masked_activation_reference(stride, padding, groups, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride, padding, groups=groups, bias=bias)
    br = BackRazorConv2d.from_conv(conv, rho=0.7).train()
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    g = torch.randn_like(conv(x))
    y = br(x)
    assert torch.equal(y, conv(x))  # the forward is the dense conv
    gx, gw = torch.autograd.grad(y, (x, br.weight), g)
    # slow reference: grad-weight from explicitly masked activations, grad-input from the dense conv
    mask = keep_mask(x.detach(), 0.7)
    x_ref = (x.detach() * mask).requires_grad_(False)
    gw_ref, = torch.autograd.grad(conv(x_ref), conv.weight, g)
    gx_ref, = torch.autograd.grad(conv(x), x, g)
    assert torch.allclose(gw, gw_ref, atol=1e-5)
    assert torch.allclose(gx, gx_ref, atol=1e-6)
    assert not torch.allclose(gw, torch.autograd.grad(conv(x), conv.weight, g)[0], atol=1e-3)
    if bias:
        gb, = torch.autograd.grad(br(x), br.bias, g)
        assert torch.allclose(gb, g.sum((0, 2, 3)))


def test_rho_zero_and_eval_are_the_dense_model_exactly():
    torch.manual_seed(0)
    ref = timm.create_model("simwnw_resnet18_cifar")
    m = timm.create_model("simwnw_resnet18_cifar")
    m.load_state_dict(ref.state_dict())
    names = convert_back_razor(m, rho=0.0)
    assert len(names) == 20  # stem + 16 block convs + 3 downsamples
    assert all(type(a).__name__ == "BitMaskReLU" for a in m.modules() if isinstance(a, nn.ReLU))
    assert set(m.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    m.train(), ref.train()
    m(x).sum().backward()
    ref(x).sum().backward()
    for (n, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        assert torch.equal(p.grad, q.grad), n
    assert convert_back_razor(ref, rho=0.9, skip_first=True)[0] == "layer1.0.conv1"
    ref.eval(), m.eval()
    with torch.no_grad():
        assert torch.equal(ref(x), m(x))


def test_saved_bytes_of_one_conv_are_values_plus_bits():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    br = BackRazorConv2d.from_conv(conv, rho=0.9).train()
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    _, dense = saved_tensor_bytes(conv, x)
    _, razor = saved_tensor_bytes(br, x)
    kept = int(keep_mask(x.detach(), 0.9).sum())
    w = conv.weight.numel() * 4
    assert dense == x.numel() * 4 + w
    assert razor == kept * 4 + (x.numel() + 7) // 8 + w
    assert razor - w < 0.15 * (dense - w)


def _slow_coverage(conv, in_hw, out_hw):
    cov = torch.zeros(in_hw)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    for oy, ox, ky, kx in itertools.product(range(out_hw[0]), range(out_hw[1]), range(kh), range(kw)):
        iy, ix = oy * sh + ky * dh - ph, ox * sw + kx * dw - pw
        if 0 <= iy < in_hw[0] and 0 <= ix < in_hw[1]:
            cov[iy, ix] += 1
    return cov


@pytest.mark.parametrize("k,s,p,size", [(3, 1, 1, 7), (3, 2, 1, 8), (1, 2, 0, 8), (7, 2, 3, 9)])
def test_coverage_matches_explicit_loop(k, s, p, size):
    conv = nn.Conv2d(1, 1, k, s, p)
    out_hw = tuple(conv(torch.zeros(1, 1, size, size)).shape[-2:])
    assert torch.equal(coverage(conv, (size, size), out_hw), _slow_coverage(conv, (size, size), out_hw))


def test_stats_skip_exactly_the_pruned_weight_gradient_products():
    torch.manual_seed(0)
    # no ReLU between: ties at 0 would keep every zero (|x| >= threshold 0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 5, 1, bias=False))
    x = torch.randn(2, 3, 6, 6)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    dense_counts = fc.get_total_flops()
    convert_back_razor(model, rho=0.5)
    model.train()
    model(x).sum().backward()
    st = back_razor_stats(model, (6, 6), batch=2)
    assert st.train_dense * 2 == dense_counts and st.forward_dense == st.forward_actual
    # 1x1 convs: each pruned element skips C_out products (x 2 FLOPs); k - 1 of each sample are pruned
    skipped = 2 * 4 * (3 * 36 // 2 - 1) + 2 * 5 * (4 * 36 // 2 - 1)
    assert st.train_dense - st.train_actual == pytest.approx(skipped)
    assert st.sparsity == pytest.approx((53 + 71) / (108 + 144))


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.7, 0.9, 0.99])
def test_keep_mask_threshold_equals_a_sorted_reference(rho):
    """Both selection paths (kthvalue below rho 0.5, topk above) give the k-th smallest |x| of each sample."""
    torch.manual_seed(1)
    x = torch.relu(torch.randn(3, 4, 6, 6))  # ReLU output: many ties at 0
    per = x[0].numel()
    k = int(min(max(per * rho, 1), per))
    thr = x.abs().flatten(1).sort(1).values[:, k - 1]
    assert torch.equal(keep_mask(x, rho), (x.abs() >= thr[:, None, None, None]))


@pytest.mark.parametrize("inplace", [False, True])
def test_bitmask_relu_is_relu_exactly_and_saves_only_bits(inplace):
    from simwnw_hf.gating.backrazor import BitMaskReLU

    torch.manual_seed(0)
    base = torch.randn(4, 8, 5, 5)
    base[0, 0, 0, :3] = 0.0  # relu'(0) = 0, as nn.ReLU's threshold_backward
    g = torch.randn_like(base)
    outs = []
    for act in (nn.ReLU(inplace=inplace), BitMaskReLU(inplace=inplace)):
        x = base.clone().requires_grad_()
        (y,), saved = saved_tensor_bytes(lambda: (act(x * 1.0),))  # x * 1: a non-leaf, as after a BN
        outs.append((y.detach().clone(), torch.autograd.grad(y, x, g)[0], saved))
    (y0, g0, s0), (y1, g1, s1) = outs
    assert torch.equal(y0, y1) and torch.equal(g0, g1)
    assert s0 == base.numel() * 4 and s1 == (base.numel() + 7) // 8


def _reference_conv_forward(conv, rho):
    """Slow reference of a Back Razor conv: the dense output and grad-input, grad-weight from the
    explicitly masked input (values: conv(x, w.detach()); gradients: see each term)."""
    def forward(x):
        if not (conv.training and torch.is_grad_enabled()):
            return conv._conv_forward(x, conv.weight, conv.bias)
        masked = (x * keep_mask(x.detach(), rho)).detach()
        y_in = conv._conv_forward(x, conv.weight.detach(), None)      # grad-input only
        y_w = conv._conv_forward(masked, conv.weight, conv.bias)       # grad-weight (and bias) only
        return y_in + y_w - y_w.detach() + (conv.bias.detach()[:, None, None] if conv.bias is not None else 0)
    return forward


def test_whole_encoder_gradients_equal_the_masked_activation_reference():
    """Every parameter's gradient of a Back Razor ResNet (bit-mask ReLUs included) equals a dense model
    whose convs take grad-weight from explicitly masked inputs; the forward is the dense one."""
    torch.manual_seed(0)
    ref = timm.create_model("simwnw_resnet18_cifar", channels=[8, 8, 16, 16], num_classes=0)
    m = timm.create_model("simwnw_resnet18_cifar", channels=[8, 8, 16, 16], num_classes=0)
    m.load_state_dict(ref.state_dict())
    convert_back_razor(m, rho=0.8)
    for conv in [c for c in ref.modules() if type(c) is nn.Conv2d]:
        conv.forward = _reference_conv_forward(conv, 0.8)
    x = torch.randn(4, 3, 16, 16)
    m.train(), ref.train()
    ym, yr = m(x), ref(x)
    assert torch.allclose(ym, yr, atol=1e-5)
    (ym ** 2).sum().backward()
    (yr ** 2).sum().backward()
    for (n, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5), n
    dense = timm.create_model("simwnw_resnet18_cifar", channels=[8, 8, 16, 16], num_classes=0).train()
    dense.load_state_dict(m.state_dict())
    (dense(x) ** 2).sum().backward()
    assert not torch.allclose(dense.conv1.weight.grad, m.conv1.weight.grad, atol=1e-4)  # the pruning acts


def test_whole_encoder_saves_less_than_dense_only_with_bitmask_relus():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)

    def saved(rho=None, relu_masks=True):
        torch.manual_seed(0)
        model = timm.create_model("simwnw_resnet18_cifar", channels=[8, 16, 16, 32], num_classes=0).train()
        if rho is not None:
            convert_back_razor(model, rho, relu_masks=relu_masks)
        return saved_tensor_bytes(lambda: model(x).sum())[1]

    dense = saved()
    assert saved(0.9) < 0.75 * dense                  # conv inputs only in pruned form
    assert saved(0.9, relu_masks=False) > dense       # the ReLU keeps the full conv input anyway
    assert dense < saved(0.0) < 1.03 * dense          # rho 0: the convs save their whole input, + the ReLU bits


def test_coverage_is_cached_per_shape():
    conv = BackRazorConv2d(2, 2, 3, padding=1, rho=0.5).train()
    conv(torch.randn(1, 2, 6, 6, requires_grad=True))
    conv(torch.randn(1, 2, 8, 8, requires_grad=True))
    cache = conv.__dict__["_coverage_cache"]
    assert len(cache) == 2
    for (in_hw, out_hw, _, _), cov in cache.items():
        assert torch.equal(cov, _slow_coverage(conv, in_hw, out_hw))
    first = dict(cache)
    conv(torch.randn(1, 2, 6, 6, requires_grad=True))
    assert all(cache[k] is first[k] for k in first)
