"""Turn a training run into a Hub-ready folder: ``model.safetensors`` + ``config.json`` + ``README.md``.

The folder is what ``timm.models.save_for_hf`` writes for a headless encoder (so
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` and ``"local-dir:PATH"`` work), with two
changes:

* ``model_args`` carries no ``num_classes``. timm 1.0.31 records it there, and transformers'
  ``TimmWrapperModel`` calls ``timm.create_model(arch, num_classes=0, **model_args)``, which then fails
  with a duplicate-keyword ``TypeError``. The head size still travels as the root ``num_classes``
  (read by both timm's ``_parse_model_cfg`` and ``TimmWrapperConfig``), so both libraries load it.
* a ``training`` key holds the training record (``simwnw_hf.hub.record``), which is also stored,
  JSON-encoded, in the safetensors header.

The folder is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written export, and a non-empty ``out_dir`` is only replaced when ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import timm
from timm.models._hub import save_config_for_hf
import torch
from safetensors.torch import load_file, save_file

import simwnw_hf  # noqa: F401  (registers simwnw_* architectures with timm)

from .card import render_card
from .comparable import check_baseline
from .record import find_checkpoint, record_to_metadata, training_record
from .subnetworks import (SUBNETWORKS, dense_subnetwork, gated_subnetwork, inference_batch, is_dualgate_record,
                          measure_inference_flops)

__all__ = ["export_run", "build_encoder", "hub_config", "default_repo_id", "recipe_tag", "CONFIG_FILE", "CARD_FILE"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"


def _slug(text: str) -> str:
    return "".join(ch for ch in str(text).lower() if ch.isalnum())


def recipe_tag(record: dict) -> str:
    """timm-style pretrained tag naming the recipe, e.g. ``simsiam_simwnw_cifar10``."""
    from .card import hub_dataset_id

    dataset = hub_dataset_id(record.get("dataset")) or Path(str(record.get("dataset"))).stem
    method = (record.get("pruning") or {}).get("method") or "dense"
    parts = (record["framework"], method, *([record["subnetwork"]] if record.get("subnetwork") else []),
             dataset.split("/")[-1])
    return "_".join(_slug(part) for part in parts)


def default_repo_id(record: dict, namespace: str = "simwnw-hf") -> str:
    """``simwnw-hf/<model>.<tag>``: a suggested repo id (load it as ``hf-hub:<id>``; nothing is published there yet)."""
    return f"{namespace}/{record['model']}.{recipe_tag(record)}"


def build_encoder(record: dict, state_dict: dict) -> torch.nn.Module:
    """The headless timm encoder of the record with ``state_dict`` loaded strictly.

    Raises a ValueError naming the offending keys when the weights do not fit the architecture.
    """
    name = record["model"]
    if not timm.is_model(name):
        raise ValueError(f"unknown timm architecture {name!r} in the run record")
    model = timm.create_model(name, pretrained=False, num_classes=0, **(record.get("model_args") or {}))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mis_shaped:
        raise ValueError(f"weights do not load into {name} (num_classes=0, model_args={record.get('model_args')}): "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {mis_shaped[:5]}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def hub_config(model: torch.nn.Module, record: dict) -> dict:
    """``config.json``: timm's ``save_for_hf`` layout, loadable by timm and by transformers' AutoModel."""
    size = int(record["image_size"])
    tag = recipe_tag(record)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_FILE
        save_config_for_hf(
            model, str(path),
            model_config={"pretrained_cfg": {"tag": tag}},
            model_args=dict(record.get("model_args") or {}),
            data_config={"input_size": (3, size, size)},
        )
        config = json.loads(path.read_text())
    # TimmWrapperModel passes num_classes=0 itself: a second one in model_args is a TypeError.
    config.get("model_args", {}).pop("num_classes", None)
    config["training"] = record
    return config


FOLDER_MODE, FILE_MODE = 0o755, 0o644  # what a published folder is everywhere else (mkdtemp makes 0700)


def _write_folder(folder: Path, state_dict: dict, config: dict, card_text: str, record: dict) -> None:
    metadata = {"format": "pt", "architecture": record["model"], **record_to_metadata(record)}
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / WEIGHTS_FILE), metadata=metadata)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_FILE).write_text(card_text)
    for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):
        os.chmod(folder / name, FILE_MODE)
    os.chmod(folder, FOLDER_MODE)


def _install(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` folder to ``out_dir``; an old folder is removed only after the swap."""
    old = None
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--force) to replace it")
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        else:
            out_dir.rmdir()
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_run(run_dir: Union[str, Path], out_dir: Union[str, Path], checkpoint=None, *,
               repo_id: Optional[str] = None, baseline_run: Union[None, str, Path] = None,
               dataset_id: Optional[str] = None, license: Optional[str] = None,
               publish_command: Optional[str] = None, notes=(), overwrite: bool = False,
               subnetwork: Optional[str] = None, flops_dataset: Optional[str] = None) -> Path:
    """Export one checkpoint of a training run as a Hub-ready folder.

    Args:
        run_dir: output dir of ``training/<framework>.py``.
        out_dir: folder to create; an existing non-empty one is replaced only with ``overwrite=True``.
        checkpoint: step, ``checkpoint-<step>`` name or path; None = newest complete checkpoint.
        repo_id: ``ORG/NAME`` shown in the card; default ``simwnw-hf/<model>.<recipe tag>``.
        baseline_run: run dir of the dense baseline for the card's results table; refused (ValueError)
            unless it differs from this run only in pruning (``comparable.check_baseline``).
        dataset_id / license / publish_command / notes: card options (see ``render_card``).
        subnetwork: dual-gate runs only (:mod:`.subnetworks`): ``gated`` (default; the registered
            ``simwnw_dualgate_*`` model, inference FLOPs measured on a batch and stated on the card) or
            ``dense`` (the dense sub-network as the plain timm ResNet twin).
        flops_dataset: images for the gated network's inference FLOPs (default: the run's dataset,
            its eval split).

    Returns:
        ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:  # fail before any work
        raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--force) to replace it")
    ckpt = find_checkpoint(run_dir, checkpoint)
    record = training_record(run_dir, ckpt)
    state_dict = load_file(str(ckpt / WEIGHTS_FILE))
    record, model = _encoder_to_export(record, state_dict, subnetwork, flops_dataset)
    config = hub_config(model, record)
    baseline = training_record(baseline_run) if baseline_run is not None else None
    if baseline is not None:
        check_baseline(record, baseline, baseline_run)  # before any file is written
    card = render_card(record, config, repo_id or default_repo_id(record), baseline=baseline,
                       dataset_id=dataset_id, license=license, publish_command=publish_command, notes=notes)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_folder(tmp, model.state_dict(), config, str(card), record)
        _install(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _encoder_to_export(record: dict, state_dict: dict, subnetwork: Optional[str], flops_dataset: Optional[str]):
    """``(record, encoder)`` of the export; a dual-gate run exports its gated or its dense sub-network."""
    if not is_dualgate_record(record):
        if subnetwork is not None:
            raise ValueError("--subnetwork applies to dual-gate runs (--gating dualgate) only")
        return record, build_encoder(record, state_dict)
    subnetwork = subnetwork or "gated"
    if subnetwork not in SUBNETWORKS:
        raise ValueError(f"--subnetwork must be one of {', '.join(SUBNETWORKS)}, got '{subnetwork}'")
    if subnetwork == "dense":
        record, state_dict = dense_subnetwork(record, state_dict)
        return record, build_encoder(record, state_dict)
    record, state_dict = gated_subnetwork(record, state_dict)
    model = build_encoder(record, state_dict)
    batch, source = inference_batch(record, model, dataset=flops_dataset)
    return {**record, "inference_flops": {**measure_inference_flops(model, batch), **source}}, model


def main(argv=None) -> int:
    """``python -m simwnw_hf.hub RUN_DIR OUT_DIR``: export a run to a Hub-ready folder without uploading."""
    import argparse
    import shlex
    import sys

    parser = argparse.ArgumentParser(prog="python -m simwnw_hf.hub", description=main.__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--checkpoint", default=None, help="step or checkpoint-<step> (default: newest)")
    parser.add_argument("--repo-id", default=None, help="ORG/NAME shown in the card (default: simwnw-hf/<model>.<tag>)")
    parser.add_argument("--baseline-run", default=None, help="dense run dir for the card's comparison table")
    parser.add_argument("--dataset-id", default=None, help="Hub dataset id for the card metadata")
    parser.add_argument("--note", action="append", default=[], help="extra limitation line for the card")
    parser.add_argument("--subnetwork", choices=SUBNETWORKS, default=None,
                        help="dual-gate runs: export the gated network (default) or the dense sub-network")
    parser.add_argument("--flops-dataset", default=None,
                        help="dual-gate gated export: images for the inference FLOPs (default: the run's dataset)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    command = "python -m simwnw_hf.hub " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        out = export_run(args.run_dir, args.out_dir, args.checkpoint, repo_id=args.repo_id,
                         baseline_run=args.baseline_run, dataset_id=args.dataset_id, notes=args.note,
                         publish_command=command, overwrite=args.force, subnetwork=args.subnetwork,
                         flops_dataset=args.flops_dataset)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
