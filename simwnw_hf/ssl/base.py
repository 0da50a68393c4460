"""What every SSL framework shares: its recipe defaults, the two views of a batch, and progress.

Contract (docs/DESIGN.md): ``framework(batch, prune=True) -> (loss, PairStats)``; ``batch["views"][:2]``
are the two (global) views and ``batch["geometry"][:2]`` their crop/flip records. Frameworks with a
momentum encoder also expose ``momentum_update(progress)``, called by the trainer after each optimizer
step. ``set_progress(progress)`` is called by the trainer before each step and forwards the fraction of
training done to exactly the parts that follow it (the encoders' pruning schedules, DINO's teacher
temperature), listed by :meth:`SSLFramework.encoders`.
"""

from __future__ import annotations

from typing import ClassVar, List, Optional

import torch.nn as nn


def two_views(batch):
    """``(x1, x2, g1, g2)`` of a batch; a clear error when it holds fewer than two views."""
    views, geometry = batch["views"], batch.get("geometry") or [None, None]
    if len(views) < 2:
        raise ValueError(f"SSL needs two views per image, the batch has {len(views)}")
    return views[0], views[1], geometry[0], geometry[1]


class SSLFramework(nn.Module):
    """Base of the frameworks in :data:`simwnw_hf.ssl.frameworks.FRAMEWORKS`.

    Class attributes are the recipe defaults the trainer uses when a flag leaves them open:
    ``sgd_lr`` (SGD learning rate per 256 images) and ``sgd_weight_decay`` (from each paper's recipe);
    AdamW runs use :data:`ADAMW_LR` / :data:`ADAMW_WEIGHT_DECAY` (DINO ViT-S recipe) for every framework.
    ``multi_crop``: the framework takes local crops after the two global views (DINO).
    """

    name: ClassVar[str] = ""
    sgd_lr: ClassVar[float] = 0.05
    sgd_weight_decay: ClassVar[float] = 5e-4
    multi_crop: ClassVar[bool] = False

    def encoders(self) -> List[nn.Module]:
        """The backbones this framework runs (online first, then momentum/teacher)."""
        return [self.backbone]

    epoch: float = 0.0  # epochs done (fractional), set by set_progress; dual gating anneals by it
    training_progress: float = 0.0  # fraction of the run done, set by set_progress (dual gating's run-scaled annealing)

    def set_progress(self, progress: float, epoch: Optional[float] = None) -> None:
        """Fraction of training done, in [0, 1]; forwarded to the encoders that follow a schedule.

        ``epoch``: epochs done (the trainer passes ``step / steps_per_epoch``), kept in :attr:`epoch`
        for losses annealed per epoch (dual gating's bound loss); None leaves it unchanged.
        """
        if not 0.0 <= float(progress) <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.training_progress = float(progress)
        if epoch is not None:
            if not float(epoch) >= 0.0:
                raise ValueError(f"epoch must be >= 0, got {epoch}")
            self.epoch = float(epoch)
        for encoder in self.encoders():
            if callable(getattr(encoder, "set_progress", None)):
                encoder.set_progress(float(progress))

    @classmethod
    def config_kwargs(cls, cfg) -> dict:
        """Framework keyword arguments a :class:`~simwnw_hf.train.config.TrainConfig` field sets."""
        return {}


ADAMW_LR = 5e-4
ADAMW_WEIGHT_DECAY = 0.04
