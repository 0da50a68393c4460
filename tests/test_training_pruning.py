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


def _check_stats_reach_every_output(tmp_path, summary, lines, ratios):
    """metrics.jsonl (new and old key names), summary.json and the exported record agree on the pruning."""
    from simwnw_hf.hub.export import export_run
    from simwnw_hf.hub.record import read_training_record

    for line in lines:
        assert line["pruned_flops"] == line["simwnw_flops"]            # old name kept as an alias
        assert 0 < line["overhead_flops"] and line["pruned_flops"] < line["dense_flops"]
        for key in ratios:
            assert 0 < line[key] < 1, (key, line)                        # something was pruned, not all
        for key in {"removal_ratio", "kept_token_ratio"} - set(ratios):
            assert key not in line
    assert lines[-1]["train_flops"] == pytest.approx(sum(l["pruned_flops"] for l in lines))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["pruning"] == summary["pruning"] and 0 < saved["flops_saving_pct"] < 100
    assert saved["train_flops"] == pytest.approx(saved["dense_train_flops"] * (1 - saved["flops_saving_pct"] / 100))
    means = {"removal_ratio": "mean_removal_ratio", "kept_token_ratio": "mean_kept_token_ratio"}
    for key, mean in means.items():
        if key in ratios:
            assert saved[mean] == pytest.approx(sum(l[key] for l in lines) / len(lines))
        else:
            assert saved[mean] is None
    record = read_training_record(export_run(tmp_path, tmp_path.parent / (tmp_path.name + "-export")))
    for key in ("pruning", "train_flops", "dense_train_flops", "flops_saving_pct", "overhead_flops",
                "mean_removal_ratio", "mean_kept_token_ratio"):
        assert record[key] == saved[key], key
    return saved


@pytest.mark.parametrize("options", [{}, {"wax_decision": "channel", "wax_peak": "map", "simwnw_executor": "auto"}])
def test_simwnw_resnet_stats_reach_metrics_summary_and_record(tmp_path, options):
    summary, lines = run(tmp_path, framework="simsiam", model="simwnw_resnet18_cifar", simwnw=True,
                         model_args='{"channels": [8, 16, 16, 16]}', **options)
    saved = _check_stats_reach_every_output(tmp_path, summary, lines, ("removal_ratio",))
    # the resolved settings are recorded: 5 px blocks and a 10 px window at 32 px, max_rings, waxing, executor
    assert saved["pruning"] == {"method": "simwnw", "block_size": 5, "psnr_threshold": 20.0, "search_window": 10,
                                "max_rings": 2, "executor": options.get("simwnw_executor", "fused"),
                                "wax_decision": options.get("wax_decision", "spatial"),  # the default
                                "wax_peak": options.get("wax_peak", "channel")}


@pytest.mark.parametrize("method", ["simwnw", "simprune", "evit"])
def test_token_pruning_stats_reach_metrics_summary_and_record(tmp_path, method):
    summary, lines = run(tmp_path, framework="byol", model="simwnw_vit_tiny_patch16_224", model_args=TINY_VIT,
                         token_pruning=method, prune_layers=(1, 2), psnr_threshold=15.0)
    ratios = ("removal_ratio", "kept_token_ratio") if method == "simwnw" else ("kept_token_ratio",)
    saved = _check_stats_reach_every_output(tmp_path, summary, lines, ratios)
    assert saved["pruning"]["method"] == method and saved["pruning"]["prune_layers"] == [1, 2]
    if method == "simwnw":
        assert saved["pruning"]["search_window"] == 16  # resolved: 2 x the 8 px patch


def test_wrong_family_flags_fail_in_one_line_before_loading_data(tmp_path):
    missing = str(tmp_path / "no-such-dataset")  # data loading would fail differently: it must not be reached
    cases = [(dict(model="simwnw_vit_tiny_patch16_224", model_args=TINY_VIT, simwnw=True), "--simwnw fits simwnw_resnet"),
             (dict(model="simwnw_resnet18_cifar", token_pruning="evit"), "--token-pruning fits simwnw_vit"),
             (dict(model="resnet18", simwnw=True), "--simwnw needs a pruning-aware backbone"),
             (dict(model="vit_tiny_patch16_224", model_args='{"img_size": 32}', token_pruning="simprune"),
              "--token-pruning needs a pruning-aware backbone")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            run(tmp_path / "x", dataset=missing, **kwargs)
        assert "\n" not in str(err.value)


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
