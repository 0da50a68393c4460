"""SSL frameworks composed from a timm backbone, heads and a loss (lightly style: one small module each).

Contract: :mod:`simwnw_hf.ssl.base` (``framework(batch, prune=True) -> (loss, PairStats)``). Both views
go through :mod:`simwnw_hf.ssl.pair`: the plan of what to prune is made once per step by the online
backbone and the momentum encoder (BYOL, MoCo, DINO) runs the same plan, so matching is done and
counted once. :data:`FRAMEWORKS` is the one registry of frameworks (DINO included); its keys are the
``--framework`` names.
"""

from __future__ import annotations

from typing import Optional

import torch

from simwnw_hf.gating.training import encode_cdg_pair, encode_dualgate_pair
from simwnw_hf.pruning.gating import CDGSettings, DualGateSettings

from . import heads
from .base import SSLFramework, two_views
from .dino import DINO
from .distributed import gather_no_grad
from .losses import InfoNCEWithQueue, NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from .momentum import cosine_schedule, make_momentum_copy, update_momentum
from .loader_plan import loader_plan
from .pair import encode_pair, plan_pair, plan_stats


class SimCLR(SSLFramework):
    """SimCLR (Chen et al. 2020, arXiv:2002.05709): NT-Xent between projections of two views."""

    name, sgd_lr, sgd_weight_decay = "simclr", 0.3, 1e-6

    def __init__(self, backbone, num_features: int, hidden_dim: int = 2048, out_dim: int = 128,
                 temperature: float = 0.5, cdg: Optional[CDGSettings] = None):
        super().__init__()
        self.backbone = backbone
        self.projection_head = heads.simclr_projection(num_features, hidden_dim, out_dim)
        self.criterion = NTXentLoss(temperature)
        self.cdg = cdg  # CDG / SCDG (seed 003): branch 0 gates view 1, branch 1 view 2

    @classmethod
    def config_kwargs(cls, cfg) -> dict:
        return {"cdg": cfg.pruning} if isinstance(cfg.pruning, CDGSettings) else {}

    def forward(self, batch, prune: bool = True):
        x1, x2, g1, g2 = two_views(batch)
        if self.cdg is not None:
            f1, f2, extra, stats = encode_cdg_pair(self.backbone, x1, x2, self.cdg, prune)
            return self.criterion(self.projection_head(f1), self.projection_head(f2)) + extra, stats
        plan = plan_pair(self.backbone, x1, x2, g1, g2, prune, made=loader_plan(batch))
        f1, f2, stats = encode_pair(self.backbone, x1, x2, plan)
        return self.criterion(self.projection_head(f1), self.projection_head(f2)), plan_stats(plan) + stats


class SimSiam(SSLFramework):
    """SimSiam (Chen & He 2021, arXiv:2011.10566): predictor + stop-gradient, symmetric loss."""

    name, sgd_lr, sgd_weight_decay = "simsiam", 0.05, 5e-4

    def __init__(self, backbone, num_features: int, hidden_dim: int = 2048, out_dim: int = 2048,
                 pred_hidden_dim: int = 512):
        super().__init__()
        self.backbone = backbone
        self.projection_head = heads.simsiam_projection(num_features, hidden_dim, out_dim)
        self.prediction_head = heads.simsiam_prediction(out_dim, pred_hidden_dim)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, batch, prune: bool = True):
        x1, x2, g1, g2 = two_views(batch)
        plan = plan_pair(self.backbone, x1, x2, g1, g2, prune, made=loader_plan(batch))
        f1, f2, stats = encode_pair(self.backbone, x1, x2, plan)
        z1, z2 = self.projection_head(f1), self.projection_head(f2)
        p1, p2 = self.prediction_head(z1), self.prediction_head(z2)
        loss = 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))
        return loss, plan_stats(plan) + stats


class BYOL(SSLFramework):
    """BYOL (Grill et al. 2020, arXiv:2006.07733): online predictor regresses an EMA target."""

    name, sgd_lr, sgd_weight_decay = "byol", 0.2, 1.5e-6

    def __init__(self, backbone, num_features: int, hidden_dim: int = 4096, out_dim: int = 256,
                 momentum: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.projection_head = heads.byol_mlp(num_features, hidden_dim, out_dim)
        self.prediction_head = heads.byol_mlp(out_dim, hidden_dim, out_dim)
        self.backbone_momentum = make_momentum_copy(self.backbone)
        self.projection_head_momentum = make_momentum_copy(self.projection_head)
        self.base_momentum = momentum
        self.criterion = NegativeCosineSimilarity()

    def encoders(self):
        return [self.backbone, self.backbone_momentum]

    def forward(self, batch, prune: bool = True):
        x1, x2, g1, g2 = two_views(batch)
        plan = plan_pair(self.backbone, x1, x2, g1, g2, prune, made=loader_plan(batch))
        f1, f2, stats = encode_pair(self.backbone, x1, x2, plan)
        p1, p2 = self.prediction_head(self.projection_head(f1)), self.prediction_head(self.projection_head(f2))
        with torch.no_grad():
            t1, t2, target_stats = encode_pair(self.backbone_momentum, x1, x2, plan)
            z1, z2 = self.projection_head_momentum(t1), self.projection_head_momentum(t2)
        # 2 - 2 cos(p, z') per view (BYOL eq. 2), symmetrised
        loss = 2 + (self.criterion(p1, z2) + self.criterion(p2, z1))
        return loss, plan_stats(plan) + stats + target_stats

    def momentum_update(self, progress: float) -> None:
        m = cosine_schedule(progress, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)


class MoCo(SSLFramework):
    """MoCo v2 (Chen et al. 2020, arXiv:2003.04297): queries vs momentum keys and a queue of negatives.

    Symmetrised (each view is query once); keys are gathered over processes before they are queued,
    in training mode only.
    """

    name, sgd_lr, sgd_weight_decay = "moco", 0.06, 5e-4

    def __init__(self, backbone, num_features: int, hidden_dim: int = 2048, out_dim: int = 128,
                 queue_size: int = 4096, temperature: float = 0.2, momentum: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.projection_head = heads.moco_projection(num_features, hidden_dim, out_dim)
        self.backbone_momentum = make_momentum_copy(self.backbone)
        self.projection_head_momentum = make_momentum_copy(self.projection_head)
        self.momentum = momentum
        self.criterion = InfoNCEWithQueue(out_dim, queue_size, temperature)

    def encoders(self):
        return [self.backbone, self.backbone_momentum]

    def forward(self, batch, prune: bool = True):
        x1, x2, g1, g2 = two_views(batch)
        plan = plan_pair(self.backbone, x1, x2, g1, g2, prune, made=loader_plan(batch))
        f1, f2, stats = encode_pair(self.backbone, x1, x2, plan)
        q1, q2 = self.projection_head(f1), self.projection_head(f2)
        with torch.no_grad():
            t1, t2, key_stats = encode_pair(self.backbone_momentum, x1, x2, plan)
            k1, k2 = self.projection_head_momentum(t1), self.projection_head_momentum(t2)
        loss = 0.5 * (self.criterion(q1, k2) + self.criterion(q2, k1))
        if self.training:
            self.criterion.enqueue(gather_no_grad(torch.cat([k1, k2])))
        return loss, plan_stats(plan) + stats + key_stats

    def momentum_update(self, progress: float) -> None:
        update_momentum(self.backbone, self.backbone_momentum, self.momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, self.momentum)


class VICReg(SSLFramework):
    """VICReg (Bardes et al. 2022, arXiv:2105.04906): variance-invariance-covariance on expanded features."""

    name, sgd_lr, sgd_weight_decay = "vicreg", 0.3, 1e-4

    def __init__(self, backbone, num_features: int, hidden_dim: int = 2048, out_dim: int = 2048,
                 dual_gate: Optional[DualGateSettings] = None):
        super().__init__()
        self.backbone = backbone
        self.projection_head = heads.vicreg_projection(num_features, hidden_dim, out_dim)
        self.criterion = VICRegLoss()
        self.dual_gate = dual_gate  # seed 002: view 1 gated path, view 2 dense path, one shared projector

    @classmethod
    def config_kwargs(cls, cfg) -> dict:
        return {"dual_gate": cfg.pruning} if isinstance(cfg.pruning, DualGateSettings) else {}

    def forward(self, batch, prune: bool = True):
        x1, x2, g1, g2 = two_views(batch)
        if self.dual_gate is not None:
            f1, f2, extra, stats = encode_dualgate_pair(self.backbone, x1, x2, self.dual_gate, self.epoch, prune,
                                                          progress=self.training_progress)
            return self.criterion(self.projection_head(f1), self.projection_head(f2)) + extra, stats
        plan = plan_pair(self.backbone, x1, x2, g1, g2, prune, made=loader_plan(batch))
        f1, f2, stats = encode_pair(self.backbone, x1, x2, plan)
        return self.criterion(self.projection_head(f1), self.projection_head(f2)), plan_stats(plan) + stats


FRAMEWORKS = {cls.name: cls for cls in (SimCLR, SimSiam, BYOL, MoCo, VICReg, DINO)}
FRAMEWORK_NAMES = tuple(FRAMEWORKS)
