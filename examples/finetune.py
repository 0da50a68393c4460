"""Fine-tune a pretrained simwnw_hf encoder on a labelled image dataset: linear probe or full fine-tune.

    # an encoder you published with hub_upload.py (simwnw_hf itself publishes none), linear probe on CIFAR-10
    python examples/finetune.py --model hf-hub:ORG/NAME --dataset cifar10 --mode linear
    # an exported folder (simwnw_hf.hub.export_run / hub_upload.py --export-dir), full fine-tune
    python examples/finetune.py --model local-dir:exports/encoder --dataset /path/to/train.parquet \
        --eval-dataset /path/to/test.parquet --mode full --epochs 5

Evaluation uses --eval-split (default ``test``); a dataset with a single split gets a seeded,
class-stratified 20% hold-out (seed 0) that is left out of the fine-tuning set.

The encoder is created by timm with a fresh classifier (``num_classes`` = classes of the dataset); the
pretrained weights fill everything else. ``--mode linear`` freezes the encoder (BatchNorm statistics
included) and trains the classifier only: the standard linear evaluation of SSL encoders (SimWnW
paper, §5). ``--mode full`` trains everything with a 10x smaller learning rate on the encoder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import create_transform, resolve_model_data_config
from torch.utils.data import DataLoader, Dataset

import simwnw_hf  # noqa: F401  (registers the simwnw_* architectures with timm)
from simwnw_hf.eval.splits import resolve_eval_splits
from simwnw_hf.models.weights import NoPublishedWeightsError, require_weight_source


class Labelled(Dataset):
    """(transformed image, label) pairs of a ``simwnw_hf`` ImageDataset."""

    def __init__(self, images, transform):
        if images.labels is None:
            raise ValueError(f"dataset {images.source!r} has no label column; name it with --label-column")
        self.images, self.labels, self.transform = images, images.labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images.get_image(index)), self.labels[index]


def build_model(name: str, num_classes: int, mode: str) -> torch.nn.Module:
    model = timm.create_model(name, pretrained=True, num_classes=num_classes)
    if mode == "linear":
        for param in model.parameters():
            param.requires_grad = False
        for param in model.get_classifier().parameters():
            param.requires_grad = True
    return model


def evaluate(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(dim=1) == y).sum().item()
            total += len(y)
    return 100.0 * correct / max(total, 1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="hf-hub:ORG/NAME, local-dir:PATH or a simwnw_* name")
    parser.add_argument("--dataset", default=None, help="Hub id, parquet file or folder (default: bundled sample)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--eval-dataset", default=None, help="default: --dataset")
    parser.add_argument("--eval-split", default="test",
                        help="evaluation split; a dataset with one split gets a seeded class-stratified 20%% "
                             "hold-out (seed 0), left out of the fine-tuning set")
    parser.add_argument("--image-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--mode", choices=["linear", "full"], default="linear")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="default: 0.1 linear (SGD), 1e-3 full (AdamW)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="write model.safetensors + results.json here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    if timm.is_model(args.model):  # a bare architecture name: fail before loading data if nothing is published
        require_weight_source(args.model, True, {})
    # never evaluate on the images the classifier is trained on: a real held-out split, or a hold-out
    splits = resolve_eval_splits(args.dataset, args.split, args.eval_split, args.image_column, args.label_column,
                                 args.max_samples, args.max_samples, query_dataset=args.eval_dataset)
    train_images, eval_images = splits.bank, splits.queries
    if splits.note:
        print(f"note: {splits.note}", file=sys.stderr)
    num_classes = train_images.num_classes
    model = build_model(args.model, num_classes, args.mode)
    data_config = resolve_model_data_config(model)  # the encoder's own size and normalisation
    train_loader = DataLoader(Labelled(train_images, create_transform(**data_config, is_training=args.mode == "full")),
                              batch_size=args.batch_size, shuffle=True, drop_last=len(train_images) > args.batch_size)
    eval_loader = DataLoader(Labelled(eval_images, create_transform(**data_config)), batch_size=args.batch_size)

    head = list(model.get_classifier().parameters())
    if args.mode == "linear":
        optimizer = torch.optim.SGD(head, lr=args.lr or 0.1, momentum=0.9, weight_decay=0.0)
    else:
        lr = args.lr or 1e-3
        head_ids = {id(p) for p in head}
        encoder = [p for p in model.parameters() if id(p) not in head_ids]
        optimizer = torch.optim.AdamW([{"params": encoder, "lr": lr / 10}, {"params": head, "lr": lr}],
                                      weight_decay=0.05)
    total = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))

    history = []
    for epoch in range(args.epochs):
        # linear probe: the frozen encoder stays in eval mode so BatchNorm statistics do not drift
        model.train(args.mode == "full")
        model.get_classifier().train()
        losses = []
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        top1 = evaluate(model, eval_loader)
        history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses), "top1": top1})
        print(json.dumps(history[-1]))

    # the fine-tuning set never holds the queries; what the encoder's SSL pre-training saw is not known here
    result = {"model": args.model, "mode": args.mode, **splits.record(queries_seen=None),
              "queries_in_finetuning_set": False, "num_classes": num_classes,
              "num_train": len(train_images), "num_eval": len(eval_images), "top1": history[-1]["top1"],
              "history": history}
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, NoPublishedWeightsError) as exc:  # bad input: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
