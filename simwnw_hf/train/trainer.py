"""The one SSL training loop behind every ``training/*.py`` script (Accelerate, resumable, FLOPs-metered).

Read top to bottom: :func:`train` builds a :class:`Run` (:func:`build_run`: model, data, optimizer,
resumed state), meters the dense step once (:func:`meter_dense_step`), then repeats
:func:`train_step` -> :func:`account_step` -> :func:`maybe_log` -> :func:`maybe_save`, and ends with
:func:`finish_run` (``summary.json``). Framework specifics live with the frameworks
(:mod:`simwnw_hf.ssl.base`: recipe defaults, multi-crop, progress); the final evaluation is run by the
entry point (:func:`simwnw_hf.train.run`), not here.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional, Sequence

import timm
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import simwnw_hf  # noqa: F401  (registers simwnw_* timm models)
from simwnw_hf.data.datasets import ImageDataset, load_image_dataset, subset_indices
from simwnw_hf.data.loader import EpochShuffleSampler, SkipUnreadable, ViewDataset
from simwnw_hf.data.views import MultiCropTransform, TwoViewTransform
from simwnw_hf.gating.training import (attach_back_razor, checkpoint_encoder, is_dualgate_model, is_gating,
                                       prepare_backbone)
from simwnw_hf.models.family import is_vit, vit_image_size
from simwnw_hf.pruning import BackRazorSettings, PairStats, pruning_record, reported_ratios
from simwnw_hf.ssl.base import ADAMW_LR, ADAMW_WEIGHT_DECAY
from simwnw_hf.ssl.frameworks import FRAMEWORKS
from simwnw_hf.ssl.loader_plan import PlanInLoader, loader_plan
from simwnw_hf.ssl.pair import pair_planner

from .checkpoint import (checkpoint_dirs, find_resumable_checkpoint, load_trainer_state, remove_leftovers,
                         save_checkpoint)
from .config import TrainConfig
from .flops import dense_step_flops
from .layout import METRICS_FILE, RUN_CONFIG_FILE, SUMMARY_FILE
from .allocator import tune_malloc
from .precision import check_mixed_precision
from .run_files import (append_metrics, check_finite, check_resume_config, read_run_config, resume_history,
                        truncate_metrics, write_json_atomic)
from .summary import COUNTER_KEYS, GATING_RATIOS, cost_summary



# ----------------------------------------------------------------------------------------------- build


def build_backbone(cfg: TrainConfig) -> torch.nn.Module:
    """Headless timm backbone with pair pruning configured as the config asks.

    A pruning flag on a model that cannot run it fails here with one line, before any data is loaded.
    """
    kwargs = cfg.model_kwargs
    if FRAMEWORKS[cfg.framework].multi_crop and cfg.n_local_crops and "vit" in cfg.model:
        kwargs.setdefault("dynamic_img_size", True)  # local crops are smaller than the global views
    backbone = _create_backbone(cfg, kwargs)
    built = vit_image_size(backbone)
    if built is not None and built != cfg.image_size and not kwargs.get("dynamic_img_size"):
        if "img_size" in kwargs:
            raise ValueError(f"--model-args img_size={kwargs['img_size']} does not match --image-size "
                             f"{cfg.image_size}; pass the same size to both (or drop img_size)")
        # as timm does for fine-tuning at another resolution: the ViT is built for --image-size
        # (its position embedding has one entry per patch of that size)
        backbone = _create_backbone(cfg, {**kwargs, "img_size": cfg.image_size})
    settings = cfg.pruning
    if is_gating(settings) or is_dualgate_model(backbone):
        return prepare_backbone(backbone, settings)  # converts in place (CDG, Back Razor) or checks the family
    if settings is not None:
        if not callable(getattr(backbone, "configure_pair_pruning", None)):
            raise ValueError(f"{settings.flag} needs a pruning-aware backbone ({settings.families}); "
                             f"'{cfg.model}' is not one")
        backbone.configure_pair_pruning(settings)
    return backbone


def _create_backbone(cfg: TrainConfig, kwargs: dict) -> torch.nn.Module:
    """timm.create_model, with a model name or ``--model-args`` key that does not fit as one line."""
    try:
        return timm.create_model(cfg.model, num_classes=0, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"cannot create timm model '{cfg.model}': {exc}") from exc
    except TypeError as exc:  # e.g. "__init__() got an unexpected keyword argument 'widht'"
        raise ValueError(f"--model-args {json.dumps(cfg.model_kwargs)} do not fit '{cfg.model}': {exc}") from exc


def resolved_pruning(backbone: torch.nn.Module, cfg: TrainConfig) -> dict:
    """The pruning record of the settings the backbone actually uses (resolved), or ``{"method": None}``."""
    if cfg.pruning is None or is_gating(cfg.pruning):
        return pruning_record(cfg.pruning)
    return pruning_record(getattr(backbone, "pair_settings", None) or cfg.pruning)


def build_framework(cfg: TrainConfig, backbone: torch.nn.Module) -> torch.nn.Module:
    cls = FRAMEWORKS[cfg.framework]
    try:
        framework = cls(backbone, backbone.num_features, **{**cls.config_kwargs(cfg), **cfg.framework_kwargs})
    except TypeError as exc:
        raise ValueError(f"--framework-args do not fit {cfg.framework}: {exc}") from exc
    return attach_back_razor(framework) if isinstance(cfg.pruning, BackRazorSettings) else framework


def build_transform(cfg: TrainConfig, backbone: torch.nn.Module):
    """Views normalised with the backbone's own mean/std (pair-pruning encoders rely on it)."""
    mean, std = backbone.pretrained_cfg.get("mean"), backbone.pretrained_cfg.get("std")
    if FRAMEWORKS[cfg.framework].multi_crop:
        return MultiCropTransform(cfg.image_size, cfg.local_crop_size, cfg.n_local_crops,
                                  global_scale=(max(cfg.crop_min_scale, 0.14), 1.0), mean=mean, std=std)
    return TwoViewTransform(cfg.image_size, scale=(cfg.crop_min_scale, 1.0), mean=mean, std=std)


def build_optimizer(cfg: TrainConfig, framework: torch.nn.Module, backbone: torch.nn.Module, world: int):
    """SGD (the framework's recipe lr/wd, lr scaled by global batch / 256) for CNNs, AdamW for ViTs."""
    name = cfg.optimizer or ("adamw" if is_vit(backbone) else "sgd")
    params = [p for p in framework.parameters() if p.requires_grad]
    scale = cfg.batch_size * world / 256
    if name == "sgd":
        lr = cfg.lr if cfg.lr is not None else framework.sgd_lr * scale
        wd = cfg.weight_decay if cfg.weight_decay is not None else framework.sgd_weight_decay
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "adamw":
        lr = cfg.lr if cfg.lr is not None else ADAMW_LR * scale
        wd = cfg.weight_decay if cfg.weight_decay is not None else ADAMW_WEIGHT_DECAY
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"--optimizer must be sgd or adamw, got '{name}'")


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def environment_record() -> dict:
    """Versions, hardware and git commit for the run summary and model cards."""
    import accelerate
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    if torch.cuda.is_available():
        hardware = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    else:
        hardware = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"hardware": hardware, "git_commit": commit,
            "versions": {"simwnw_hf": simwnw_hf.__version__, "torch": torch.__version__, "timm": timm.__version__,
                         "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                         "python": platform.python_version()}}


class _Counters:
    """Cumulative, resumable run counters (this process's share; summed over processes when logged)."""

    KEYS = COUNTER_KEYS

    def __init__(self, state: Optional[dict] = None):
        self.values = {k: float((state or {}).get(k, 0.0)) for k in self.KEYS}
        if (state or {}).get("first_skipped_index") is not None:
            self.values["first_skipped_index"] = int(state["first_skipped_index"])

    def __getitem__(self, key):
        return self.values[key]

    def add(self, key, value):
        self.values[key] += float(value)


@dataclass
class _Window:
    """Running sums between two metrics.jsonl lines."""

    loss: float = 0.0
    steps: int = 0
    images: int = 0
    time: float = 0.0
    dense_step_flops: float = 0.0      # the dense step's FLOPs, summed over the window's steps
    actual_step_flops: float = 0.0     # the FLOPs the steps actually ran (pruned + overhead + heads)
    stats: PairStats = field(default_factory=PairStats)


@dataclass
class Run:
    """Everything a training run holds between steps."""

    cfg: TrainConfig
    accelerator: Accelerator
    out: Path
    model: torch.nn.Module            # the prepared (possibly DDP-wrapped) framework
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    views: ViewDataset
    images: ImageDataset
    pruning: dict                     # resolved pruning record
    total_steps: int
    steps_per_epoch: int
    step: int = 0
    counters: _Counters = field(default_factory=_Counters)
    dense_per_image: Optional[float] = None
    window: _Window = field(default_factory=_Window)
    step_lr: Optional[float] = None   # the lr the last optimizer step used (the scheduler has moved on since)

    @cached_property
    def params(self) -> list:
        """Trainable parameters, whose gradients the finite check covers (listed once, not every step)."""
        return [p for p in self.unwrapped.parameters() if p.requires_grad]

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS_FILE


def _check_output_dir(cfg: TrainConfig, out: Path, excluded: bool = False) -> None:
    if checkpoint_dirs(out) and not cfg.resume:
        raise FileExistsError(f"{out} already holds checkpoints; pass --resume to continue that run "
                              f"or choose another --output-dir (nothing was overwritten)")
    if cfg.resume:  # every process, before any work: a mismatch must not leave one process waiting
        if not checkpoint_dirs(out):  # as transformers' Trainer: nothing to resume from is an error
            raise FileNotFoundError(f"--resume: no checkpoint-<step>/ in {out} to resume from; "
                                    f"run without --resume to start this run from step 0")
        check_resume_config(out / RUN_CONFIG_FILE, {**cfg.to_dict(), "eval_holdout_excluded": excluded})


def _collate(cfg: TrainConfig, backbone: torch.nn.Module):
    """Drop unreadable images; with ``--match-in loader`` (or auto + workers) also make the pair plan."""
    collate = SkipUnreadable()
    if not cfg.matches_in_loader:
        return collate
    planner = pair_planner(backbone)
    if planner is None:
        if cfg.match_in == "loader":
            raise ValueError(f"--match-in loader: {cfg.model} plans nothing from pixels (its pruning decides inside "
                             "the network); drop --match-in")
        return collate
    return PlanInLoader(collate, planner)


def _build_loader(cfg: TrainConfig, views: ViewDataset, num_processes: int, collate) -> DataLoader:
    global_batch = cfg.batch_size * num_processes
    if len(views) < global_batch:
        raise ValueError(f"dataset has {len(views)} images, fewer than one global batch "
                         f"({cfg.batch_size} x {num_processes} processes)")
    sampler = EpochShuffleSampler(len(views), seed=cfg.seed)
    return DataLoader(views, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                      num_workers=cfg.num_workers, collate_fn=collate)


def _total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    # as in transformers' Trainer, max_steps overrides epochs
    return cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch


def _resume(run: Run) -> None:
    """Load the newest verified checkpoint's state into ``run`` when ``--resume`` asks for it."""
    if not run.cfg.resume:
        return
    ckpt = find_resumable_checkpoint(run.out, expect={"architecture": run.cfg.model, "framework": run.cfg.framework},
                                     shapes=checkpoint_encoder(run.unwrapped.backbone).state_dict())
    if ckpt is None:  # _check_output_dir saw checkpoint folders; they are gone now
        raise FileNotFoundError(f"--resume: no checkpoint-<step>/ in {run.out} to resume from; "
                                f"run without --resume to start this run from step 0")
    run.accelerator.load_state(str(ckpt / "training_state"))
    state = load_trainer_state(ckpt)
    run.step = int(state["step"])
    run.counters = _Counters(state.get("counters"))
    run.dense_per_image = state.get("dense_flops_per_image")
    run.accelerator.print(f"resumed from {ckpt} at step {run.step}")


def _write_run_config(run: Run, excluded: int = 0) -> None:
    if run.accelerator.is_main_process:
        run.out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(run.out)
        record = run.cfg.to_dict()
        # read by the evaluation: its hold-out queries were never SSL training images
        record.update(eval_holdout_excluded=bool(excluded), eval_holdout_images=excluded)
        if run.cfg.resume:  # safe changes (--max-steps, --save-every, ...) are recorded, not passed off as the run's
            record["resumed_with"] = resume_history(read_run_config(run.out / RUN_CONFIG_FILE), record, run.step)
        write_json_atomic(run.out / RUN_CONFIG_FILE, record)
        truncate_metrics(run.metrics_path, run.step)


def _training_images(cfg: TrainConfig, exclude: Optional[Sequence[int]]) -> ImageDataset:
    """The split to train on, less ``exclude`` (the evaluation's hold-out queries), then ``--max-samples``.

    Excluding before the subset makes the training images exactly the run-end kNN's memory bank.
    """
    if not exclude:
        return load_image_dataset(cfg.dataset, cfg.split, cfg.image_column, cfg.label_column, cfg.max_samples)
    full = load_image_dataset(cfg.dataset, cfg.split, cfg.image_column, cfg.label_column)
    left_out = set(exclude)
    keep = [i for i in range(len(full)) if i not in left_out]
    if cfg.max_samples is not None:
        keep = [keep[i] for i in subset_indices(len(keep), cfg.max_samples)]
    return ImageDataset(full.hf_dataset.select(keep), full.image_column, full.label_column, full.source, full.split)


def build_run(cfg: TrainConfig, exclude: Optional[Sequence[int]] = None) -> Run:
    """Model, data, optimizer and schedule, prepared by Accelerate and resumed when asked.

    ``exclude``: indices of the split never to train on (the evaluation hold-out of a one-split dataset,
    from :func:`simwnw_hf.eval.splits.planned_holdout_indices`); run_config.json records it.
    """
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    if accelerator.is_main_process:
        check_mixed_precision(accelerator.mixed_precision, accelerator.device)  # one warning line when it is slow
    if cfg.malloc_tuning and accelerator.device.type == "cpu":
        applied, why = tune_malloc()
        if accelerator.is_main_process and applied:
            accelerator.print(f"{why}; --no-malloc-tuning keeps glibc's defaults")
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    _check_output_dir(cfg, out, excluded=bool(exclude))
    backbone = build_backbone(cfg)   # flags that do not fit the model fail here, before data loading
    framework = build_framework(cfg, backbone)
    collate = _collate(cfg, backbone)
    images = _training_images(cfg, exclude)
    views = ViewDataset(images, build_transform(cfg, backbone), seed=cfg.seed)
    loader = _build_loader(cfg, views, accelerator.num_processes, collate)
    optimizer = build_optimizer(cfg, framework, backbone, accelerator.num_processes)
    total_steps = _total_steps(cfg, len(loader) // accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, cfg.warmup_steps))
    model, optimizer, loader, scheduler = accelerator.prepare(framework, optimizer, loader, scheduler)
    run = Run(cfg=cfg, accelerator=accelerator, out=out, model=model, unwrapped=accelerator.unwrap_model(model),
              optimizer=optimizer, scheduler=scheduler, loader=loader, views=views, images=images,
              pruning=resolved_pruning(backbone, cfg), total_steps=total_steps, steps_per_epoch=len(loader))
    _resume(run)
    _write_run_config(run, excluded=len(exclude or ()))
    return run


# ------------------------------------------------------------------------------------------------ step


def meter_dense_step(run: Run, batch) -> None:
    """Dense forward+backward FLOPs per image, metered once (views have fixed shapes), before the clock."""
    if run.dense_per_image is None:
        run.dense_per_image = dense_step_flops(run.unwrapped, batch) / batch["views"][0].shape[0]


def _count_skipped(run: Run, skipped: torch.Tensor) -> None:
    if len(skipped):
        run.counters.add("skipped_images", len(skipped))
        first = int(skipped.min())
        run.counters.values["first_skipped_index"] = min(run.counters.values.get("first_skipped_index", first), first)


def train_step(run: Run, batch):
    """One optimizer step; returns ``(loss, PairStats)``. Progress reaches the framework explicitly."""
    run.unwrapped.set_progress(run.step / run.total_steps, epoch=run.step / run.steps_per_epoch)
    loss, stats = run.model(batch)
    run.accelerator.backward(loss)
    check_finite(run.accelerator, loss, run.params, run.step + 1, run.out)
    run.step_lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if callable(getattr(run.unwrapped, "momentum_update", None)):
        run.unwrapped.momentum_update((run.step + 1) / run.total_steps)
    return loss, stats


def account_step(run: Run, loss: torch.Tensor, stats: PairStats, n_images: int, elapsed: float) -> None:
    """Add a finished step to the run counters and the logging window."""
    dense = run.dense_per_image * n_images
    # the metered dense step, with the pair forwards' dense share replaced by what they actually ran
    actual = dense - stats.dense_flops + stats.pruned_flops + stats.overhead_flops
    counters = run.counters
    counters.add("train_flops", actual)
    counters.add("dense_flops", dense)
    counters.add("overhead_flops", stats.overhead_flops)
    counters.add("wall_time_s", elapsed)
    counters.add("plan_time_s", stats.plan_seconds)
    if stats.pruned:
        counters.add("pruned_steps", 1)
        counters.add("removal_ratio_sum", stats.removal_ratio)
        counters.add("kept_token_ratio_sum", stats.kept_token_ratio)
        for name in GATING_RATIOS:
            counters.add(f"{name}_sum", getattr(stats, name))
    w = run.window
    w.loss += loss.item()
    w.steps += 1
    w.images += n_images
    w.time += elapsed
    w.dense_step_flops += dense
    w.actual_step_flops += actual
    w.stats = w.stats + stats


# ------------------------------------------------------------------------------------------------- log


def log_record(run: Run, epoch: int) -> dict:
    """One metrics.jsonl line; FLOPs and image counts summed over processes, ratios averaged.

    ``train_flops`` and ``train_time_s`` are cumulative (run start to this step); the rest describe the window.

    With pruning: per-step means ``dense_flops`` (dense step), ``pruned_flops`` (the step as run: pruned
    backbone + overhead + heads; ``simwnw_flops`` is its old name, kept one release for every method),
    ``overhead_flops``, and the ratios the method measures (``removal_ratio``, ``kept_token_ratio``).
    """
    acc, w = run.accelerator, run.window
    local = torch.tensor([w.loss, w.images, run.counters["train_flops"], w.dense_step_flops, w.actual_step_flops,
                          w.stats.overhead_flops], dtype=torch.float64, device=acc.device)
    summed = acc.reduce(local, reduction="sum").tolist()
    n_proc = acc.num_processes
    record = {"step": run.step, "epoch": epoch, "loss": summed[0] / n_proc / w.steps,
              "lr": run.step_lr,  # what the logged step used, not the scheduler's next value
              "images_per_s": summed[1] / max(w.time, 1e-9),
              "train_flops": summed[2],
              # cumulative wall time of the training steps so far (this process), the x-axis of
              # accuracy-vs-time curves; data loading between steps is not in it, as in summary.json
              "train_time_s": run.counters["wall_time_s"], "train_cpu_s": run.counters["cpu_time_s"],
              # cumulative wall time spent waiting for batches between those steps (0 when the workers keep up)
              "data_wait_s": run.counters["data_wait_s"],
              # cumulative wall time the steps spent making pruning plans (matching; in train_time_s)
              "plan_time_s": run.counters["plan_time_s"]}
    ratios = reported_ratios(run.pruning)
    if ratios:
        means = torch.tensor([getattr(w.stats, name) for name in ratios], dtype=torch.float64, device=acc.device)
        record.update({"dense_flops": summed[3] / w.steps, "pruned_flops": summed[4] / w.steps,
                       "simwnw_flops": summed[4] / w.steps, "overhead_flops": summed[5] / w.steps})
        record.update(zip(ratios, acc.reduce(means, reduction="mean").tolist()))
    return record


def write_metrics(run: Run, record: dict) -> None:
    if run.accelerator.is_main_process:
        append_metrics(run.metrics_path, record)


def maybe_log(run: Run, epoch: int, bar) -> None:
    if run.step % run.cfg.log_every and run.step != run.total_steps:
        return
    record = log_record(run, epoch)
    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
    write_metrics(run, record)
    run.window = _Window()


def maybe_save(run: Run) -> None:
    if run.step % run.cfg.save_every and run.step != run.total_steps:
        return
    trainer_state = {"step": run.step, "epoch": run.step / run.steps_per_epoch, "total_steps": run.total_steps,
                     "dense_flops_per_image": run.dense_per_image, "counters": run.counters.values,
                     "pruning": run.pruning}
    save_checkpoint(run.accelerator, checkpoint_encoder(run.unwrapped.backbone), run.out, run.step, trainer_state,
                    metadata={"architecture": run.cfg.model, "framework": run.cfg.framework, "step": str(run.step)},
                    keep=run.cfg.keep_checkpoints)


# ----------------------------------------------------------------------------------------------- train


def _epoch_batches(run: Run, epoch: int):
    """The loader of ``epoch``, skipping the batches a resumed run already trained on."""
    done = run.step % run.steps_per_epoch
    loader = run.accelerator.skip_first_batches(run.loader, done) if done else run.loader
    loader.set_epoch(epoch)
    run.views.set_epoch(epoch)  # accelerate's skip_first_batches loader does not pass the epoch on to the dataset
    return loader


def train(cfg: TrainConfig, exclude: Optional[Sequence[int]] = None) -> dict:
    """Pre-train and checkpoint; returns the run summary (also written to ``summary.json``).

    ``exclude``: indices of the split left out of training (see :func:`build_run`).
    """
    run = build_run(cfg, exclude)
    bar = tqdm(total=run.total_steps, initial=run.step, disable=not run.accelerator.is_local_main_process,
               desc=cfg.framework)
    run.model.train()
    while run.step < run.total_steps:
        epoch = run.step // run.steps_per_epoch
        steps_before = run.step
        waited = time.perf_counter()
        for batch in _epoch_batches(run, epoch):
            run.counters.add("data_wait_s", time.perf_counter() - waited)
            _count_skipped(run, batch.pop("skipped"))
            if "views" not in batch:  # every image of this batch was unreadable
                waited = time.perf_counter()
                continue
            made = loader_plan(batch)
            if made is not None:
                run.counters.add("loader_match_s", made.seconds)
            meter_dense_step(run, batch)
            started, cpu_started = time.perf_counter(), time.process_time()
            loss, stats = train_step(run, batch)
            elapsed = time.perf_counter() - started
            run.counters.add("cpu_time_s", time.process_time() - cpu_started)
            run.step += 1
            account_step(run, loss, stats, batch["views"][0].shape[0], elapsed)
            bar.update(1)
            maybe_log(run, epoch, bar)
            maybe_save(run)
            if run.step >= run.total_steps:
                break
            waited = time.perf_counter()
        if run.step == steps_before:  # every batch of the epoch was unreadable: looping again would never end
            raise ValueError(f"no image of epoch {epoch} could be decoded (see the 'skipping' warnings)")
    bar.close()
    return finish_run(run)


# ---------------------------------------------------------------------------------------------- finish


def _replica_checksums(accelerator, backbone) -> list:
    """Weight checksum of every process's backbone; data-parallel replicas that drifted apart are a bug."""
    local = torch.stack([p.detach().double().sum() for p in backbone.parameters()]).sum().reshape(1)
    checksums = accelerator.gather(local.to(accelerator.device)).tolist()
    if any(c != checksums[0] for c in checksums):
        raise RuntimeError(f"data-parallel replicas hold different weights after training: {checksums}")
    return checksums


def run_summary(run: Run) -> dict:
    """summary.json: what was trained, on what, at what cost (:func:`~.summary.cost_summary`)."""
    acc, cfg = run.accelerator, run.cfg
    totals = torch.tensor([run.counters[k] for k in COUNTER_KEYS], dtype=torch.float64, device=acc.device)
    totals = dict(zip(COUNTER_KEYS, acc.reduce(totals, reduction="sum").tolist()))
    n_proc = acc.num_processes
    return {
        "framework": cfg.framework, "model": cfg.model, "model_args": cfg.model_kwargs,
        "pruning": run.pruning,
        "dataset": run.images.source, "split": run.images.split, "num_images": len(run.images),
        "labelled": run.images.label_column is not None,
        "epochs": run.step / run.steps_per_epoch, "steps": run.step, "image_size": cfg.image_size,
        "batch_size": cfg.batch_size, "global_batch_size": cfg.batch_size * n_proc, "num_processes": n_proc,
        **cost_summary(totals, run.pruning, n_proc),
        "skipped_images": int(totals["skipped_images"]),
        "first_skipped_index": run.counters.values.get("first_skipped_index"),
        **environment_record(),
    }


def finish_run(run: Run) -> dict:
    """Warn about skipped images, check replicas, write summary.json, end Accelerate."""
    acc = run.accelerator
    if run.counters["skipped_images"]:
        acc.print(f"warning: skipped {int(run.counters['skipped_images'])} unreadable images "
                  f"(first at index {run.counters.values['first_skipped_index']})")
    summary = run_summary(run)
    summary["replica_checksums"] = _replica_checksums(acc, run.unwrapped.backbone)
    if acc.is_main_process:
        write_json_atomic(run.out / SUMMARY_FILE, summary)
    acc.wait_for_everyone()
    acc.end_training()
    return summary
