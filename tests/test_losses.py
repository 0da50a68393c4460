"""Losses against slow loops written from the papers' equations."""

import math

import torch
import torch.nn.functional as F

from simwnw_hf.ssl.losses import InfoNCEWithQueue, NegativeCosineSimilarity, NTXentLoss, VICRegLoss


def ntxent_reference(z0, z1, t):
    """SimCLR Alg. 1: l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t), averaged over all 2N views."""
    z = torch.cat([z0, z1])
    n = z0.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [F.cosine_similarity(z[i], z[k], dim=0) / t for k in range(2 * n)]
        denom = sum(math.exp(sims[k].item()) for k in range(2 * n) if k != i)
        total += -(sims[j].item() - math.log(denom))
    return total / (2 * n)


def test_ntxent_matches_reference():
    torch.manual_seed(0)
    for n, t in [(1, 0.5), (4, 0.1), (7, 1.0)]:
        z0, z1 = torch.randn(n, 16), torch.randn(n, 16)
        assert abs(NTXentLoss(t)(z0, z1).item() - ntxent_reference(z0, z1, t)) < 1e-4


def test_ntxent_rewards_aligned_pairs():
    z = torch.randn(8, 32)
    assert NTXentLoss(0.2)(z, z + 0.01 * torch.randn_like(z)) < NTXentLoss(0.2)(z, torch.randn(8, 32))


def test_negative_cosine():
    p, z = torch.randn(5, 8), torch.randn(5, 8)
    expected = -sum(F.cosine_similarity(p[i], z[i], dim=0) for i in range(5)) / 5
    assert torch.allclose(NegativeCosineSimilarity()(p, z), expected)


def test_infonce_queue_reference_and_fifo():
    torch.manual_seed(0)
    loss_fn = InfoNCEWithQueue(dim=8, queue_size=6, temperature=0.2)
    q, k = torch.randn(3, 8), torch.randn(3, 8)
    qn, kn, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), loss_fn.queue.clone()
    expected = 0.0
    for i in range(3):
        logits = torch.cat([(qn[i] * kn[i]).sum().view(1), queue @ qn[i]]) / 0.2
        expected += -torch.log_softmax(logits, 0)[0] / 3
    assert torch.allclose(loss_fn(q, k), expected, atol=1e-6)
    keys = torch.randn(4, 8)
    loss_fn.enqueue(keys)
    loss_fn.enqueue(keys[:3])  # wraps around: slots 4, 5, 0
    assert torch.allclose(loss_fn.queue[4], F.normalize(keys[0], dim=0))
    assert torch.allclose(loss_fn.queue[0], F.normalize(keys[2], dim=0))
    assert int(loss_fn.queue_ptr) == 1


def test_vicreg_matches_reference():
    torch.manual_seed(0)
    a, b = torch.randn(10, 6), torch.randn(10, 6)

    def var(z):
        return sum(max(0.0, 1 - math.sqrt(z[:, j].var().item() + 1e-4)) for j in range(z.shape[1])) / z.shape[1]

    def cov(z):
        zc = z - z.mean(0)
        c = zc.T @ zc / (z.shape[0] - 1)
        return sum(c[i, j].item() ** 2 for i in range(6) for j in range(6) if i != j) / 6

    inv = ((a - b) ** 2).mean().item()
    expected = 25 * inv + 25 * (var(a) + var(b)) + (cov(a) + cov(b))
    assert abs(VICRegLoss()(a, b).item() - expected) < 1e-4
