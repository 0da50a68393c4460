"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", arXiv:2104.14294).

Self-distillation without labels: a student (backbone + :class:`DINOHead`) matches the output
distribution of a teacher that is an EMA of the student (Sec. 3.1, Alg. 1). Collapse is avoided by
*centering* the teacher logits with an EMA of their batch mean and *sharpening* them with a low
temperature (Sec. 3.1, "Avoiding collapse"). Multi-crop (Sec. 3.1, Caron et al. 2020): the teacher
only sees the two global views, the student sees every view, and every (teacher global view,
student view) pair with different views contributes a cross-entropy term.

Layout: pure tensor functions (:func:`teacher_temperature`, :func:`dino_cross_entropy`,
:func:`batch_center`), thin modules (:class:`DINOHead`, :class:`DINOLoss`) and the framework
:class:`DINO` with the contract of docs/DESIGN.md: ``framework(batch, prune=True) -> (loss, stats)``
and ``momentum_update(progress)`` after each optimizer step. The two global views go through
:mod:`simwnw_hf.ssl.pair` for student *and* teacher with one plan made by the student, so a
pair-pruning encoder (SimWnW token removal, SimPrune, EViT) prunes both and matches once; local crops
take the plain single-image path.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from .base import SSLFramework
from .distributed import world_size
from .momentum import cosine_schedule, make_momentum_copy, update_momentum
from .loader_plan import loader_plan
from .pair import encode_pair, encode_view, plan_pair, plan_stats, supports_pair_pruning

__all__ = ["DINOHead", "DINOLoss", "DINO", "dino_cross_entropy", "batch_center", "teacher_temperature"]


def teacher_temperature(progress: float, warmup_temp: float, temp: float, warmup_progress: float) -> float:
    """Teacher temperature: linear ramp ``warmup_temp -> temp`` over the first ``warmup_progress`` of
    training, then constant (Sec. 3.1 / App. "teacher temperature warm-up": 0.04 -> 0.07 over 30 epochs)."""
    if warmup_progress <= 0 or progress >= warmup_progress:
        return temp
    return warmup_temp + (temp - warmup_temp) * max(progress, 0.0) / warmup_progress


def dino_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
                       student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Mean over (teacher view t, student view v != t) of ``H(P_t, P_v)`` (Alg. 1, multi-crop form).

    Args:
        student_logits: (V, B, K) student head outputs; views ``0..T-1`` are the global views.
        teacher_logits: (T, B, K) teacher head outputs of the global views (no gradient used).
        center: (1, K) or (K,) running centre of the teacher logits.
    """
    if student_logits.dim() != 3 or teacher_logits.dim() != 3:
        raise ValueError(f"expected (views, batch, dim) logits, got student {tuple(student_logits.shape)} "
                         f"and teacher {tuple(teacher_logits.shape)}")
    num_teacher, batch, dim = teacher_logits.shape
    num_student = student_logits.shape[0]
    if student_logits.shape[1:] != (batch, dim) or num_student < num_teacher:
        raise ValueError(f"student logits {tuple(student_logits.shape)} must cover the teacher's "
                         f"{num_teacher} global views with the same batch and dim {batch, dim}")
    if num_student * num_teacher - num_teacher == 0:
        raise ValueError("DINO needs at least two views (a single view has no pair of different views)")
    # at least float32 even under autocast: a low-precision sum over K = 65536 classes loses the signal
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    teacher_logits, student_logits = teacher_logits.detach().to(dtype), student_logits.to(dtype)
    # centering + sharpening of the teacher, temperature softmax of the student
    teacher_probs = F.softmax((teacher_logits - center.reshape(1, 1, dim).to(dtype)) / teacher_temp, dim=-1)
    student_logp = F.log_softmax(student_logits / student_temp, dim=-1)
    # ce[t, v] = mean over the batch of -sum_k P_t[k] log P_v[k]: (T, V); autocast would lower the einsum
    with torch.autocast(device_type=student_logp.device.type, enabled=False):
        ce = -torch.einsum("tbk,vbk->tv", teacher_probs, student_logp) / batch
    different_view = ~torch.eye(num_teacher, num_student, dtype=torch.bool, device=ce.device)  # (T, V)
    return ce[different_view].mean()


@torch.no_grad()
def batch_center(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean teacher logit over views, batch and *all processes* (Alg. 1 ``C``'s update target): (1, K).

    The sum is all-reduced when ``torch.distributed`` is initialised, so every process gets the same
    centre, computed from the global batch as in the reference implementation.
    """
    dim = teacher_logits.shape[-1]
    flat = teacher_logits.detach().float().reshape(-1, dim)  # (T*B, K)
    total = flat.sum(dim=0, keepdim=True)  # (1, K)
    count = flat.shape[0] * world_size()
    if world_size() > 1:
        dist.all_reduce(total)
    return total / count


class DINOHead(nn.Module):
    """DINO projection head (Sec. 3.1 / App. "Projection head"): a ``nlayers`` MLP with GELU (hidden 2048)
    to a 256-d bottleneck, l2 normalisation, and a weight-normalised linear layer to ``out_dim``
    (65536 in the paper). With ``norm_last_layer`` the weight-norm gain is fixed to 1, which the paper
    found to stabilise training.

    ``forward(x, freeze_last_layer=True)`` gives the last layer a zero gradient: the paper freezes it
    during the first epoch. The weights stay in the graph, so DDP still sees every parameter used.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < nlayers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0  # (out_dim, 1): the weight-norm "g"
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # (B, bottleneck), unit rows
        weight = self.last_layer.weight  # (out_dim, bottleneck), rows of norm g
        if freeze_last_layer:
            weight = weight.detach() + 0.0 * weight  # same value, zero gradient
        return F.linear(x, weight)


class DINOLoss(nn.Module):
    """DINO's loss with its centre state (Alg. 1): cross-entropy between the centred, sharpened teacher
    and the student over all pairs of different views, then ``C <- m C + (1 - m) mean(teacher)``.

    Temperatures are the paper's: student 0.1, teacher 0.04 (optionally warmed up from
    ``warmup_teacher_temp`` over the first ``warmup_teacher_temp_progress`` of training); centre momentum 0.9.
    The centre is updated in training mode only, from the teacher outputs of every process.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_temp_progress: float = 0.0,
                 center_momentum: float = 0.9):
        super().__init__()
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ValueError("DINO temperatures must be positive")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_progress = warmup_teacher_temp_progress
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: Sequence[torch.Tensor] | torch.Tensor,
                teacher_out: Sequence[torch.Tensor] | torch.Tensor, progress: float = 0.0) -> torch.Tensor:
        student = torch.stack(list(student_out))  # (V, B, K)
        teacher = torch.stack(list(teacher_out))  # (T, B, K)
        temp = teacher_temperature(progress, self.warmup_teacher_temp, self.teacher_temp,
                                   self.warmup_teacher_temp_progress)
        loss = dino_cross_entropy(student, teacher, self.center, self.student_temp, temp)
        if self.training:
            self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        m = self.center_momentum
        self.center.mul_(m).add_(batch_center(teacher), alpha=1.0 - m)


class DINO(SSLFramework):
    """DINO framework: student ``backbone`` + ``head``, EMA teacher ``teacher_backbone`` + ``teacher_head``.

    Args:
        backbone: timm model with ``num_classes=0`` (pooled pre-logits features); configure its pair
            pruning *before* building DINO, since the teacher is a copy of it.
        num_features: backbone feature size (``backbone.num_features``).
        out_dim, hidden_dim, bottleneck_dim, nlayers, use_bn_in_head, norm_last_layer: :class:`DINOHead`
            (paper ViT defaults 65536 / 2048 / 256 / 3 / False / True).
        student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_progress, center_momentum:
            :class:`DINOLoss`; progress is the fraction of training done (epochs / total epochs).
        momentum: teacher EMA momentum at the start; cosine schedule to 1 (paper: 0.996 -> 1).
        freeze_last_layer_progress: fraction of training during which the head's last layer gets no
            gradient (paper: the first epoch, i.e. ``1 / epochs``).
        teacher_backbone: optional separately built teacher (e.g. without drop-path, as in the paper);
            it gets the student's weights. By default the teacher is a frozen deep copy of ``backbone``.
    """

    name, sgd_lr, sgd_weight_decay, multi_crop = "dino", 0.03, 1e-4, True

    def __init__(self, backbone: nn.Module, num_features: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, nlayers: int = 3, use_bn_in_head: bool = False,
                 norm_last_layer: bool = True, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_temp_progress: float = 0.0,
                 center_momentum: float = 0.9, momentum: float = 0.996, freeze_last_layer_progress: float = 0.0,
                 teacher_backbone: nn.Module | None = None):
        super().__init__()
        if getattr(backbone, "num_classes", 0):
            raise ValueError(f"DINO needs a headless backbone (num_classes=0), got num_classes="
                             f"{backbone.num_classes}; create it with num_classes=0 or call reset_classifier(0)")
        self.backbone = backbone
        self.head = DINOHead(num_features, out_dim, hidden_dim, bottleneck_dim, nlayers, use_bn_in_head,
                             norm_last_layer)
        if teacher_backbone is None:
            self.teacher_backbone = make_momentum_copy(backbone)
        else:
            if teacher_backbone.state_dict().keys() != backbone.state_dict().keys():
                raise ValueError("teacher_backbone must have the student backbone's architecture "
                                 "(same state_dict keys)")
            teacher_backbone.load_state_dict(backbone.state_dict())
            self.teacher_backbone = teacher_backbone.requires_grad_(False)
        self.teacher_head = make_momentum_copy(self.head)
        self.criterion = DINOLoss(out_dim, student_temp, teacher_temp, warmup_teacher_temp,
                                  warmup_teacher_temp_progress, center_momentum)
        self.base_momentum = momentum
        self.freeze_last_layer_progress = freeze_last_layer_progress
        # training progress in [0, 1], set by set_progress / momentum_update; a buffer so a resumed run keeps it
        self.register_buffer("progress", torch.zeros(()))

    def forward(self, batch, prune: bool = True):
        views, geometry = batch["views"], batch.get("geometry") or [None, None]
        if len(views) < 2:
            raise ValueError(f"DINO needs two global views per image, the batch has {len(views)}")
        if supports_pair_pruning(self.backbone) != supports_pair_pruning(self.teacher_backbone):
            raise ValueError("student and teacher disagree on pair pruning: configure the backbone's pruning "
                             "before building DINO (the teacher is a copy), or configure both")
        x1, x2, g1, g2 = views[0], views[1], geometry[0], geometry[1]
        plan = plan_pair(self.backbone, x1, x2, g1, g2, prune, made=loader_plan(batch))
        f1, f2, stats = encode_pair(self.backbone, x1, x2, plan)
        features = [f1, f2] + self._encode_local(views[2:])
        progress = float(self.progress)
        frozen = progress < self.freeze_last_layer_progress
        student = self.head(torch.cat(features), freeze_last_layer=frozen).chunk(len(features))  # V x (B, K)
        with torch.no_grad():
            t1, t2, teacher_stats = encode_pair(self.teacher_backbone, x1, x2, plan)
            teacher = self.teacher_head(torch.cat([t1, t2])).chunk(2)  # 2 x (B, K)
        loss = self.criterion(student, teacher, progress)
        return loss, plan_stats(plan) + stats + teacher_stats

    def _encode_local(self, local_views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Student features of the local crops; consecutive crops of one size share a forward pass."""
        features: list[torch.Tensor] = []
        start = 0
        while start < len(local_views):
            end = start
            while end < len(local_views) and local_views[end].shape == local_views[start].shape:
                end += 1
            group = torch.cat(list(local_views[start:end]))  # ((end - start) * B, C, h, w)
            features.extend(encode_view(self.backbone, group).chunk(end - start))
            start = end
        return features

    def encoders(self):
        return [self.backbone, self.teacher_backbone]

    @classmethod
    def config_kwargs(cls, cfg) -> dict:
        return {"out_dim": cfg.dino_out_dim}

    @torch.no_grad()
    def set_progress(self, progress: float, epoch: Optional[float] = None) -> None:
        """Fraction of training done; drives the teacher temperature warm-up, the last-layer freeze and
        the encoders' pruning schedules."""
        super().set_progress(progress, epoch)
        self.progress.fill_(float(progress))

    @torch.no_grad()
    def momentum_update(self, progress: float) -> None:
        """EMA teacher update after an optimizer step; momentum follows a cosine from ``momentum`` to 1."""
        m = cosine_schedule(progress, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)
        self.set_progress(min(max(float(progress), 0.0), 1.0))
