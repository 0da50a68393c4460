"""Results table of short gating runs next to their dense baselines (benchmarks/results/gating_training.md).

Reads the run dirs written by ``training/{vicreg,simclr}.py`` (commands in the results file) and, for
each final checkpoint, measures on the test split: kNN top-1 (the run's own ``eval.json``, plus the
dense path for a dual-gate run), the same kNN of a randomly initialised encoder, and the embedding std
(mean over dimensions of the per-dimension std of L2-normalised features: collapse -> 0, spread-out
features -> about 1/sqrt(dim)). Run::

    python benchmarks/gating_training.py RUNS_DIR --dataset /work/shared/data/cifar10 --max-test 1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

import simwnw_hf  # noqa: F401
from simwnw_hf.data.datasets import load_image_dataset
from simwnw_hf.eval.features import extract_features
from simwnw_hf.eval.knn import knn_evaluate
from simwnw_hf.hub.subnetworks import dense_twin
from simwnw_hf.models.dualgate_resnet import dense_state_dict, has_dense_path_keys
from simwnw_hf.train.checkpoint import WEIGHTS_FILE, latest_checkpoint

ROWS = [("vicreg_dense", "VICReg dense"), ("vicreg_dualgate", "VICReg + dual gate (t_d 0.3)"),
        ("vicreg_dualgate_anneal", "VICReg + dual gate (t_d 0.3), --gate-anneal-final 0.05"),
        ("vicreg_dualgate_anneal_b100", "VICReg + dual gate (t_d 0.3), --gate-anneal-final 0.05 --gate-budget-weight 100"),
        ("simclr_dense", "SimCLR dense"), ("simclr_cdg", "SimCLR + CDG"),
        ("simclr_backrazor", "SimCLR + Back Razor 0.9")]


def encoder(cfg: dict, weights=None, dense_path: bool = False):
    """The run's encoder; ``dense_path``: a dual-gate run's dense sub-network as the plain timm twin it exports to."""
    torch.manual_seed(0)
    name, args = cfg["model"], json.loads(cfg["model_args"])
    if dense_path:
        model = timm.create_model(dense_twin(name), num_classes=0, **args)
        if weights is not None:
            model.load_state_dict(dense_state_dict(weights))
        return model.eval()
    model = timm.create_model(name, num_classes=0, **args)
    if weights is not None:
        if has_dense_path_keys(weights):
            model.add_dense_path()  # a dual-gate training checkpoint holds the dense path's BN too
        model.load_state_dict(weights)
    return model.eval()


def embedding_std(model, images, cfg) -> float:
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    feats, _ = extract_features(model, images, cfg["image_size"], mean, std, 256)
    return float(torch.nn.functional.normalize(feats, dim=1).std(0).mean())


def whole_model_saved_bytes(cfg, weights, rho, images, batch=64) -> dict:
    """Bytes autograd saves for one training forward of the whole encoder, dense vs Back Razor convs."""
    from simwnw_hf.eval.features import eval_transform
    from simwnw_hf.gating.backrazor import convert_back_razor, saved_tensor_bytes

    dense = encoder(cfg, weights).train()
    razor = encoder(cfg, weights).train()
    convert_back_razor(razor, rho)
    t = eval_transform(cfg["image_size"], dense.pretrained_cfg["mean"], dense.pretrained_cfg["std"])
    x = torch.stack([t(images.get_image(i)) for i in range(batch)])
    out = {}
    for name, model in (("dense", dense), ("back_razor", razor)):
        _, out[name] = saved_tensor_bytes(lambda m=model: m(x).sum())
    out["batch"] = batch
    return out


def measure(model, cfg, args, images) -> dict:
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    knn = knn_evaluate(model, args.dataset, cfg["image_size"], mean, std, test_split="test",
                       max_train=cfg["max_samples"], max_test=args.max_test)
    return {"knn": knn["top1"], "std": embedding_std(model, images, cfg), "num_test": knn["num_test"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = load_image_dataset(args.dataset, "test", None, None, args.max_test)
    rows, out = [], {}
    randoms = {}
    for name, label in ROWS:
        run = Path(args.runs) / name
        if not (run / "summary.json").is_file():
            print(f"skip {name}: no summary.json")
            continue
        cfg = json.loads((run / "run_config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        weights = load_file(str(latest_checkpoint(run) / WEIGHTS_FILE))
        trained = measure(encoder(cfg, weights), cfg, args, images)
        key = (cfg["model"], cfg["model_args"])
        if key not in randoms:
            randoms[key] = measure(encoder(cfg), cfg, args, images)
        entry = {"label": label, "steps": summary["steps"], "saving": summary["flops_saving_pct"],
                 "pruning": summary["pruning"], "first": lines[0], "last": lines[-1], "trained": trained,
                 "random": randoms[key], "mean_sparsity": summary.get("mean_sparsity"),
                 "mean_activation_saved_fraction": summary.get("mean_activation_saved_fraction"),
                 "wall_time_s": summary["wall_time_s"]}
        if summary["pruning"]["method"] == "back_razor":
            entry["saved_bytes"] = whole_model_saved_bytes(cfg, weights, summary["pruning"]["rho"], images)
        if summary["pruning"]["method"] == "dualgate":
            entry["dense_path"] = measure(encoder(cfg, weights, dense_path=True), cfg, args, images)
            entry["dense_path_random"] = measure(encoder(cfg, dense_path=True), cfg, args, images)
        out[name] = entry
        last = lines[-1]
        fwd = last.get("forward_flops_ratio")
        target = summary["pruning"].get("target")
        rows.append("| {} | {} | {} | {} | {} | {} | {:.2f} / {:.2f} | {:.4f} / {:.4f} | {:.1f} |".format(
            label, summary["steps"],
            f"{summary['flops_saving_pct']:.1f}%",
            f"{last['pruned_flops'] / last['dense_flops']:.3f}" if "pruned_flops" in last else "1",
            "n/a" if fwd is None else f"{lines[0]['forward_flops_ratio']:.3f} -> {fwd:.3f}"
            + (f" (target {target})" if target else ""),
            "n/a" if last.get("sparsity") is None else f"{last['sparsity']:.3f}",
            trained["knn"], randoms[key]["knn"], trained["std"], randoms[key]["std"], summary["wall_time_s"] / 60))
        if "dense_path" in entry:
            d, r = entry["dense_path"], entry["dense_path_random"]
            rows.append(f"| ... its dense sub-network | | | | | | {d['knn']:.2f} / {r['knn']:.2f} | "
                        f"{d['std']:.4f} / {r['std']:.4f} | |")
    print("| run | steps | training FLOPs saved | last step FLOPs ratio | gated forward FLOPs ratio (first -> last log) "
          "| last sparsity | kNN top-1 trained / random init | embedding std trained / random | wall min |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for name, entry in out.items():
        if "saved_bytes" in entry:
            b = entry["saved_bytes"]
            frac = entry["mean_activation_saved_fraction"]
            conv_saved = "n/a" if frac is None else f"{100 * frac:.1f}%"
            print(f"\n{entry['label']}: whole encoder, one training forward of {b['batch']} images: autograd saves "
                  f"{b['back_razor'] / 2**20:.1f} MiB with Back Razor convs vs {b['dense'] / 2**20:.1f} MiB dense "
                  f"(the convs alone: {conv_saved} of their input bytes saved)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
