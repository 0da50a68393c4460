"""SimSiam on a CIFAR-10 subset on CPU: kNN top-1 of the trained backbone vs the same backbone at random init.

    OMP_NUM_THREADS=1 python benchmarks/simsiam_cifar.py --data ../shared/data/cifar10 --train-images 5000 \
        --epochs 2 --mixed-precision bf16

``--data`` is anything :func:`simwnw_hf.data.datasets.load_image_dataset` reads with ``train`` and
``test`` splits (the tables were made with the CIFAR-10 parquet files ``cifar10/{train,test}.parquet``).

Writes ``benchmarks/results/simsiam_cifar.md`` (table + the command) and keeps the run in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

import simwnw_hf  # noqa: F401
from simwnw_hf.eval.knn import knn_evaluate
from simwnw_hf.train.checkpoint import WEIGHTS_FILE, latest_checkpoint
from simwnw_hf.train.config import TrainConfig
from simwnw_hf.train.trainer import train


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="dataset with train/test splits (folder of parquet files, Hub id)")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.06)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--output-dir", default="runs/bench_simsiam_cifar")
    parser.add_argument("--results", default="benchmarks/results/simsiam_cifar.md")
    args = parser.parse_args()

    cfg = TrainConfig(framework="simsiam", model="simwnw_resnet18_cifar", dataset=args.data, split="train",
                      max_samples=args.train_images, image_size=32, batch_size=args.batch_size, epochs=args.epochs,
                      lr=args.lr, output_dir=args.output_dir, mixed_precision=args.mixed_precision, knn_eval=False, save_every=10_000, log_every=10)
    started = time.time()
    summary = train(cfg)
    train_time = time.time() - started

    run = Path(args.output_dir)
    trained = timm.create_model(cfg.model, num_classes=0)
    trained.load_state_dict(load_file(str(latest_checkpoint(run) / WEIGHTS_FILE)))
    torch.manual_seed(cfg.seed)
    random_init = timm.create_model(cfg.model, num_classes=0)
    mean, std = trained.pretrained_cfg["mean"], trained.pretrained_cfg["std"]
    common = dict(dataset=args.data, image_size=32, mean=mean, std=std, train_split="train", test_split="test",
                  max_train=args.train_images, max_test=args.test_images)
    rows = {"trained": knn_evaluate(trained, **common), "random init": knn_evaluate(random_init, **common)}
    (run / "knn_vs_random.json").write_text(json.dumps(rows, indent=2))

    command = " ".join(["python"] + sys.argv)
    lines = [
        "# SimSiam, CIFAR ResNet-18, CIFAR-10 subset, CPU",
        "",
        f"Command: `{command}`",
        "",
        f"Training: SimSiam (SGD momentum 0.9, lr {cfg.lr}, cosine, {args.mixed_precision} autocast), {summary['steps']} steps ({summary['epochs']:.1f} epochs) of batch {cfg.batch_size} on "
        f"{args.train_images} CIFAR-10 train images (fixed random subset, seed 0), {train_time / 60:.1f} min wall time on {summary['hardware']}; "
        f"{summary['train_flops'] / 1e12:.1f} TFLOPs (forward+backward).",
        "",
        f"kNN (k={rows['trained']['k']}, t={rows['trained']['t']}, cosine): memory bank = the {args.train_images} "
        f"train images, queries = {rows['trained']['num_test']} CIFAR-10 test images (fixed random subset, seed 0).",
        "",
        "| backbone | kNN top-1 (%) |",
        "|---|---|",
        *(f"| {name} | {r['top1']:.2f} |" for name, r in rows.items()),
        "",
    ]
    Path(args.results).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
