"""``python -m simwnw_hf.eval {knn,linear} --checkpoint DIR --dataset ...``: prints one JSON line with ``top1``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

import simwnw_hf  # noqa: F401  (registers simwnw_* models)
from simwnw_hf.eval.splits import HOLDOUT_FRACTION, HOLDOUT_SEED, TrainingData
from simwnw_hf.models.dualgate_resnet import has_dense_path_keys
from simwnw_hf.models.family import vit_image_size
from simwnw_hf.train.checkpoint import (CHECKPOINT_RE, WEIGHTS_FILE, latest_checkpoint, safetensors_header,
                                        verify_checkpoint)


def _resolve_weights(checkpoint: Path) -> tuple[Path, dict]:
    """Weights file and the run config for a run dir, a checkpoint dir or an exported folder."""
    checkpoint = checkpoint.expanduser()
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if checkpoint.is_file():
        weights, folder = checkpoint, checkpoint.parent
    elif (checkpoint / WEIGHTS_FILE).is_file():
        weights, folder = checkpoint / WEIGHTS_FILE, checkpoint
    elif (latest := latest_checkpoint(checkpoint)) is not None:
        weights, folder = latest / WEIGHTS_FILE, latest
    else:
        raise FileNotFoundError(f"no {WEIGHTS_FILE} and no complete checkpoint-<step>/ in {checkpoint}")
    # a truncated or damaged file is one line (CheckpointError is a ValueError), not safetensors' traceback
    if CHECKPOINT_RE.match(folder.name) and weights == folder / WEIGHTS_FILE:
        verify_checkpoint(folder)
    else:
        safetensors_header(weights)
    for candidate in (folder / "run_config.json", folder.parent / "run_config.json"):
        if candidate.is_file():
            return weights, json.loads(candidate.read_text())
    config = folder / "config.json"  # an exported Hub folder (timm save_for_hf layout)
    if config.is_file():
        data = json.loads(config.read_text())
        size = data.get("pretrained_cfg", {}).get("input_size", [3, None, None])[-1]
        training = data.get("training") or {}
        return weights, {"model": data.get("architecture"), "image_size": size,
                         "model_args": json.dumps({k: v for k, v in data.get("model_args", {}).items()
                                                   if k != "num_classes"}),
                         "dataset": training.get("dataset"), "split": training.get("split"),
                         "known_training_data": bool(training)}
    return weights, {}


def _create_backbone(model_name: str, model_args: dict, from_run: bool) -> torch.nn.Module:
    """The headless architecture, or one line naming the problem."""
    if not timm.is_model(model_name):
        raise ValueError(f"unknown model {model_name!r}; pass a timm name such as simwnw_resnet18_cifar")
    try:
        return timm.create_model(model_name, num_classes=0, **model_args)
    except TypeError as exc:
        where = " (model_args from the run's run_config.json)" if from_run else ""
        raise ValueError(f"{model_name} does not accept model_args {model_args}{where}: {exc}") from exc


def _load_weights(backbone: torch.nn.Module, weights: Path, model_name: str, run_model) -> None:
    """Strict load; weights of another architecture are one line naming the mismatch, not a traceback."""
    state = load_file(str(weights))
    if callable(getattr(backbone, "add_dense_path", None)) and has_dense_path_keys(state):
        backbone.add_dense_path()  # a dual-gate training checkpoint also holds the dense path's BN
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        hint = (f"; the run was trained with --model {run_model}: omit --model or pass that one"
                if run_model and run_model != model_name else "")
        raise ValueError(f"{weights} does not fit {model_name}: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                         f"wrong shape {shapes[:3]}{hint}")
    backbone.load_state_dict(state, strict=True)


def build_eval_backbone(args) -> tuple[torch.nn.Module, int, str, object]:
    """(backbone, image size, model name, what it was trained on) for the CLI's arguments."""
    run = {}
    if args.checkpoint is not None:
        weights, run = _resolve_weights(Path(args.checkpoint))
    model_name = args.model or run.get("model")
    if model_name is None:
        raise ValueError("cannot tell the architecture: pass --model (no run_config.json next to the checkpoint)")
    same_model = run.get("model") in (None, model_name)
    model_args = run.get("model_args", "{}") if same_model else "{}"
    model_args = json.loads(model_args) if isinstance(model_args, str) else dict(model_args)
    torch.manual_seed(args.seed)
    backbone = _create_backbone(model_name, model_args, from_run=bool(run))
    size = run.get("image_size") if same_model and "img_size" not in model_args else None
    built = vit_image_size(backbone)
    if size and built is not None and built != int(size):
        # the trainer built the run's ViT for --image-size (or, with multi-crop, with dynamic_img_size)
        as_trained = {"dynamic_img_size": True} if run.get("n_local_crops") else {"img_size": int(size)}
        torch.manual_seed(args.seed)
        backbone = _create_backbone(model_name, {**model_args, **as_trained}, from_run=True)
    if args.checkpoint is not None and not args.random_init:
        _load_weights(backbone, weights, model_name, run.get("model"))
    image_size = args.image_size or run.get("image_size") or backbone.pretrained_cfg["input_size"][-1]
    return backbone, int(image_size), model_name, _training_data(args, run)


def _training_data(args, run: dict):
    """What the evaluated weights were trained on, for ``queries_seen_in_training`` in the result."""
    if args.random_init:
        return "untrained"
    if not run or run.get("known_training_data") is False:
        return None  # a bare weights file: nobody recorded its training data
    return TrainingData(run.get("dataset"), run.get("split"), bool(run.get("eval_holdout_excluded", False)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m simwnw_hf.eval", description=__doc__)
    parser.add_argument("protocol", choices=["knn", "linear"])
    parser.add_argument("--checkpoint", help="run dir, checkpoint-<step> dir, exported folder or .safetensors file")
    parser.add_argument("--model", help="timm model name (default: from the run's run_config.json)")
    parser.add_argument("--random-init", action="store_true", help="evaluate the architecture at random init")
    parser.add_argument("--dataset", default=None, help="Hub id, parquet file or folder (default: bundled sample)")
    parser.add_argument("--train-split", default=None, help="memory bank / probe training split (default: train)")
    parser.add_argument("--test-split", default="test",
                        help=f"query split; a dataset with one split gets a seeded class-stratified hold-out "
                             f"({HOLDOUT_FRACTION * 100:.0f}%% of each class, seed {HOLDOUT_SEED}) instead")  # %%: argparse %-formats help
    parser.add_argument("--image-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--t", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=100, help="linear probe epochs")
    parser.add_argument("--lr", type=float, default=1e-3, help="linear probe learning rate")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-json", default=None, help="also merge the result into this JSON file")
    args = parser.parse_args(argv)
    if args.checkpoint is None and not args.random_init:
        parser.error("pass --checkpoint, or --random-init with --model")

    backbone, image_size, model_name, trained_on = build_eval_backbone(args)
    mean, std = backbone.pretrained_cfg["mean"], backbone.pretrained_cfg["std"]
    common = dict(image_size=image_size, mean=mean, std=std, train_split=args.train_split,
                  test_split=args.test_split, image_column=args.image_column, label_column=args.label_column,
                  max_train=args.max_train, max_test=args.max_test, batch_size=args.batch_size,
                  trained_on=trained_on)
    if args.protocol == "knn":
        from .knn import knn_evaluate
        result = knn_evaluate(backbone, args.dataset, k=args.k, temperature=args.t, **common)
    else:
        from .linear import linear_evaluate
        result = linear_evaluate(backbone, args.dataset, epochs=args.epochs, lr=args.lr, seed=args.seed, **common)
    result.update({"model": model_name, "checkpoint": args.checkpoint, "random_init": bool(args.random_init)})
    if args.output_json:
        path = Path(args.output_json)
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged[args.protocol] = result
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(merged, indent=2))
        tmp.replace(path)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
