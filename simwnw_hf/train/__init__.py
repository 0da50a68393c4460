"""Training: typed config, Accelerate loop, atomic checkpoints, FLOPs metering.

Layers: :func:`run` (what ``training/*.py`` calls) = the run-end evaluation planned and checked before
step 1 (:mod:`.eval_plan`) -> :func:`~.trainer.train` (pre-training, writes checkpoints and
``summary.json``) -> the final kNN evaluation of the last checkpoint (``eval.json``,
``summary.json["eval"]``; ``--knn-random-init`` adds the random-init baseline) -> the closing report
(:mod:`.report`). The trainer itself never imports :mod:`simwnw_hf.eval`.
"""

from __future__ import annotations

import sys
from pathlib import Path

def _knn(cfg, backbone, trained_on) -> dict:
    from simwnw_hf.eval.knn import knn_evaluate

    mean, std = backbone.pretrained_cfg["mean"], backbone.pretrained_cfg["std"]
    return knn_evaluate(backbone, cfg.dataset, image_size=cfg.image_size, mean=mean, std=std,
                        train_split=cfg.split, test_split=cfg.eval_split, image_column=cfg.image_column,
                        label_column=cfg.label_column, max_train=cfg.max_samples, max_test=cfg.eval_max_samples,
                        trained_on=trained_on)


def _headless(cfg):
    """The backbone exactly as the trainer saves it (ViT size, multi-crop ``dynamic_img_size``; a CDG
    backbone's dense network, :func:`~simwnw_hf.gating.training.checkpoint_encoder`), so the checkpoint
    loads strictly; pair pruning only changes ``forward_pair``, never the plain forward."""
    from simwnw_hf.gating.training import checkpoint_encoder

    from .trainer import build_backbone

    return checkpoint_encoder(build_backbone(cfg))


def final_knn(cfg, excluded_holdout: bool = False) -> dict:
    """kNN top-1 of the run's newest checkpoint on ``cfg.eval_split`` (memory bank: the training split).

    ``excluded_holdout``: the run left the hold-out queries out of training (:mod:`.eval_plan`).
    """
    from safetensors.torch import load_file

    from simwnw_hf.eval.splits import TrainingData

    from .checkpoint import WEIGHTS_FILE, latest_checkpoint

    ckpt = latest_checkpoint(cfg.output_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no complete checkpoint in {cfg.output_dir} to evaluate")
    backbone = _headless(cfg)
    backbone.load_state_dict(load_file(str(ckpt / WEIGHTS_FILE)))
    return _knn(cfg, backbone, TrainingData(cfg.dataset, cfg.split, excluded_holdout=excluded_holdout))


def random_init_knn(cfg) -> dict:
    """The same kNN for the architecture at random init (``torch.manual_seed(cfg.seed)``): the baseline
    the trained encoder has to beat (``python -m simwnw_hf.eval knn --random-init`` measures the same)."""
    import torch

    torch.manual_seed(cfg.seed)
    return _knn(cfg, _headless(cfg), "untrained")


def run(cfg) -> dict:
    """Pre-train, then (``--knn-eval``, labelled data, main process) evaluate; returns the run summary.

    The evaluation is planned and checked before training (:func:`~.eval_plan.plan_run_end_eval`); the
    run ends with a short report (:func:`~.report.run_report`) on stdout.
    """
    import time

    from accelerate import PartialState

    from .eval_plan import plan_run_end_eval
    from .layout import EVAL_FILE, SUMMARY_FILE
    from .report import run_report
    from .run_files import write_json_atomic
    from .trainer import train

    started = time.perf_counter()
    plan = plan_run_end_eval(cfg)
    main_process = PartialState().is_main_process
    if plan.note and main_process:
        print(plan.note, file=sys.stderr)
    summary = train(cfg, plan.exclude)
    summary["eval_holdout_excluded"] = bool(plan.exclude)
    out = Path(cfg.output_dir)
    if plan.enabled and summary.get("labelled") and main_process:
        summary["eval"] = {"knn": final_knn(cfg, excluded_holdout=bool(plan.exclude))}
        if cfg.knn_random_init:
            summary["eval"]["knn_random_init"] = {**random_init_knn(cfg), "random_init": True}  # never exported
        write_json_atomic(out / SUMMARY_FILE, summary)
        write_json_atomic(out / EVAL_FILE, summary["eval"])
    if main_process:
        summary_time = time.perf_counter() - started
        print(run_report(summary, out, total_s=summary_time, skipped=None if plan.enabled else
                         (plan.note or "--no-knn-eval")))
    return summary


def main(framework: str, argv=None) -> dict:
    """Entry point of ``training/<framework>.py``: parse flags into a TrainConfig and :func:`run` it."""
    from .checkpoint import CheckpointWriteError
    from .config import parse_config

    defaults = {"framework": framework, "output_dir": f"runs/{framework}"}
    if framework == "dino":
        defaults.update(model="simwnw_vit_tiny_patch16_224", image_size=224)
    try:
        cfg = parse_config(argv, defaults, description=f"{framework} self-supervised pre-training")
        return run(cfg)
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError, CheckpointWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
