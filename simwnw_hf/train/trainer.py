"""The one SSL training loop behind every ``training/*.py`` script (Accelerate, resumable, FLOPs-metered)."""

from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Optional

import timm
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import simwnw_hf  # noqa: F401  (registers simwnw_* timm models)
from simwnw_hf.data.datasets import load_image_dataset
from simwnw_hf.data.loader import EpochShuffleSampler, SkipUnreadable, ViewDataset
from simwnw_hf.data.views import MultiCropTransform, TwoViewTransform
from simwnw_hf.ssl.pair import finalize_stats, merge_stats

from .checkpoint import (checkpoint_dirs, find_resumable_checkpoint, load_trainer_state, remove_leftovers,
                         save_checkpoint)
from .config import TrainConfig
from .flops import dense_step_flops
from .run_files import append_metrics, check_finite, check_resume_config, truncate_metrics, write_json_atomic

logger = logging.getLogger(__name__)

# (base lr per 256 images, weight decay) per framework, for SGD; AdamW uses 5e-4 / 0.04 (DINO ViT-S recipe)
SGD_DEFAULTS = {"simclr": (0.3, 1e-6), "simsiam": (0.05, 5e-4), "byol": (0.2, 1.5e-6),
                "moco": (0.06, 5e-4), "vicreg": (0.3, 1e-4), "dino": (0.03, 1e-4)}


def is_vit(backbone: torch.nn.Module) -> bool:
    return hasattr(backbone, "blocks") and hasattr(backbone, "patch_embed")


def build_backbone(cfg: TrainConfig) -> torch.nn.Module:
    """Headless timm backbone with pair pruning configured as the config asks."""
    kwargs = cfg.model_kwargs
    if cfg.framework == "dino" and cfg.n_local_crops and "vit" in cfg.model:
        kwargs.setdefault("dynamic_img_size", True)  # local crops are smaller than the global views
    try:
        backbone = timm.create_model(cfg.model, num_classes=0, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"cannot create timm model '{cfg.model}': {exc}") from exc
    if cfg.pruning is not None:
        configure = getattr(backbone, "configure_pair_pruning", None)
        if configure is None:
            kind = "--simwnw" if cfg.simwnw else f"--token-pruning {cfg.token_pruning}"
            raise ValueError(f"{kind} needs a pruning-aware backbone (simwnw_resnet* for --simwnw, "
                             f"simwnw_vit_* for --token-pruning); '{cfg.model}' is not one")
        configure(**cfg.pruning)
    return backbone


def build_framework(cfg: TrainConfig, backbone: torch.nn.Module) -> torch.nn.Module:
    from simwnw_hf.ssl.frameworks import FRAMEWORKS

    if cfg.framework == "dino":
        from simwnw_hf.ssl.dino import DINO

        return DINO(backbone, backbone.num_features, **{"out_dim": cfg.dino_out_dim, **cfg.framework_kwargs})
    try:
        return FRAMEWORKS[cfg.framework](backbone, backbone.num_features, **cfg.framework_kwargs)
    except TypeError as exc:
        raise ValueError(f"--framework-args do not fit {cfg.framework}: {exc}") from exc


def build_transform(cfg: TrainConfig, backbone: torch.nn.Module):
    """Views normalised with the backbone's own mean/std (pair-pruning encoders rely on it)."""
    mean, std = backbone.pretrained_cfg.get("mean"), backbone.pretrained_cfg.get("std")
    if cfg.framework == "dino":
        return MultiCropTransform(cfg.image_size, cfg.local_crop_size, cfg.n_local_crops,
                                  global_scale=(max(cfg.crop_min_scale, 0.14), 1.0), mean=mean, std=std)
    return TwoViewTransform(cfg.image_size, scale=(cfg.crop_min_scale, 1.0), mean=mean, std=std)


def build_optimizer(cfg: TrainConfig, framework: torch.nn.Module, backbone: torch.nn.Module, world: int):
    name = cfg.optimizer or ("adamw" if is_vit(backbone) else "sgd")
    params = [p for p in framework.parameters() if p.requires_grad]
    if name == "sgd":
        base_lr, wd = SGD_DEFAULTS[cfg.framework]
        lr = cfg.lr if cfg.lr is not None else base_lr * cfg.batch_size * world / 256
        return torch.optim.SGD(params, lr=lr, momentum=0.9,
                               weight_decay=cfg.weight_decay if cfg.weight_decay is not None else wd)
    if name == "adamw":
        lr = cfg.lr if cfg.lr is not None else 5e-4 * cfg.batch_size * world / 256
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay if cfg.weight_decay is not None else 0.04)
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

    KEYS = ("train_flops", "dense_flops", "overhead_flops", "wall_time_s", "removal_ratio_sum",
            "kept_token_ratio_sum", "pruned_steps", "skipped_images")

    def __init__(self, state: Optional[dict] = None):
        self.values = {k: float((state or {}).get(k, 0.0)) for k in self.KEYS}
        if (state or {}).get("first_skipped_index") is not None:
            self.values["first_skipped_index"] = int(state["first_skipped_index"])

    def __getitem__(self, key):
        return self.values[key]

    def add(self, key, value):
        self.values[key] += float(value)


def train(cfg: TrainConfig) -> dict:
    """Pre-train, checkpoint, and (optionally) report kNN top-1; returns the run summary."""
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    if checkpoint_dirs(out) and not cfg.resume:
        raise FileExistsError(f"{out} already holds checkpoints; pass --resume to continue that run "
                              f"or choose another --output-dir (nothing was overwritten)")
    if cfg.resume:  # every process, before any work: a mismatch must not leave one process waiting
        check_resume_config(out / "run_config.json", cfg.to_dict())

    backbone = build_backbone(cfg)
    framework = build_framework(cfg, backbone)
    images = load_image_dataset(cfg.dataset, cfg.split, cfg.image_column, cfg.label_column, cfg.max_samples)
    views = ViewDataset(images, build_transform(cfg, backbone), seed=cfg.seed)
    sampler = EpochShuffleSampler(len(views), seed=cfg.seed)
    global_batch = cfg.batch_size * accelerator.num_processes
    if len(views) < global_batch:
        raise ValueError(f"dataset has {len(views)} images, fewer than one global batch "
                         f"({cfg.batch_size} x {accelerator.num_processes} processes)")
    loader = DataLoader(views, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, collate_fn=SkipUnreadable())
    optimizer = build_optimizer(cfg, framework, backbone, accelerator.num_processes)
    steps_per_epoch = len(loader) // accelerator.num_processes
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:  # as in transformers' Trainer, max_steps overrides epochs
        total_steps = cfg.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, cfg.warmup_steps))
    model, optimizer, loader, scheduler = accelerator.prepare(framework, optimizer, loader, scheduler)
    steps_per_epoch = len(loader)

    step, state = 0, {}
    ckpt = find_resumable_checkpoint(out, expect={"architecture": cfg.model, "framework": cfg.framework},
                                     shapes=backbone.state_dict()) if cfg.resume else None
    if cfg.resume and ckpt is None:
        accelerator.print(f"--resume: no checkpoint in {out} yet; starting from step 0")
    if ckpt is not None:
        accelerator.load_state(str(ckpt / "training_state"))
        state = load_trainer_state(ckpt)
        step = int(state["step"])
        accelerator.print(f"resumed from {ckpt} at step {step}")
    counters = _Counters(state.get("counters"))
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)
        write_json_atomic(out / "run_config.json", cfg.to_dict())
        truncate_metrics(metrics_path, step)

    unwrapped = accelerator.unwrap_model(model)
    dense_per_image: Optional[float] = state.get("dense_flops_per_image")
    bar = tqdm(total=total_steps, initial=step, disable=not accelerator.is_local_main_process, desc=cfg.framework)
    window = _empty_window()
    # schedules (SimPrune window, DINO teacher temperature) follow training progress
    progress_modules = [m for m in unwrapped.modules() if callable(getattr(m, "set_progress", None))]
    params = [p for p in unwrapped.parameters() if p.requires_grad]
    model.train()
    while step < total_steps:
        epoch = step // steps_per_epoch
        epoch_loader = accelerator.skip_first_batches(loader, step % steps_per_epoch) if step % steps_per_epoch else loader
        epoch_loader.set_epoch(epoch)
        views.set_epoch(epoch)  # accelerate's skip_first_batches loader does not pass the epoch on to the dataset
        steps_before = step
        for batch in epoch_loader:
            skipped = batch.pop("skipped")
            if len(skipped):
                counters.add("skipped_images", len(skipped))
                first = int(skipped.min())
                counters.values["first_skipped_index"] = min(counters.values.get("first_skipped_index", first), first)
            if "views" not in batch:  # every image of this batch was unreadable
                continue
            started = time.perf_counter()
            if dense_per_image is None:  # metered once: views have fixed shapes
                dense_per_image = dense_step_flops(unwrapped, batch) / batch["views"][0].shape[0]
            for module in progress_modules:
                module.set_progress(step / total_steps)
            loss, stats = model(batch)
            accelerator.backward(loss)
            check_finite(accelerator, loss, params, step + 1, out)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if hasattr(unwrapped, "momentum_update"):
                unwrapped.momentum_update((step + 1) / total_steps)
            elapsed = time.perf_counter() - started
            step += 1

            n_images = batch["views"][0].shape[0]
            dense = dense_per_image * n_images
            actual = dense - stats.get("dense_flops", 0.0) + stats.get("kept_flops", 0.0) + stats.get("overhead_flops", 0.0)
            counters.add("train_flops", actual)
            counters.add("dense_flops", dense)
            counters.add("overhead_flops", stats.get("overhead_flops", 0.0))
            counters.add("wall_time_s", elapsed)
            final = finalize_stats(dict(stats))
            if stats:
                counters.add("pruned_steps", 1)
                counters.add("removal_ratio_sum", final.get("removal_ratio", 0.0))
                counters.add("kept_token_ratio_sum", final.get("kept_token_ratio", 0.0))
            window["loss"] += loss.item()
            window["steps"] += 1
            window["images"] += n_images
            window["time"] += elapsed
            merge_stats(window["stats"], {**stats, "step_dense": dense, "step_actual": actual})
            bar.update(1)

            if step % cfg.log_every == 0 or step == total_steps:
                record = _log_record(accelerator, step, epoch, scheduler, window, counters, cfg)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
                if accelerator.is_main_process:
                    append_metrics(metrics_path, record)
                window = _empty_window()
            if step % cfg.save_every == 0 or step == total_steps:
                trainer_state = {"step": step, "epoch": step / steps_per_epoch, "total_steps": total_steps,
                                 "dense_flops_per_image": dense_per_image, "counters": counters.values}
                save_checkpoint(accelerator, unwrapped.backbone, out, step, trainer_state,
                                metadata={"architecture": cfg.model, "framework": cfg.framework, "step": str(step)},
                                keep=cfg.keep_checkpoints)
            if step >= total_steps:
                break
        if step == steps_before:  # every batch of the epoch was unreadable: looping again would never end
            raise ValueError(f"no image of epoch {epoch} could be decoded (see the 'skipping' warnings)")
    bar.close()
    if counters["skipped_images"]:
        accelerator.print(f"warning: skipped {int(counters['skipped_images'])} unreadable images "
                          f"(first at index {counters.values['first_skipped_index']})")

    summary = _summary(accelerator, cfg, counters, step, steps_per_epoch, images)
    summary["replica_checksums"] = _replica_checksums(accelerator, unwrapped.backbone)
    if cfg.knn_eval and images.label_column is not None and accelerator.is_main_process:
        summary["eval"] = {"knn": _final_knn(cfg, unwrapped.backbone, views.transform)}
    if accelerator.is_main_process:
        write_json_atomic(out / "summary.json", summary)
        if "eval" in summary:
            write_json_atomic(out / "eval.json", summary["eval"])
            print(json.dumps({"knn_top1": summary["eval"]["knn"]["top1"], "output_dir": str(out)}))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _empty_window() -> dict:
    """Running sums between two metrics.jsonl lines."""
    return {"loss": 0.0, "steps": 0, "images": 0, "time": 0.0, "stats": {}}


def _log_record(accelerator, step, epoch, scheduler, window, counters, cfg) -> dict:
    """One metrics.jsonl line; FLOPs and image counts summed over processes, ratios averaged."""
    stats = window["stats"]
    local = torch.tensor([window["loss"], window["images"], counters["train_flops"],
                          stats.get("step_dense", 0.0), stats.get("step_actual", 0.0),
                          stats.get("overhead_flops", 0.0)], dtype=torch.float64, device=accelerator.device)
    summed = accelerator.reduce(local, reduction="sum").tolist()
    n_proc = accelerator.num_processes
    record = {"step": step, "epoch": epoch, "loss": summed[0] / n_proc / window["steps"],
              "lr": scheduler.get_last_lr()[0],
              "images_per_s": summed[1] / max(window["time"], 1e-9),
              "train_flops": summed[2]}
    if cfg.pruning is not None:
        ratios = finalize_stats({k: stats.get(k, 0.0) for k in ("pairs", "removal_ratio", "kept_token_ratio") if k in stats})
        ratio_t = torch.tensor([ratios.get("removal_ratio", 0.0), ratios.get("kept_token_ratio", 0.0)],
                               dtype=torch.float64, device=accelerator.device)
        ratio_t = accelerator.reduce(ratio_t, reduction="mean").tolist()
        per_step = window["steps"]
        record.update({"dense_flops": summed[3] / per_step, "simwnw_flops": summed[4] / per_step,
                       "overhead_flops": summed[5] / per_step})
        if cfg.simwnw or cfg.token_pruning == "simwnw":
            record["removal_ratio"] = ratio_t[0]
        if cfg.token_pruning:
            record["kept_token_ratio"] = ratio_t[1]
    return record


def _replica_checksums(accelerator, backbone) -> list:
    """Weight checksum of every process's backbone; data-parallel replicas that drifted apart are a bug."""
    local = torch.stack([p.detach().double().sum() for p in backbone.parameters()]).sum().reshape(1)
    checksums = accelerator.gather(local.to(accelerator.device)).tolist()
    if any(c != checksums[0] for c in checksums):
        raise RuntimeError(f"data-parallel replicas hold different weights after training: {checksums}")
    return checksums


def _summary(accelerator, cfg, counters, step, steps_per_epoch, images) -> dict:
    totals = torch.tensor([counters[k] for k in _Counters.KEYS], dtype=torch.float64, device=accelerator.device)
    totals = dict(zip(_Counters.KEYS, accelerator.reduce(totals, reduction="sum").tolist()))
    n_proc = accelerator.num_processes
    pruned = totals["pruned_steps"]
    summary = {
        "framework": cfg.framework, "model": cfg.model, "model_args": cfg.model_kwargs,
        "pruning": {"method": cfg.pruning_method, **(cfg.pruning or {})},
        "dataset": images.source, "split": images.split, "num_images": len(images),
        "epochs": step / steps_per_epoch, "steps": step, "image_size": cfg.image_size,
        "batch_size": cfg.batch_size, "global_batch_size": cfg.batch_size * n_proc, "num_processes": n_proc,
        "train_flops": totals["train_flops"], "dense_train_flops": totals["dense_flops"],
        "flops_saving_pct": 100.0 * (1 - totals["train_flops"] / totals["dense_flops"]) if totals["dense_flops"] else 0.0,
        "overhead_flops": totals["overhead_flops"],
        "mean_removal_ratio": totals["removal_ratio_sum"] / pruned if pruned and cfg.pruning_method == "simwnw" else None,
        "mean_kept_token_ratio": totals["kept_token_ratio_sum"] / pruned if pruned and cfg.token_pruning else None,
        "wall_time_s": totals["wall_time_s"] / n_proc,
        "skipped_images": int(totals["skipped_images"]),
        "first_skipped_index": counters.values.get("first_skipped_index"),
        **environment_record(),
    }
    return summary


def _final_knn(cfg: TrainConfig, backbone, transform) -> dict:
    from simwnw_hf.eval.knn import knn_evaluate

    return knn_evaluate(backbone, cfg.dataset, image_size=cfg.image_size, mean=transform.mean, std=transform.std,
                        train_split=cfg.split, test_split=cfg.eval_split, image_column=cfg.image_column,
                        label_column=cfg.label_column, max_train=cfg.max_samples, max_test=cfg.eval_max_samples)
