"""Analytic FLOPs: dense numbers agree with torch's FlopCounterMode; masked counts against a brute-force
count of active (image, input channel, output position) triples; monotone in the mask."""

import itertools

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.simwnw.flops import dense_model_flops, trace_flops, triple_flops
from simwnw_hf.models.resnet_pair import masked_forward_features
from simwnw_hf.simwnw.masked_exec import masked_conv2d


def _counted_step(model, x):
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name,shape", [("simwnw_resnet18_cifar", (2, 3, 16, 16)), ("simwnw_resnet50", (2, 3, 32, 32))])
def test_dense_flops_match_flop_counter(name, shape):
    model = timm.create_model(name).train()
    counted = _counted_step(model, torch.randn(shape))
    analytic = dense_model_flops(model, shape, backward=True)
    assert abs(analytic - counted) / counted < 0.01, (analytic, counted)
    with torch.no_grad(), FlopCounterMode(display=False) as fwd:
        model(torch.randn(shape))
    assert abs(dense_model_flops(model, shape, backward=False) - fwd.get_total_flops()) / fwd.get_total_flops() < 0.01


def test_trace_dense_flops_match_flop_counter_of_backbone():
    """The pair path's dense_flops (both views, convs only) is what FlopCounterMode sees for two dense calls."""
    model = timm.create_model("simwnw_resnet18_cifar", num_classes=0).train()
    x1, x2 = torch.randn(2, 1, 3, 16, 16).unbind(0)
    with FlopCounterMode(display=False) as counter:
        (model(x1).sum() + model(x2).sum()).backward()
    none = torch.zeros(1, 16, 16, dtype=torch.bool)
    _, _, trace = masked_forward_features(model, [x1, x2], [none, none])
    flops = trace_flops(trace)
    assert abs(flops["dense_flops"] - counter.get_total_flops()) / counter.get_total_flops() < 0.01
    assert flops["kept_flops"] == flops["dense_flops"]
    with torch.no_grad():  # no backward under no_grad (e.g. a momentum encoder)
        _, _, trace = masked_forward_features(model, [x1, x2], [none, none])
    fwd = trace_flops(trace)
    assert fwd["dense_flops"] == fwd["forward_dense_flops"] == pytest.approx(flops["dense_flops"] / 3, rel=0.02)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (7, 2, 3)])
def test_active_triples_against_bruteforce(k, s, p):
    g = torch.Generator().manual_seed(k + s + p)
    b, cin, h, w = 2, 3, 9, 10
    removed = torch.rand(b, cin, h, w, generator=g) < 0.7
    conv = nn.Conv2d(cin, 4, k, stride=s, padding=p, bias=False)
    y, out_removed, active = masked_conv2d(conv, torch.randn(b, cin, h, w), removed)
    ho, wo = y.shape[-2:]
    count = 0
    for bi, ci, oy, ox in itertools.product(range(b), range(cin), range(ho), range(wo)):
        window = [(oy * s - p + i, ox * s - p + j) for i in range(k) for j in range(k)]
        count += any(0 <= yy < h and 0 <= xx < w and not removed[bi, ci, yy, xx] for yy, xx in window)
    assert int(active) == count
    assert triple_flops((k, k), 4) == 2 * k * k * 4


def test_masked_flops_drop_monotonically_with_the_mask():
    model = timm.create_model("simwnw_resnet18_cifar", num_classes=0).train()
    x = torch.randn(1, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    order = torch.rand(1, 4, 4, generator=g)  # removal order of 4x4 blocks: nested masks
    previous = None
    for frac in (0.0, 0.3, 0.6, 0.9, 1.0):
        removed = (order < frac).repeat_interleave(4, 1).repeat_interleave(4, 2)
        _, _, trace = masked_forward_features(model, [x], [removed])
        flops = trace_flops(trace)
        if frac == 0.0:
            assert flops["kept_flops"] == flops["dense_flops"]
        else:
            assert flops["kept_flops"] <= previous
        previous = flops["kept_flops"]
    assert previous == 0.0  # everything removed: nothing to compute
