"""Training: typed config, Accelerate loop, atomic checkpoints, FLOPs metering.

Layers: :func:`run` (what ``training/*.py`` calls) = :func:`~.trainer.train` (pre-training, writes
checkpoints and ``summary.json``) followed by the final kNN evaluation of the last checkpoint
(``eval.json``, and ``summary.json["eval"]``). The trainer itself never imports :mod:`simwnw_hf.eval`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

def final_knn(cfg) -> dict:
    """kNN top-1 of the run's newest checkpoint on ``cfg.eval_split`` (memory bank: the training split)."""
    import timm
    from safetensors.torch import load_file

    from simwnw_hf.eval.knn import knn_evaluate

    from .checkpoint import WEIGHTS_FILE, latest_checkpoint

    ckpt = latest_checkpoint(cfg.output_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no complete checkpoint in {cfg.output_dir} to evaluate")
    backbone = timm.create_model(cfg.model, num_classes=0, **cfg.model_kwargs)
    backbone.load_state_dict(load_file(str(ckpt / WEIGHTS_FILE)))
    mean, std = backbone.pretrained_cfg["mean"], backbone.pretrained_cfg["std"]
    return knn_evaluate(backbone, cfg.dataset, image_size=cfg.image_size, mean=mean, std=std,
                        train_split=cfg.split, test_split=cfg.eval_split, image_column=cfg.image_column,
                        label_column=cfg.label_column, max_train=cfg.max_samples, max_test=cfg.eval_max_samples)


def run(cfg) -> dict:
    """Pre-train, then (``--knn-eval``, labelled data, main process) evaluate; returns the run summary."""
    from accelerate import PartialState

    from .layout import EVAL_FILE, SUMMARY_FILE
    from .run_files import write_json_atomic
    from .trainer import train

    summary = train(cfg)
    if cfg.knn_eval and summary.get("labelled") and PartialState().is_main_process:
        out = Path(cfg.output_dir)
        summary["eval"] = {"knn": final_knn(cfg)}
        write_json_atomic(out / SUMMARY_FILE, summary)
        write_json_atomic(out / EVAL_FILE, summary["eval"])
        print(json.dumps({"knn_top1": summary["eval"]["knn"]["top1"], "output_dir": str(out)}))
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
