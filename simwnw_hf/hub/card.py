"""Model card (``README.md``) of an exported encoder, rendered with ``huggingface_hub.ModelCard``.

The YAML header is a ``ModelCardData``: ``library_name: timm``, tags, datasets, license, a
``model-index`` holding the kNN / linear top-1, and the training-cost figures as extra keys
(``training_flops``, ``dense_training_flops``, ``flops_saving_pct``, ...), so the Hub can index them.
The body comes from the Jinja template ``model_cards/template.md``: usage with timm and transformers,
the recipe, a dense-baseline vs this-encoder results table, and limitations stated from the record
(steps, hardware, dataset size), never from hopes.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ["TEMPLATE_PATH", "render_card", "hub_dataset_id", "train_command"]

# a link to model_cards/template.md, shipped as package data so a non-editable install finds it
TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card_template.md"

FRAMEWORK_NAMES = {"simclr": "SimCLR", "simsiam": "SimSiam", "byol": "BYOL", "moco": "MoCo v2",
                   "vicreg": "VICReg", "dino": "DINO"}
PRUNING_NAMES = {"simwnw": "SimWnW", "simprune": "SimPrune", "evit": "EViT", "dualgate": "dual gating (VICReg dense + gated)",
                 "cdg": "CDG", "scdg": "SCDG", "back_razor": "Back Razor"}
CHECKPOINT_NAME = re.compile(r"^checkpoint-\d+$")
PAPER_EPOCHS = 800  # SimWnW paper, Table 1: training from scratch, 800 epochs


# Names a dataset is known by (a Hub id, its legacy short name, or a local folder / file name) -> Hub id.
# Matched exactly, never as a substring: "cifar100" is not "cifar10".
KNOWN_DATASETS = {
    "uoft-cs/cifar10": "uoft-cs/cifar10", "cifar10": "uoft-cs/cifar10", "cifar-10": "uoft-cs/cifar10",
    "uoft-cs/cifar100": "uoft-cs/cifar100", "cifar100": "uoft-cs/cifar100", "cifar-100": "uoft-cs/cifar100",
    "ilsvrc/imagenet-1k": "ILSVRC/imagenet-1k", "imagenet-1k": "ILSVRC/imagenet-1k", "imagenet1k": "ILSVRC/imagenet-1k",
    "imagenet": "ILSVRC/imagenet-1k", "imagenet-sample": "ILSVRC/imagenet-1k",
}
BUNDLED_SAMPLE_NAMES = ("sample", "default", "cifar10-sample")


def hub_dataset_id(dataset: Optional[str]) -> Optional[str]:
    """Hub dataset id for the card's ``datasets`` field, or None for a local dataset we cannot name.

    Known names match exactly (:data:`KNOWN_DATASETS`); a local path is named by a folder or file stem
    that is a known name (``/data/cifar100/train.parquet`` -> ``uoft-cs/cifar100``); the bundled
    ``sample`` is a subset of ``uoft-cs/cifar10``. Any other non-path text is taken as a Hub id.
    """
    if not dataset:
        return None
    text = str(dataset)
    if text in BUNDLED_SAMPLE_NAMES or "simwnw_hf/data/sample" in text:
        return "uoft-cs/cifar10"
    if text.lower() in KNOWN_DATASETS:
        return KNOWN_DATASETS[text.lower()]
    if text.startswith(("/", ".", "~")) or Path(text).exists():
        path = Path(text)
        for part in reversed((*path.parent.parts, path.stem)):  # nearest name first
            if part.lower() in KNOWN_DATASETS:
                return KNOWN_DATASETS[part.lower()]
        return None
    return text  # already a Hub id


def _dataset_label(source) -> str:
    """Human name of a dataset source; the bundled sample is named for what it is."""
    if str(source) in (*BUNDLED_SAMPLE_NAMES, "None"):
        return "CIFAR-10 subset bundled with simwnw_hf"
    return str(source)


def _flops(value) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    for unit, scale in (("PFLOPs", 1e15), ("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} FLOPs"


def _seconds(value) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    if value >= 3600:
        return f"{value / 3600:.2f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def _top1(record: dict, protocol: str) -> str:
    result = (record.get("eval") or {}).get(protocol)
    return f"{result['top1']:.2f}%" if isinstance(result, dict) and "top1" in result else "n/a"


def _method(record: dict) -> Optional[str]:
    return (record.get("pruning") or {}).get("method")


def train_command(record: dict, output_dir: Optional[str] = None) -> str:
    """The ``training/<framework>.py`` command line of the recorded run (``--output-dir`` if given).

    From the run's full config (``train_config``): every flag that differs from ``TrainConfig``'s
    default, plus model, dataset, image and batch size always; without it (older records), from the
    summary fields.
    """
    import dataclasses

    from simwnw_hf.train.config import TrainConfig

    cfg = record.get("train_config")
    if not cfg:
        cfg = {"framework": record["framework"], "model": record["model"],
               "model_args": json.dumps(record.get("model_args") or {}), "dataset": record.get("dataset"),
               "max_samples": record.get("num_images"), "image_size": record["image_size"],
               "batch_size": record["batch_size"], "max_steps": record["steps"], "lr": record.get("lr"),
               "seed": record.get("seed")}
        pruning = dict(record.get("pruning") or {})
        method = pruning.pop("method", None)
        cfg.update({"simwnw": True} if method == "simwnw" else {"token_pruning": method} if method else {})
        cfg.update({k: v for k, v in pruning.items() if v is not None})
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    always = ("model", "dataset", "image_size", "batch_size")
    args = ["python", f"training/{cfg['framework']}.py"]
    for name, value in cfg.items():
        if name in ("framework", "output_dir", "resume") or name not in defaults:
            continue
        default = defaults[name]
        if isinstance(value, list):
            value = tuple(value)
        if name == "model_args" and value in ("{}", {}):
            continue
        if name not in always and value == default:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is None:
            continue  # None is the default of every optional flag
        elif isinstance(value, tuple):
            args += [flag, *map(str, value)]
        else:
            args += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    if output_dir:
        args += ["--output-dir", output_dir]
    return " ".join(shlex.quote(a) for a in args)


def eval_commands(record: dict, run_dir: str) -> list:
    """``python -m simwnw_hf.eval`` command lines of the results that CLI produced (they name a checkpoint).

    ``run_dir`` replaces the local path the result recorded, which is not worth publishing.
    """
    commands = []
    for protocol, result in sorted((record.get("eval") or {}).items()):
        if not isinstance(result, dict) or result.get("checkpoint") is None:
            continue  # the trainer's own run-end kNN: part of the training command
        target = Path(str(result["checkpoint"]))
        checkpoint = f"{run_dir}/{target.name}" if CHECKPOINT_NAME.match(target.name) else run_dir
        args = ["python", "-m", "simwnw_hf.eval", protocol, "--checkpoint", checkpoint,
                "--dataset", str(result.get("dataset") or "sample")]
        for key, flag in (("num_train", "--max-train"), ("num_test", "--max-test"), ("k", "--k"), ("t", "--t"),
                          ("epochs", "--epochs"), ("lr", "--lr")):
            if result.get(key) is not None:
                args += [flag, str(result[key])]
        args += ["--output-json", f"{run_dir}/eval.json"]
        commands.append(" ".join(shlex.quote(a) for a in args))
    return commands


# what simwnw_hf.eval.splits records about bank and queries; stated in the limitations, not the protocol line
SPLIT_RECORD_KEYS = ("bank", "queries", "holdout", "queries_seen_in_training", "note")


def _split_limitations(record: dict) -> list:
    lines = []
    for protocol, result in sorted((record.get("eval") or {}).items()):
        if not isinstance(result, dict):
            continue
        holdout = result.get("holdout")
        if holdout:
            lines.append(f"{protocol} queries are a seeded class-stratified hold-out of split '{holdout['of_split']}' "
                         f"({holdout['fraction']:.0%} of each class, seed {holdout['seed']}): the dataset has no "
                         f"separate test split.")
        if result.get("queries_seen_in_training"):
            lines.append(f"The {protocol} queries were among the encoder's SSL training images, so its top-1 is "
                         f"optimistic.")
    return lines


def _limitations(record: dict) -> list:
    lines = []
    epochs = record.get("epochs")
    epochs_text = f"{float(epochs):.2f} epochs" if epochs is not None else "an unknown number of epochs"
    images = f" ({record['num_images']} images)" if record.get("num_images") else ""
    lines.append(f"Trained {record['steps']} steps ({epochs_text}) on {record.get('hardware') or 'unknown hardware'} "
                 f"on the {_dataset_label(record.get('dataset'))}{images} at {record.get('image_size')} px. This is not a "
                 f"reproduction of the SimWnW paper's {PAPER_EPOCHS}-epoch runs and its accuracy says little "
                 f"about what the recipe reaches at full length.")
    knn = (record.get("eval") or {}).get("knn")
    if isinstance(knn, dict) and knn.get("num_test") is not None and knn["num_test"] < 1000:
        lines.append(f"kNN top-1 was measured on {knn['num_test']} test images "
                     f"({knn.get('num_train', '?')} in the memory bank): a noisy estimate.")
    lines += _split_limitations(record)
    if not record.get("eval"):
        lines.append("No evaluation result is attached to this checkpoint.")
    if not record.get("final_checkpoint", True):
        lines.append(f"`{record.get('checkpoint')}` is an intermediate checkpoint of its run; its FLOPs and time "
                     "are the counters at that step.")
    inference = record.get("inference_flops")
    if inference:
        lines.append(f"Inference runs the gated network with eval-mode hard gates: {_flops(inference['flops_per_image'])} "
                     f"per image ({100 * inference['flops_ratio']:.1f}% of the dense network's "
                     f"{_flops(inference['dense_flops_per_image'])}, gate sparsity {inference['gate_sparsity']:.3f}), "
                     f"measured on {inference['num_images']} images of {_dataset_label(inference.get('dataset'))} "
                     f"(split `{inference.get('split')}`); the count depends on the input.")
    elif record.get("subnetwork") == "dense":
        lines.append(f"This is the dense sub-network of a dual-gate run (trained as `{record.get('trained_as')}`): "
                     "inference runs the full dense network.")
    elif _method(record):
        lines.append("Pruning only changes training cost: single-image inference runs the full dense network, "
                     "so inference FLOPs equal the dense encoder's.")
        lines.append("Training FLOPs are counted, not timed: wall-clock savings depend on how well the hardware "
                     "executes the sparse work, and the wall time above need not shrink with the FLOPs.")
    return lines


def _row(name: str, record: dict, dense_flops) -> dict:
    flops = record.get("train_flops")
    saving = "n/a"
    if flops is not None and dense_flops:
        saving = f"{100.0 * float(flops) / float(dense_flops):.1f}%"
    return {"name": name, "knn": _top1(record, "knn"), "linear": _top1(record, "linear"), "flops": _flops(flops),
            "saving": saving, "wall": _seconds(record.get("wall_time_s")), "hardware": record.get("hardware") or "n/a"}


def _eval_results(record: dict, dataset_type: str) -> list:
    """model-index entries; each names the dataset it was measured on and how many test images."""
    results = []
    names = {"knn": "kNN top-1", "linear": "linear-probe top-1"}
    for protocol, result in sorted((record.get("eval") or {}).items()):
        if not isinstance(result, dict) or "top1" not in result:
            continue
        args = {k: result[k] for k in ("k", "t", "epochs", "lr") if k in result}
        label = names.get(protocol, f"{protocol} top-1")
        if args:
            label += " (" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"
        if result.get("num_test"):
            label += f" on {result['num_test']} test images"
        evaluated_on = hub_dataset_id(result.get("dataset")) or dataset_type
        results.append(EvalResult(
            task_type="image-classification", task_name="Image Classification",
            dataset_type=evaluated_on, dataset_name=_dataset_label(result.get("dataset") or evaluated_on),
            dataset_split=result.get("test_split") or result.get("split"),
            metric_type="accuracy", metric_name=label, metric_value=round(float(result["top1"]), 4),
            metric_args=args or None))
    return results


def _how_made(record: dict, baseline: Optional[dict], publish_command: str) -> str:
    lines = []
    for title, rec in (("# dense baseline", baseline), ("# this encoder", record)):
        if rec is None:
            continue
        run_dir = rec.get("run_name") or "RUN_DIR"
        if baseline is not None:
            lines.append(title)
        lines += [train_command(rec, output_dir=run_dir), *eval_commands(rec, run_dir)]
    return "\n".join(lines + [publish_command])


def render_card(record: dict, config: dict, repo_id: str, baseline: Optional[dict] = None,
                dataset_id: Optional[str] = None, license: Optional[str] = None,
                publish_command: Optional[str] = None, notes=(), template_path=None) -> ModelCard:
    """Render the model card of an exported encoder.

    Args:
        record: the training record (``simwnw_hf.hub.record.training_record``).
        config: the exported ``config.json`` dict (architecture, num_features, pretrained_cfg).
        repo_id: ``ORG/NAME`` used in the usage snippets and as the model-index name.
        baseline: training record of the dense run to compare with (``--baseline-run``).
        dataset_id: Hub dataset id for the metadata; guessed from the record when None.
        license: defaults to the architecture's ``pretrained_cfg`` license.
        publish_command: the export / upload command line, shown after the training commands under
            "How it was made" (default: a ``hub_upload.py`` call).
        notes: extra limitation lines (e.g. "wall time measured on a shared machine").
    """
    method = _method(record)
    dataset_type = dataset_id or hub_dataset_id(record.get("dataset")) or Path(str(record.get("dataset"))).stem
    framework = record.get("framework")
    extras = {
        "ssl_framework": framework,
        "pruning_method": method or "none",
        "training_flops": record.get("train_flops"),
        "dense_training_flops": record.get("dense_train_flops"),
        "flops_saving_pct": None if record.get("flops_saving_pct") is None else round(record["flops_saving_pct"], 2),
        "overhead_flops": record.get("overhead_flops"),
        "training_steps": record.get("steps"),
        "inference_flops_per_image": (record.get("inference_flops") or {}).get("flops_per_image"),
        "mean_sparsity": record.get("mean_sparsity"),
        "training_wall_time_s": None if record.get("wall_time_s") is None else round(record["wall_time_s"], 1),
    }
    tags = ["image-feature-extraction", "timm", "transformers", "self-supervised-learning", "simwnw_hf",
            str(framework), *([method] if method else ["dense"])]
    datasets = [dataset_id or hub_dataset_id(record.get("dataset"))]
    card_data = ModelCardData(
        library_name="timm", pipeline_tag="image-feature-extraction", tags=tags,
        datasets=[d for d in datasets if d] or None,
        license=license or (config.get("pretrained_cfg") or {}).get("license") or "apache-2.0",
        model_name=repo_id.split("/")[-1],
        eval_results=_eval_results(record, dataset_type) or None,
        **{k: v for k, v in extras.items() if v is not None},
    )

    rows = []
    if baseline is not None:
        rows.append(_row(f"dense baseline ({FRAMEWORK_NAMES.get(baseline.get('framework'), baseline.get('framework'))}"
                         f", {baseline.get('steps')} steps)", baseline, record.get("dense_train_flops")))
    rows.append(_row(f"**this encoder** ({PRUNING_NAMES.get(method, 'dense')}, {record.get('steps')} steps)",
                     record, record.get("dense_train_flops")))
    if baseline is None:
        note = ("No dense baseline run was attached (`--baseline-run`); \"FLOPs vs dense\" compares with the "
                "dense FLOPs metered on this run's own batches.")
    else:
        note = "Both runs use the same FLOPs meter; \"FLOPs vs dense\" is relative to this run's dense FLOPs."
    protocols = []
    for protocol, result in sorted((record.get("eval") or {}).items()):
        if isinstance(result, dict):
            detail = {k: v for k, v in result.items() if k not in ("top1", "model", "checkpoint", "random_init",
                                                                   *SPLIT_RECORD_KEYS)}
            protocols.append(f"`{protocol}`: " + ", ".join(f"{k}={v}" for k, v in detail.items()))
    pruning_settings = {k: v for k, v in (record.get("pruning") or {}).items() if k != "method" and v is not None}
    pruning_text = "none (dense)" if not method else (
        f"{PRUNING_NAMES.get(method, method)} (" + ", ".join(f"{k}={v}" for k, v in pruning_settings.items()) + ")")
    if record.get("mean_removal_ratio") is not None:
        pruning_text += f"; mean removal ratio {record['mean_removal_ratio']:.3f}"
    for key, label in (("mean_sparsity", "mean sparsity"), ("mean_forward_flops_ratio", "mean gated forward FLOPs ratio"),
                       ("mean_activation_saved_fraction", "mean conv activation bytes saved")):
        if record.get(key) is not None:
            pruning_text += f"; {label} {record[key]:.3f}"
    if record.get("mean_kept_token_ratio") is not None:
        pruning_text += f"; mean kept-token ratio {record['mean_kept_token_ratio']:.3f}"
    model_args = record.get("model_args") or {}
    versions = record.get("versions") or {}
    saving = record.get("flops_saving_pct")
    batch = str(record.get("batch_size"))
    if record.get("global_batch_size") not in (None, record.get("batch_size")):
        batch += f" per process, {record['global_batch_size']} global"

    template_kwargs = dict(
        model_title=repo_id.split("/")[-1],
        repo_id=repo_id,
        architecture=config["architecture"],
        num_features=config.get("num_features"),
        framework_name=FRAMEWORK_NAMES.get(framework, framework),
        pruning_method=method,
        pruning_name=PRUNING_NAMES.get(method, method) if method else None,
        saving_pct_text="n/a" if saving is None else f"{saving:.1f}%",
        pruning_text=pruning_text,
        dataset_text=f"{_dataset_label(record.get('dataset'))}, split `{record.get('split')}`"
                     + (f", {record['num_images']} images" if record.get("num_images") else ""),
        steps=record.get("steps"),
        epochs_text="n/a" if record.get("epochs") is None else f"{float(record['epochs']):.2f}",
        image_size=record.get("image_size"),
        batch_size_text=batch,
        lr_text="framework default (scaled by batch size / 256)" if record.get("lr") is None else str(record["lr"]),
        seed_text=str(record.get("seed")),
        hardware=record.get("hardware") or "n/a",
        wall_time_text=_seconds(record.get("wall_time_s")),
        checkpoint=record.get("checkpoint"),
        final_checkpoint=record.get("final_checkpoint", True),
        versions_text=", ".join(f"{k} {v}" for k, v in versions.items()) or "n/a",
        git_commit=record.get("git_commit") or "unknown",
        train_command=train_command(record),
        overhead_text=_flops(record.get("overhead_flops")),
        results_rows=rows,
        results_note=note,
        protocol_text="; ".join(protocols) or "none recorded.",
        limitations=_limitations(record) + list(notes),
        model_args_text=", ".join(f"{k}={v!r}" for k, v in model_args.items()),
        how_made=_how_made(record, baseline, publish_command or f"python hub_upload.py RUN_DIR --repo-id {repo_id}"),
    )
    path = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not path.is_file():
        raise FileNotFoundError(f"model card template {path} not found")
    return ModelCard.from_template(card_data, template_path=str(path), **template_kwargs)
