"""Pruning flags through the shared trainer: metrics gain the FLOPs/ratio columns, FLOPs add up."""

import json

import pytest

from simwnw_hf.train.config import TrainConfig
from simwnw_hf.train.trainer import train

TINY_VIT = '{"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 64, "num_heads": 2}'


def run(tmp_path, **kw):
    args = dict(image_size=32, batch_size=8, max_samples=32, max_steps=2, knn_eval=False, log_every=1,
                output_dir=str(tmp_path), framework_args='{"hidden_dim": 32, "out_dim": 32}')
    args.update(kw)
    summary = train(TrainConfig(**args))
    return summary, [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_simwnw_resnet_metrics(tmp_path):
    summary, lines = run(tmp_path, framework="simsiam", model="simwnw_resnet18_cifar", simwnw=True,
                         model_args='{"channels": [8, 16, 16, 16]}')
    for line in lines:
        assert {"removal_ratio", "dense_flops", "simwnw_flops", "overhead_flops"} <= set(line)
        assert 0 < line["removal_ratio"] < 1
        assert line["overhead_flops"] > 0 and line["simwnw_flops"] < line["dense_flops"]
    assert lines[-1]["train_flops"] == pytest.approx(sum(l["simwnw_flops"] for l in lines))
    assert summary["pruning"]["method"] == "simwnw" and 0 < summary["flops_saving_pct"] < 100


@pytest.mark.parametrize("method", ["simwnw", "simprune", "evit"])
def test_token_pruning_metrics(tmp_path, method):
    summary, lines = run(tmp_path, framework="byol", model="simwnw_vit_tiny_patch16_224", model_args=TINY_VIT,
                         token_pruning=method, prune_layers=(1, 2), psnr_threshold=15.0)
    for line in lines:
        assert 0 < line["kept_token_ratio"] <= 1 and line["simwnw_flops"] <= line["dense_flops"]
    assert summary["mean_kept_token_ratio"] is not None


def test_dino_with_simprune(tmp_path):
    summary, lines = run(tmp_path, framework="dino", model="simwnw_vit_tiny_patch16_224", model_args=TINY_VIT,
                         token_pruning="simprune", prune_layers=(1, 2), framework_args='{"out_dim": 128}',
                         n_local_crops=2, local_crop_size=16)
    assert len(lines) == 2 and lines[-1]["kept_token_ratio"] < 1


def test_dense_meter_counts_vit_attention_on_cpu():
    """The trainer's meter must see the fused attention kernel (stock FlopCounterMode misses it on CPU)."""
    import timm
    import torch

    from simwnw_hf.train.flops import count_step_flops

    vit = timm.create_model("simwnw_vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=1,
                            embed_dim=64, num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    total = count_step_flops(lambda: vit(x).sum().backward())
    n, d = 17, 64  # tokens (16 patches + cls), width
    attention_fwd = 2 * 2 * n * n * d * 2  # q@k^T and attn@v, 2 FLOPs per MAC, batch 2
    with torch.utils.flop_counter.FlopCounterMode(display=False) as stock:
        vit(x).sum().backward()
    assert total - stock.get_total_flops() >= attention_fwd
