"""Evaluate one finished run for the harness: linear probe, kNN of every checkpoint, transfer kNN.

Runs as its own process (``python evaluate.py RUN_DIR ...``) so the harness can overlap it with other
trainings. It calls the same code as ``python -m simwnw_hf.eval`` and merges its results into
``harness_eval.json`` in the run folder (written atomically; what is there already is not recomputed, so
a run shared by two tables is evaluated once per kind).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _eval(argv):
    from simwnw_hf.eval.__main__ import main

    return main(argv)


def dense_subnetwork(run: Path, config: dict):
    """A dual-gate run's dense sub-network, as the plain timm ResNet it is exported to (None otherwise)."""
    import timm
    from safetensors.torch import load_file

    from simwnw_hf.hub.subnetworks import dense_twin
    from simwnw_hf.models.dualgate_resnet import dense_state_dict, has_dense_path_keys
    from simwnw_hf.train.checkpoint import WEIGHTS_FILE, latest_checkpoint

    weights = load_file(str(latest_checkpoint(run) / WEIGHTS_FILE))
    if not has_dense_path_keys(weights):
        return None
    model = timm.create_model(dense_twin(config["model"]), num_classes=0, **json.loads(config["model_args"]))
    model.load_state_dict(dense_state_dict(weights))
    return model.eval()


def subnetwork_eval(model, config: dict, dataset: str, linear: bool) -> dict:
    from simwnw_hf.eval.knn import knn_evaluate
    from simwnw_hf.eval.linear import linear_evaluate
    from simwnw_hf.eval.splits import TrainingData

    common = dict(image_size=config["image_size"], mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"],
                  test_split="test", max_train=config.get("max_samples"), max_test=config.get("eval_max_samples"),
                  trained_on=TrainingData(config["dataset"], config.get("split"), False))
    result = {"knn": knn_evaluate(model, dataset, **common)}
    if linear:
        result["linear"] = linear_evaluate(model, dataset, **common)
    return result


def checkpoints(run: Path):
    found = [(int(m.group(1)), p) for p in run.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return sorted(found)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--dataset", required=True, help="the dataset the run trained on (bank / probe training)")
    parser.add_argument("--linear", action="store_true", help="linear probe on the final encoder")
    parser.add_argument("--convergence", action="store_true", help="kNN of every saved checkpoint")
    parser.add_argument("--transfer", nargs=argparse.REMAINDER, default=None,
                        help="kNN on --transfer-dataset at the run's image size; the rest of the line goes to it")
    parser.add_argument("--transfer-dataset", default=None)
    args = parser.parse_args(argv)
    config = json.loads((args.run / "run_config.json").read_text())
    sizes = []
    if config.get("max_samples"):
        sizes += ["--max-train", str(config["max_samples"])]
    if config.get("eval_max_samples"):
        sizes += ["--max-test", str(config["eval_max_samples"])]
    out = args.run / "harness_eval.json"
    result = json.loads(out.read_text()) if out.is_file() else {}  # what another table already evaluated
    if args.linear and "linear" not in result:
        result["linear"] = _eval(["linear", "--checkpoint", str(args.run), "--dataset", args.dataset, *sizes])
    if args.convergence and "convergence" not in result:
        result["convergence"] = {str(step): _eval(["knn", "--checkpoint", str(path), "--dataset", args.dataset,
                                                   *sizes])["top1"]
                                 for step, path in checkpoints(args.run)}
    dense = dense_subnetwork(args.run, config)
    if dense is not None and ("dense_subnetwork" not in result or args.linear and "linear" not in
                              result["dense_subnetwork"]):
        result["dense_subnetwork"] = subnetwork_eval(dense, config, args.dataset, args.linear)
    if args.transfer is not None and "transfer_knn" not in result:
        if not args.transfer_dataset:
            parser.error("--transfer needs --transfer-dataset")
        result["transfer_knn"] = _eval(["knn", "--checkpoint", str(args.run), "--dataset", args.transfer_dataset,
                                        "--image-size", str(config["image_size"]), *args.transfer])
    result["complete"] = True
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    return result


if __name__ == "__main__":
    main()
