"""The gating methods as training methods (issue 11): flags through the trainer, stats in every output,
wrong-family errors before data loading, dense runs unchanged, export of the dual-gate sub-networks."""

import json
import math

import pytest
import timm
import torch

from simwnw_hf.pruning import BackRazorSettings, CDGSettings, DualGateSettings, PairStats, pruning_record
from simwnw_hf.pruning.settings import reported_ratios, settings_from_record
from simwnw_hf.train.config import TrainConfig, build_parser, parse_config
from simwnw_hf.train.trainer import train

TINY = '{"channels": [8, 16, 16, 16]}'
HEADS = '{"hidden_dim": 32, "out_dim": 32}'


def run(tmp_path, **kw):
    args = dict(image_size=32, batch_size=8, max_samples=32, max_steps=2, knn_eval=False, log_every=1,
                output_dir=str(tmp_path), framework_args=HEADS, model_args=TINY, model="simwnw_resnet18_cifar")
    args.update(kw)
    summary = train(TrainConfig(**args))
    return summary, [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]


METHODS = {
    "dualgate": dict(framework="vicreg", model="simwnw_dualgate_resnet18_cifar", gating="dualgate"),
    "cdg": dict(framework="simclr", gating="cdg"),
    "scdg": dict(framework="simclr", gating="scdg"),
    "back_razor": dict(framework="byol", back_razor=0.9),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_stats_reach_metrics_summary_and_record(tmp_path, method):
    from simwnw_hf.hub.export import export_run
    from simwnw_hf.hub.record import read_training_record

    summary, lines = run(tmp_path / "run", **METHODS[method])
    ratios = reported_ratios(summary["pruning"])
    assert summary["pruning"]["method"] == method and "sparsity" in ratios
    for line in lines:
        assert 0 < line["pruned_flops"] < line["dense_flops"], line     # gated/backrazor runs do less work
        assert 0 < line["sparsity"] < 1
        for key in ratios:
            assert key in line
    assert lines[-1]["train_flops"] == pytest.approx(sum(l["pruned_flops"] for l in lines))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < saved["flops_saving_pct"] < 100
    assert saved["mean_sparsity"] == pytest.approx(sum(l["sparsity"] for l in lines) / len(lines))
    if method == "back_razor":
        assert saved["pruning"] == {"method": "back_razor", "rho": 0.9}
        assert 0.8 < saved["mean_activation_saved_fraction"] < 0.9  # 1 - 0.1 kept - 1/32 mask (float32)
        assert saved["mean_forward_flops_ratio"] is None           # the forward is dense
    else:
        assert 0 < saved["mean_forward_flops_ratio"] < 1
        assert saved["mean_activation_saved_fraction"] is None
    kwargs = {"flops_dataset": None} if method == "dualgate" else {}
    record = read_training_record(export_run(tmp_path / "run", tmp_path / "export", **kwargs))
    for key in ("pruning", "train_flops", "dense_train_flops", "flops_saving_pct", "mean_sparsity",
                "mean_forward_flops_ratio", "mean_activation_saved_fraction"):
        assert record[key] == saved[key], key
    assert settings_from_record(record["pruning"]) == TrainConfig(**METHODS[method]).pruning


def test_settings_come_from_flags_with_help_and_round_trip():
    cfg = parse_config(["--framework", "vicreg", "--gating", "dualgate", "--gate-target", "0.5",
                        "--gate-budget-weight", "2"])
    assert cfg.pruning == DualGateSettings(target=0.5, budget_weight=2.0)
    assert parse_config(["--framework", "simclr", "--gating", "scdg", "--gate-groups", "2"]).pruning == \
        CDGSettings(method="scdg", gate_groups=2)
    assert parse_config(["--back-razor", "0.8"]).pruning == BackRazorSettings(rho=0.8)
    for settings in (DualGateSettings(), CDGSettings(method="scdg"), BackRazorSettings(0.8)):
        assert settings_from_record(pruning_record(settings)) == settings
    flags = {a.dest for a in build_parser()._actions}
    assert {"gating", "gate_target", "gate_budget_weight", "gate_groups", "gate_alpha", "back_razor"} <= flags


@pytest.mark.parametrize("kwargs, message", [
    (dict(framework="simclr", gating="dualgate"), "--gating dualgate fits the vicreg framework"),
    (dict(framework="vicreg", gating="cdg"), "--gating cdg|scdg fits the simclr framework"),
    (dict(framework="simclr", gating="gumbel"), "--gating must be one of dualgate, cdg, scdg"),
    (dict(back_razor=1.0), r"--back-razor RHO must be in \(0.0, 1.0\)"),
    (dict(back_razor=0.0), r"--back-razor RHO must be in \(0.0, 1.0\)"),
    (dict(framework="vicreg", gating="dualgate", gate_target=0.0), r"--gate-target must be in \(0.0, 1.0\]"),
    (dict(framework="simclr", gating="cdg", gate_groups=3), "--gate-groups must be an even integer"),
    (dict(simwnw=True, back_razor=0.5), "--simwnw and --back-razor are exclusive"),
    (dict(framework="vicreg", gating="dualgate", gate_anneal_final=0.0), r"--gate-anneal-final must be in \(0.0, 1.0\]"),
    (dict(framework="vicreg", gating="dualgate", gate_anneal_final=1.5), r"--gate-anneal-final must be in \(0.0, 1.0\]"),
    (dict(framework="vicreg", gating="dualgate", gate_anneal_alpha=-0.1), r"--gate-anneal-alpha must be in \[0.0, inf\)"),
    (dict(framework="vicreg", gating="dualgate", gate_anneal_alpha=0.1, gate_anneal_final=0.05),
     "--gate-anneal-alpha and --gate-anneal-final are exclusive"),
    (dict(framework="vicreg", gate_anneal_final=0.05), "anneal dual gating's bound loss; add --gating dualgate"),
])
def test_bad_gating_flags_fail_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        TrainConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_wrong_model_family_fails_before_loading_data(tmp_path):
    missing = str(tmp_path / "no-such-dataset")  # data loading would fail differently: it must not be reached
    vit = '{"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}'
    cases = [(dict(framework="vicreg", gating="dualgate"), "--gating dualgate fits simwnw_dualgate_resnet"),
             (dict(framework="vicreg", model="simwnw_dualgate_resnet18_cifar"), "trains only with --gating dualgate"),
             (dict(framework="simclr", model="simwnw_dualgate_resnet18_cifar", gating="cdg"),
              "trains only with --gating dualgate"),
             (dict(framework="simclr", gating="cdg", model="simwnw_vit_tiny_patch16_224", model_args=vit),
              "--gating cdg|scdg fits CNN encoders"),
             (dict(framework="byol", back_razor=0.5, model="simwnw_vit_tiny_patch16_224", model_args=vit),
              "--back-razor fits CNN encoders"),
             (dict(framework="simclr", gating="cdg", model_args='{"channels": [6, 16, 16, 16]}'),
              "--gating cdg|scdg does not fit 'simwnw_resnet18_cifar'")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            run(tmp_path / "x", dataset=missing, **kwargs)
        assert "\n" not in str(err.value)


def _weights(tmp_path):
    from safetensors.torch import load_file

    return load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))


@pytest.mark.parametrize("framework", ["vicreg", "simclr", "byol"])
def test_dense_runs_are_unchanged_by_the_gating_code(tmp_path, framework):
    """Flags off: the frameworks take the pair-contract path; the same run twice is bit-identical and
    equals a run through the framework built without any gating argument."""
    from simwnw_hf.ssl.frameworks import FRAMEWORKS

    cfg = TrainConfig(framework=framework)
    assert cfg.pruning is None and FRAMEWORKS[framework].config_kwargs(cfg) == {}
    a, lines = run(tmp_path / "a", framework=framework)
    assert "sparsity" not in lines[-1] and a["mean_sparsity"] is None and a["flops_saving_pct"] == 0
    run(tmp_path / "b", framework=framework)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def two_views():
    torch.manual_seed(0)
    return {"views": [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]}


def _tiny(name, **kw):
    return timm.create_model(name, num_classes=0, channels=[8, 16, 16, 16], **kw)


def test_prune_false_equals_the_dense_model(two_views):
    from simwnw_hf.gating.training import attach_back_razor, prepare_backbone
    from simwnw_hf.models.dualgate_resnet import dense_state_dict
    from simwnw_hf.ssl.frameworks import SimCLR, VICReg

    # dual gate: prune=False is the dense path, i.e. the dense twin with the dense state_dict
    torch.manual_seed(0)
    dg = prepare_backbone(_tiny("simwnw_dualgate_resnet18_cifar"), DualGateSettings())  # adds the dense path
    twin = _tiny("simwnw_resnet18_cifar")
    twin.load_state_dict(dense_state_dict(dg))
    vic = VICReg(dg, dg.num_features, 32, 32, dual_gate=DualGateSettings())
    ref = VICReg(twin, twin.num_features, 32, 32)
    ref.projection_head.load_state_dict(vic.projection_head.state_dict())
    loss, stats = vic(two_views, prune=False)
    ref_loss, _ = ref(two_views)
    assert stats == PairStats() and torch.equal(loss, ref_loss)
    gated_loss, gated_stats = vic(two_views)
    assert gated_stats.pruned and not torch.equal(gated_loss, ref_loss)

    # CDG: prune=False runs the converted convs as the original ones
    torch.manual_seed(0)
    plain = _tiny("simwnw_resnet18_cifar")
    conv = _tiny("simwnw_resnet18_cifar")
    conv.load_state_dict(plain.state_dict())
    prepare_backbone(conv, CDGSettings())
    a, b = SimCLR(conv, 16, 32, 32, cdg=CDGSettings()), SimCLR(plain, 16, 32, 32)
    b.projection_head.load_state_dict(a.projection_head.state_dict())
    loss, stats = a(two_views, prune=False)
    assert stats == PairStats() and torch.equal(loss, b(two_views)[0])

    # Back Razor: prune=False gives plain-conv gradients; prune=True only changes grad-weight
    torch.manual_seed(0)
    plain = _tiny("simwnw_resnet18_cifar")
    razor = _tiny("simwnw_resnet18_cifar")
    razor.load_state_dict(plain.state_dict())
    prepare_backbone(razor, BackRazorSettings(0.9))
    a, b = attach_back_razor(SimCLR(razor, 16, 32, 32)), SimCLR(plain, 16, 32, 32)
    b.load_state_dict(a.state_dict())
    loss, stats = a(two_views, prune=False)
    ref_loss = b(two_views)[0]
    loss.backward(), ref_loss.backward()
    assert stats == PairStats() and torch.equal(loss, ref_loss)
    assert torch.equal(razor.conv1.weight.grad, plain.conv1.weight.grad)
    a.zero_grad()
    loss, stats = a(two_views)
    loss.backward()
    assert torch.equal(loss, ref_loss) and stats.pruned and 0 < stats.pruned_flops < stats.dense_flops
    assert not torch.allclose(razor.conv1.weight.grad, plain.conv1.weight.grad)


def test_dualgate_step_stats_add_up_to_the_metered_dense_step(two_views):
    """PairStats' dense FLOPs are the backbone's share of the trainer's metered dense step (FlopCounterMode)."""
    from simwnw_hf.gating.training import prepare_backbone
    from simwnw_hf.ssl.frameworks import VICReg
    from simwnw_hf.train.flops import count_step_flops, dense_step_flops

    torch.manual_seed(0)
    dg = prepare_backbone(_tiny("simwnw_dualgate_resnet18_cifar"), DualGateSettings())
    vic = VICReg(dg, dg.num_features, 32, 32, dual_gate=DualGateSettings()).train()
    _, stats = vic(two_views)
    metered = dense_step_flops(vic, two_views)
    f = torch.randn(4, dg.num_features, requires_grad=True)
    head = count_step_flops(lambda: vic.criterion(vic.projection_head(f), vic.projection_head(f)).backward())
    # the heads run on two views; the gate-free dense backbone is the rest
    assert metered - stats.dense_flops == pytest.approx(head, rel=0.02)
    assert stats.pruned_flops + stats.overhead_flops < stats.dense_flops


def test_dualgate_epoch_reaches_the_bound_loss(two_views):
    """The trainer passes the epoch through set_progress; the bound loss anneals with it."""
    from simwnw_hf.gating.training import prepare_backbone
    from simwnw_hf.ssl.frameworks import VICReg

    torch.manual_seed(0)
    dg = prepare_backbone(_tiny("simwnw_dualgate_resnet18_cifar"), DualGateSettings()).eval()  # eval: no sampling noise, same masks each call
    vic = VICReg(dg, dg.num_features, 32, 32, dual_gate=DualGateSettings(budget_weight=0.0)).eval()
    vic.set_progress(0.0, epoch=0.0)
    early = vic(two_views)[0]
    vic.set_progress(0.5, epoch=200.0)
    assert vic.epoch == 200.0 and vic(two_views)[0] < early


def test_bound_loss_annealing_schedules():
    """Default: the authors' exp(-0.02 epoch); --gate-anneal-alpha: another rate; --gate-anneal-final P:
    the same exponential with the rate scaled to the run, P ** progress (P at the last step)."""
    default = TrainConfig(framework="vicreg", gating="dualgate").pruning
    assert default.anneal_final is None and default.anneal_alpha == 0.02
    assert default.bound_p(epoch=50.0, progress=0.1) == pytest.approx(math.exp(-1.0))
    fast = TrainConfig(framework="vicreg", gating="dualgate", gate_anneal_alpha=0.3).pruning
    assert fast.bound_p(epoch=10.0, progress=0.5) == pytest.approx(math.exp(-3.0))
    run_scaled = parse_config(["--framework", "vicreg", "--gating", "dualgate", "--gate-anneal-final", "0.05"]).pruning
    assert run_scaled == DualGateSettings(anneal_final=0.05)
    assert run_scaled.bound_p(epoch=3.0, progress=0.0) == 1.0
    assert run_scaled.bound_p(epoch=9.6, progress=1.0) == pytest.approx(0.05)
    assert run_scaled.bound_p(epoch=4.8, progress=0.5) == pytest.approx(math.sqrt(0.05))
    # = exp(-alpha' epoch) with alpha' = -ln(0.05) / planned epochs (9.6 here), whatever the run length
    assert run_scaled.bound_p(epoch=2.4, progress=0.25) == pytest.approx(math.exp(math.log(0.05) / 9.6 * 2.4))
    assert settings_from_record(pruning_record(run_scaled)) == run_scaled
    assert settings_from_record({"method": "dualgate", "target": 0.3}) == DualGateSettings()  # older records


def test_run_scaled_annealing_follows_the_trainer_progress(two_views):
    """With --gate-anneal-final the bound loss follows set_progress's progress, not the epoch."""
    from simwnw_hf.gating.training import prepare_backbone
    from simwnw_hf.ssl.frameworks import VICReg

    torch.manual_seed(0)
    settings = DualGateSettings(budget_weight=0.0, anneal_final=0.01)
    dg = prepare_backbone(_tiny("simwnw_dualgate_resnet18_cifar"), settings).eval()  # eval: same masks each call
    vic = VICReg(dg, dg.num_features, 32, 32, dual_gate=settings).eval()
    vic.set_progress(0.0, epoch=1.0)
    early = vic(two_views)[0]
    vic.set_progress(0.0, epoch=500.0)
    assert vic(two_views)[0] == early  # the epoch does not matter
    vic.set_progress(1.0, epoch=1.0)
    assert vic.training_progress == 1.0 and vic(two_views)[0] < early


def test_dualgate_export_round_trip(tmp_path):
    """Both sub-networks of one dual-gate run export: dense as a plain timm ResNet, gated as the registered model."""
    from simwnw_hf.hub.export import export_run
    from simwnw_hf.hub.record import read_training_record
    from simwnw_hf.models.dualgate_resnet import dense_state_dict

    run(tmp_path / "run", **METHODS["dualgate"])
    dense_dir = export_run(tmp_path / "run", tmp_path / "dense", subnetwork="dense")
    gated_dir = export_run(tmp_path / "run", tmp_path / "gated")
    trained = _tiny("simwnw_dualgate_resnet18_cifar").add_dense_path()  # the checkpoint holds the co-training state
    trained.load_state_dict(_weights(tmp_path / "run"))
    x = torch.randn(4, 3, 32, 32)

    dense = timm.create_model(f"local-dir:{dense_dir}", pretrained=True).eval()
    assert type(dense).__name__ == "SimWnWResNet"
    assert read_training_record(dense_dir)["model"] == "simwnw_resnet18_cifar"
    plain = timm.create_model("resnet18", num_classes=0, channels=[8, 16, 16, 16])
    plain.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem
    plain.maxpool = torch.nn.Identity()
    plain.load_state_dict(dense_state_dict(trained))  # the dense keys are timm resnet18's
    plain.eval()
    with torch.no_grad():
        ref = trained.eval().forward_dual(x, gated=False)[0]
        assert torch.allclose(dense.forward_features(x), ref) and torch.allclose(plain.forward_features(x), ref)

    from safetensors.torch import load_file

    exported = load_file(str(gated_dir / "model.safetensors"))
    assert not any("_dense" in k for k in exported)  # the registered model's keys, loaded strictly below
    gated = timm.create_model("simwnw_dualgate_resnet18_cifar", num_classes=0, channels=[8, 16, 16, 16])
    gated.load_state_dict(exported, strict=True)
    gated.eval()
    with torch.no_grad():
        assert torch.allclose(gated(x), trained(x))
    gated = timm.create_model(f"local-dir:{gated_dir}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(gated(x), trained(x))  # eval-mode hard gates at inference
    record = read_training_record(gated_dir)
    inference = record["inference_flops"]
    assert record["subnetwork"] == "gated" and inference["num_images"] > 0
    assert 0 < inference["flops_per_image"] <= inference["dense_flops_per_image"]
    card = (gated_dir / "README.md").read_text()
    assert "eval-mode hard gates" in card and "inference_flops_per_image" in card
    # the checkpoint (co-training state) also loads in `python -m simwnw_hf.eval` and in final kNN's backbone
    import argparse

    from simwnw_hf.eval.__main__ import build_eval_backbone
    from simwnw_hf.train.__init__ import _headless

    args = argparse.Namespace(checkpoint=str(tmp_path / "run"), model=None, seed=0, random_init=False, image_size=None)
    evaluated = build_eval_backbone(args)[0].eval()
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), image_size=32, framework_args=HEADS, model_args=TINY,
                      **METHODS["dualgate"])
    knn_backbone = _headless(cfg)
    knn_backbone.load_state_dict(_weights(tmp_path / "run"))
    with torch.no_grad():
        assert torch.equal(evaluated(x), trained(x)) and torch.equal(knn_backbone.eval()(x), trained(x))
    with pytest.raises(ValueError, match="--subnetwork applies to dual-gate runs"):
        run(tmp_path / "plain", framework="simclr")
        export_run(tmp_path / "plain", tmp_path / "plain-export", subnetwork="dense")


@pytest.mark.parametrize("method", list(METHODS))
def test_run_end_knn_loads_every_methods_checkpoint(tmp_path, method):
    """The run-end kNN loads the checkpoint strictly: a CDG run (whose checkpoint holds the dense network)
    once ended in a state_dict traceback after training."""
    from simwnw_hf.train import run as run_and_evaluate

    args = dict(image_size=32, batch_size=8, max_samples=32, max_steps=1, log_every=1, eval_max_samples=16,
                output_dir=str(tmp_path), framework_args=HEADS, model_args=TINY, model="simwnw_resnet18_cifar")
    args.update(METHODS[method])
    summary = run_and_evaluate(TrainConfig(**args))
    assert 0 <= summary["eval"]["knn"]["top1"] <= 100
