"""DINO: the vectorised loss against the paper's pseudocode, centering, EMA teacher, one training step."""

import os
import socket

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.pruning import PairStats, TokenPruningSettings
from simwnw_hf.ssl.dino import DINO, DINOHead, DINOLoss, batch_center, dino_cross_entropy, teacher_temperature
from simwnw_hf.ssl.momentum import cosine_schedule


def paper_loss(student, teacher, center, tps, tpt):
    """Alg. 1 of the DINO paper, written as a loop over view pairs and samples (multi-crop form)."""

    def H(t, s):  # noqa: N802  (the paper's name)
        total = 0.0
        for i in range(t.shape[0]):
            s_i = torch.softmax(s[i] / tps, dim=0)
            t_i = torch.softmax((t[i].detach() - center.flatten()) / tpt, dim=0)
            total = total - (t_i * torch.log(s_i)).sum()
        return total / t.shape[0]

    terms = [H(teacher[iq], student[v]) for iq in range(len(teacher)) for v in range(len(student)) if v != iq]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("num_student", [2, 5])
def test_loss_matches_paper_pseudocode(num_student):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(num_student, 6, 11, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(2, 6, 11, generator=g, dtype=torch.float64) * 3
    center = torch.randn(1, 11, generator=g, dtype=torch.float64)
    fast = dino_cross_entropy(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    slow = paper_loss(student, teacher, center, 0.1, 0.04)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    # with two views the paper writes it as H(t1, s2)/2 + H(t2, s1)/2: the symmetric pair only
    if num_student == 2:
        criterion = DINOLoss(11).double()
        criterion.center.copy_(center)
        torch.testing.assert_close(criterion(list(student), list(teacher)), slow)


def test_loss_is_float32_under_autocast():
    student, teacher = torch.randn(3, 4, 512), torch.randn(2, 4, 512)
    reference = dino_cross_entropy(student, teacher, torch.zeros(1, 512), 0.1, 0.04)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = dino_cross_entropy(student.bfloat16(), teacher.bfloat16(), torch.zeros(1, 512), 0.1, 0.04)
    assert low.dtype == torch.float32
    expected = dino_cross_entropy(student.bfloat16().float(), teacher.bfloat16().float(), torch.zeros(1, 512), 0.1, 0.04)
    torch.testing.assert_close(low, expected)
    assert (low - reference).abs() < 0.05 * reference.abs()


def test_loss_gradient_reaches_student_only():
    student = torch.randn(3, 4, 8, requires_grad=True)
    teacher = torch.randn(2, 4, 8, requires_grad=True)
    dino_cross_entropy(student, teacher, torch.zeros(1, 8), 0.1, 0.04).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_teacher_temperature_warmup():
    assert teacher_temperature(0.0, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(0.15, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(0.3, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0.9, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0.0, 0.04, 0.07, 0.0) == pytest.approx(0.07)
    # the schedule reaches the loss: sharper teacher at the start of the warm-up
    criterion = DINOLoss(8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_progress=0.3).eval()
    s, t = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    torch.testing.assert_close(criterion(s, t, progress=0.0), dino_cross_entropy(s, t, criterion.center, 0.1, 0.04))
    torch.testing.assert_close(criterion(s, t, progress=0.5), dino_cross_entropy(s, t, criterion.center, 0.1, 0.07))


def test_center_update_in_training_only():
    criterion = DINOLoss(5, center_momentum=0.9)
    criterion.center.copy_(torch.randn(1, 5))
    start = criterion.center.clone()
    teacher = [torch.randn(4, 5), torch.randn(4, 5)]
    criterion(torch.randn(3, 4, 5), teacher)
    expected = 0.9 * start + 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True)  # Alg. 1
    torch.testing.assert_close(criterion.center, expected)
    criterion.eval()
    criterion(torch.randn(3, 4, 5), teacher)
    torch.testing.assert_close(criterion.center, expected)


def _center_rank(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        teacher = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4) * (rank + 1)  # (T, B, K)
        queue.put((rank, batch_center(teacher).tolist()))  # plain lists: the rank exits before the read
    finally:
        dist.destroy_process_group()


def test_center_is_gathered_across_processes():
    """Two processes see different teacher batches; both must get the mean over the global batch.

    Forked (not spawned) ranks: they inherit the imported modules, so the test costs no re-import.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    mp.start_processes(_center_rank, args=(2, port, queue), nprocs=2, join=True, start_method="fork")
    results = dict(queue.get() for _ in range(2))
    base = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    expected = torch.cat([base, 2 * base]).mean(dim=0, keepdim=True)
    for rank in range(2):
        torch.testing.assert_close(torch.tensor(results[rank]), expected)


def test_head_shapes_weight_norm_and_freeze():
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(5, 16)
    out = head(x)
    assert out.shape == (5, 32)
    # rows of the last layer have norm 1 (g fixed to 1): |logit| <= 1 for a unit-norm bottleneck
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(32))
    assert out.abs().max() <= 1 + 1e-5
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    torch.testing.assert_close(head(x, freeze_last_layer=True), out)
    head(x, freeze_last_layer=True).square().sum().backward()
    v = head.last_layer.parametrizations.weight.original1
    assert v.grad is not None and v.grad.abs().max() == 0
    assert head.mlp[0].weight.grad.abs().max() > 0
    assert DINOHead(16, 32, nlayers=1, bottleneck_dim=8)(x).shape == (5, 32)
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(16, 32, nlayers=0)


def tiny_resnet():
    return timm.create_model("simwnw_resnet18_cifar", num_classes=0, layers=(1, 1, 1, 1),
                             channels=(8, 16, 32, 64), stem_width=8)


def tiny_dino(backbone, **kwargs):
    return DINO(backbone, backbone.num_features, out_dim=64, hidden_dim=32, bottleneck_dim=16, **kwargs)


def views(batch=4, size=32, local=0, local_size=16):
    g = torch.Generator().manual_seed(1)
    out = [torch.randn(batch, 3, size, size, generator=g) for _ in range(2)]
    return {"views": out + [torch.randn(batch, 3, local_size, local_size, generator=g) for _ in range(local)]}


def test_forward_equals_loss_of_its_parts_and_updates_center():
    torch.manual_seed(0)
    dino = tiny_dino(tiny_resnet()).eval()  # eval: BN uses running stats, so the parts below match exactly
    batch = views(local=2)
    x = batch["views"]
    with torch.no_grad():
        student = [dino.head(dino.backbone(v)) for v in x]
        teacher = [dino.teacher_head(dino.teacher_backbone(v)) for v in x[:2]]
        loss, stats = dino(batch)
    expected = paper_loss(torch.stack(student), torch.stack(teacher), torch.zeros(1, 64), 0.1, 0.04)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert stats == PairStats()
    dino.criterion.train()
    with torch.no_grad():
        dino(batch)
    torch.testing.assert_close(dino.criterion.center, 0.1 * torch.cat(teacher).mean(0, keepdim=True),
                               rtol=1e-5, atol=1e-6)


def test_teacher_gets_no_gradient_and_follows_ema():
    torch.manual_seed(0)
    dino = tiny_dino(tiny_resnet(), momentum=0.9)
    teacher_params = list(dino.teacher_backbone.parameters()) + list(dino.teacher_head.parameters())
    assert all(not p.requires_grad for p in teacher_params)
    # the teacher starts as the student
    for p, q in zip(dino.backbone.parameters(), dino.teacher_backbone.parameters()):
        torch.testing.assert_close(p, q)
    loss, _ = dino(views(local=2))
    loss.backward()
    assert all(p.grad is None for p in teacher_params)
    trainable = [p for p in dino.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    torch.optim.SGD(trainable, lr=0.5).step()
    before = [q.clone() for q in teacher_params]
    dino.momentum_update(0.25)
    m = cosine_schedule(0.25, 0.9, 1.0)
    students = list(dino.backbone.parameters()) + list(dino.head.parameters())
    for p, q0, q in zip(students, before, teacher_params):
        torch.testing.assert_close(q, m * q0 + (1 - m) * p)
    assert float(dino.progress) == 0.25
    assert any((q - q0).abs().max() > 0 for q, q0 in zip(teacher_params, before))


def test_last_layer_frozen_early_in_training():
    dino = tiny_dino(tiny_resnet(), freeze_last_layer_progress=0.1)
    v = dino.head.last_layer.parametrizations.weight.original1
    dino(views())[0].backward()
    assert v.grad.abs().max() == 0
    dino.zero_grad()
    dino.set_progress(0.2)
    dino(views())[0].backward()
    assert v.grad.abs().max() > 0


def test_bad_input_messages():
    with pytest.raises(ValueError, match="headless"):
        DINO(timm.create_model("simwnw_resnet18_cifar", num_classes=10, layers=(1, 1, 1, 1)), 512)
    dino = tiny_dino(tiny_resnet())
    with pytest.raises(ValueError, match="two global views"):
        dino({"views": [torch.randn(2, 3, 32, 32)]})


def _train_steps(backbone, batch, steps=2):
    dino = tiny_dino(backbone)
    opt = torch.optim.AdamW([p for p in dino.parameters() if p.requires_grad], lr=1e-3)
    teacher0 = [p.clone() for p in dino.teacher_backbone.parameters()]
    for step in range(steps):
        loss, stats = dino(batch)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dino.momentum_update((step + 1) / 10)
    moved = [(p - p0).abs().max() for p, p0 in zip(dino.teacher_backbone.parameters(), teacher0)]
    assert max(moved) > 0
    assert dino.criterion.center.abs().sum() > 0
    return dino


def test_train_step_resnet_multicrop():
    _train_steps(tiny_resnet(), views(local=2))


def tiny_vit(img_size=32):
    return timm.create_model("simwnw_vit_tiny_patch16_224", num_classes=0, img_size=img_size, depth=2,
                             embed_dim=64, num_heads=2, dynamic_img_size=True)


def test_train_step_vit_multicrop():
    _train_steps(tiny_vit(), views(local=2))


def test_token_pruning_runs_in_student_and_teacher():
    """Global views go through encode_pair for both networks, so both prune; prune=False is dense."""
    from simwnw_hf.data.geometry import make_geometry

    backbone = tiny_vit(img_size=64).configure_pair_pruning(
        TokenPruningSettings("simprune", prune_layers=(1,), keep_rate=0.5))
    dino = tiny_dino(backbone)
    batch_size = 3
    full = make_geometry(0, 0, 64, 64, False, (64, 64), (64, 64))
    geometry = {k: torch.stack([v] * batch_size) for k, v in full.items()}
    x = torch.randn(batch_size, 3, 64, 64)
    batch = {"views": [x, x.flip(-1), torch.randn(batch_size, 3, 32, 32)], "geometry": [geometry, geometry]}
    loss, stats = dino(batch)
    assert torch.isfinite(loss)
    assert stats.pairs == 2 * batch_size  # student pair + teacher pair
    assert 0 < stats.pruned_flops < stats.dense_flops
    assert dino(batch, prune=False)[1] == PairStats()
    dino.teacher_backbone.pair_pruning_enabled = False
    with pytest.raises(ValueError, match="disagree on pair pruning"):
        dino(batch)
