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


def vicreg_reference(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """Written from the VICReg authors' code, not ours: facebookresearch/vicreg ``main_vicreg.py``
    (commit 4e12602), ``VICReg.forward``, one process: ``repr_loss = mse(x, y)``; both branches centred;
    ``std = sqrt(var + 1e-4)``; ``std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``;
    ``cov = x.T x / (batch_size - 1)``; ``cov_loss`` = off-diagonal squares summed / num_features, per branch.
    """
    n, d = x.shape
    repr_loss = sum((x[i, j] - y[i, j]).item() ** 2 for i in range(n) for j in range(d)) / (n * d)
    std_loss = 0.0
    cov_loss = 0.0
    for z in (x, y):
        zc = z - z.mean(dim=0)
        hinge = [max(0.0, 1.0 - math.sqrt(sum(zc[i, j].item() ** 2 for i in range(n)) / (n - 1) + 1e-4))
                 for j in range(d)]
        std_loss += sum(hinge) / d / 2
        cov = [[sum(zc[k, a].item() * zc[k, b].item() for k in range(n)) / (n - 1) for b in range(d)]
               for a in range(d)]
        cov_loss += sum(cov[a][b] ** 2 for a in range(d) for b in range(d) if a != b) / d
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def test_vicreg_matches_the_authors_code():
    torch.manual_seed(0)
    scale = torch.tensor([0.2, 0.5, 1.0, 2.0, 0.1, 0.8])  # some std below 1, so the variance hinge is active
    a, b = torch.randn(10, 6) * scale, torch.randn(10, 6) * scale + 0.3 * torch.randn(10, 1)
    assert abs(VICRegLoss(gather_distributed=False)(a, b).item() - vicreg_reference(a, b)) < 1e-4
    # each term on its own, so no weighting can hide behind another term
    for weights in [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]:
        ours = VICRegLoss(*weights, gather_distributed=False)(a, b).item()
        assert abs(ours - vicreg_reference(a, b, *weights)) < 1e-5, weights
    assert vicreg_reference(a, b, 0.0, 1.0, 0.0) > 0.1
