"""Pair plans made in the DataLoader (``--match-in loader``): the same bits as in the step, refused when foreign."""

import json
import pickle

import pytest
import timm
import torch
from accelerate.utils import send_to_device

from pair_views import shifted_pair
from simwnw_hf.pruning import SimWnWSettings, TokenPruningSettings
from simwnw_hf.ssl.loader_plan import LoaderPlan, PlanInLoader, loader_plan
from simwnw_hf.ssl.pair import plan_pair
from simwnw_hf.train.config import TrainConfig
from simwnw_hf.train.trainer import train

TINY_VIT = '{"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 64, "num_heads": 2}'


def _run(tmp_path, name, **kw):
    out = tmp_path / name
    args = dict(image_size=32, batch_size=8, max_samples=24, max_steps=3, knn_eval=False, log_every=1,
                num_workers=1, output_dir=str(out), framework_args='{"hidden_dim": 32, "out_dim": 32}')
    args.update(kw)
    summary = train(TrainConfig(**args))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, lines


@pytest.mark.parametrize("setup", [
    dict(framework="byol", model="simwnw_resnet18_cifar", simwnw=True, model_args='{"channels": [8, 16, 16, 16]}'),
    dict(framework="simsiam", model="simwnw_vit_tiny_patch16_224", model_args=TINY_VIT, token_pruning="simwnw",
         psnr_threshold=15.0),
])
def test_plans_made_in_loader_workers_train_exactly_as_plans_made_in_the_step(tmp_path, setup):
    step_summary, step_lines = _run(tmp_path, "step", match_in="step", **setup)
    loader_summary, loader_lines = _run(tmp_path, "loader", match_in="loader", **setup)
    for a, b in zip(step_lines, loader_lines):
        for key in ("loss", "train_flops", "pruned_flops", "overhead_flops", "removal_ratio"):
            assert a[key] == b[key], (key, a, b)          # bit for bit: same plan, same step
    assert 0 < step_lines[-1]["removal_ratio"] < 1           # something was removed
    assert step_summary["replica_checksums"] == loader_summary["replica_checksums"]
    assert step_summary["loader_match_cpu_s"] == 0 < loader_summary["loader_match_cpu_s"]
    assert loader_summary["data_wait_s"] >= 0
    # the matching's wall time is on the steps that made the plans, and only on them
    assert 0 < step_summary["plan_time_s"] < step_summary["wall_time_s"] and loader_summary["plan_time_s"] == 0
    plan_times = [line["plan_time_s"] for line in step_lines]
    assert all(0 < a < b for a, b in zip(plan_times, plan_times[1:])), plan_times   # cumulative, every step adds
    assert plan_times[-1] == step_summary["plan_time_s"] and {line["plan_time_s"] for line in loader_lines} == {0}
    from simwnw_hf.train.report import run_report

    assert "block matching ran in the DataLoader workers" in run_report(loader_summary, tmp_path / "loader")
    step_report = run_report(step_summary, tmp_path / "step")
    assert "DataLoader workers" not in step_report and "matching the views" in step_report


def test_auto_matches_in_the_loader_only_with_workers():
    base = dict(simwnw=True, model="simwnw_resnet18_cifar")
    assert TrainConfig(num_workers=2, **base).matches_in_loader
    assert not TrainConfig(num_workers=0, **base).matches_in_loader
    assert not TrainConfig(num_workers=2, match_in="step", **base).matches_in_loader
    assert not TrainConfig(num_workers=2).matches_in_loader                        # dense: nothing to plan
    assert not TrainConfig(num_workers=2, token_pruning="simprune").matches_in_loader   # decided in-network


@pytest.mark.parametrize("kwargs, message", [
    (dict(simwnw=True, match_in="loader"), "--num-workers 1 or more"),
    (dict(num_workers=1, match_in="loader"), "moves SimWnW's block matching"),
    (dict(num_workers=1, token_pruning="evit", match_in="loader"), "moves SimWnW's block matching"),
    (dict(simwnw=True, match_in="workers"), "--match-in must be one of"),
])
def test_match_in_flags_that_cannot_work_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def _resnet(**settings):
    model = timm.create_model("simwnw_resnet18_cifar", num_classes=0, channels=[8, 16, 16, 16])
    return model.configure_pair_pruning(SimWnWSettings(**settings))


def _batch(model, batch=4):
    x1, x2, g1, g2 = shifted_pair(model, batch=batch, size=32)
    return {"views": [x1, x2], "geometry": [g1, g2]}


def _collated(batch, planner):
    """What PlanInLoader makes of a batch its inner collate already produced."""
    return PlanInLoader(lambda samples: dict(batch), planner)(None)


def test_a_loader_plan_equals_the_step_plan_and_is_used_as_it_is():
    model = _resnet(psnr_threshold=15.0)
    batch = _collated(_batch(model), model.pair_planner())
    made = loader_plan(batch)
    assert isinstance(made, LoaderPlan) and made.seconds >= 0
    x1, x2 = batch["views"]
    g1, g2 = batch["geometry"]
    fresh = plan_pair(model, x1, x2, g1, g2)
    assert plan_pair(model, x1, x2, g1, g2, made=made) is made.plan
    assert made.plan.seconds == 0 < fresh.seconds    # a loader plan cost the step no time (LoaderPlan.seconds is the worker's)
    for name in ("match_yx", "psnr", "similar", "mask1", "mask2"):
        assert torch.equal(getattr(made.plan.match, name), getattr(fresh.match, name)), name
    assert made.plan.settings == fresh.settings and made.plan.overhead_flops == fresh.overhead_flops
    assert plan_pair(model, x1, x2, g1, g2, prune=False, made=made) is None    # a dense step ignores it


def test_a_plan_made_with_other_settings_or_for_other_views_is_refused():
    model = _resnet(psnr_threshold=20.0)
    batch = _collated(_batch(model), _resnet(psnr_threshold=15.0).pair_planner())
    x1, x2 = batch["views"]
    g1, g2 = batch["geometry"]
    with pytest.raises(ValueError, match="made by .* but this encoder plans with"):
        plan_pair(model, x1, x2, g1, g2, made=loader_plan(batch))
    batch = _collated(_batch(model), model.pair_planner())
    with pytest.raises(ValueError, match="is for 4 pairs, the views hold 2"):
        plan_pair(model, x1[:2], x2[:2], made=loader_plan(batch))


def test_planners_and_plans_cross_process_boundaries_and_devices():
    """Workers pickle the batch back to the trainer; Accelerate moves it with ``send_to_device``."""
    vit = timm.create_model("simwnw_vit_tiny_patch16_224", num_classes=0, **json.loads(TINY_VIT))
    vit.configure_pair_pruning(TokenPruningSettings(method="simwnw", psnr_threshold=15.0))
    for model in (_resnet(), vit):
        planner = model.pair_planner()
        assert pickle.loads(pickle.dumps(planner)) == planner
        batch = pickle.loads(pickle.dumps(_collated(_batch(model), planner)))
        moved = send_to_device(batch, "meta")
        match = loader_plan(moved).plan.match
        inner = getattr(match, "match", match)                    # TokenMatch holds the BlockMatch
        assert inner.mask1.device.type == "meta" and inner.match_yx.device.type == "meta"
        assert loader_plan(moved).planner == planner
    vit.configure_pair_pruning(TokenPruningSettings(method="simprune", prune_layers=(1,)))
    assert vit.pair_planner() is None                              # in-network: nothing to plan up front


def test_a_batch_without_views_gets_no_plan():
    empty = PlanInLoader(lambda samples: {"skipped": torch.tensor([0, 1])}, _resnet().pair_planner())(None)
    assert loader_plan(empty) is None


def test_a_resumed_run_with_loader_plans_reaches_the_weights_of_a_run_matching_in_the_step(tmp_path):
    """Resume re-creates the loader (Accelerate's skip_first_batches) with the planning collate."""
    import shutil

    from safetensors.torch import load_file

    setup = dict(framework="simsiam", model="simwnw_resnet18_cifar", simwnw=True, max_steps=4, save_every=2,
                 model_args='{"channels": [8, 16, 16, 16]}')
    _run(tmp_path, "step", match_in="step", num_workers=0, **setup)
    _run(tmp_path, "loader", match_in="loader", **setup)
    shutil.rmtree(tmp_path / "loader" / "checkpoint-4")          # killed after its step-2 checkpoint
    lines = (tmp_path / "loader" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "loader" / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    summary, _ = _run(tmp_path, "loader", match_in="loader", resume=True, **setup)
    a = load_file(str(tmp_path / "step" / "checkpoint-4" / "model.safetensors"))
    b = load_file(str(tmp_path / "loader" / "checkpoint-4" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary["loader_match_cpu_s"] > 0


def test_plan_in_loader_loads_the_compiled_matcher_before_workers_fork():
    """Workers are fresh processes: without the warm-up each one paid ~1.4 s CPU on its first match."""
    import multiprocessing as mp
    from simwnw_hf.pruning.planners import BlockMatchPlanner
    from simwnw_hf.simwnw import matching_jit

    if not matching_jit.available():
        pytest.skip("numba is not available here")
    PlanInLoader(lambda samples: samples, BlockMatchPlanner(SimWnWSettings(), (0.5,) * 3, (0.25,) * 3))
    for kernel in (matching_jit._search, matching_jit._cut_tiles, matching_jit._squared_differences,
                   matching_jit._paint):
        assert kernel.signatures, kernel      # compiled or loaded in this process: a forked worker inherits it
    if "fork" in mp.get_all_start_methods():
        queue = mp.get_context("fork").Queue()
        child = mp.get_context("fork").Process(target=lambda: queue.put(len(matching_jit._search.signatures)))
        child.start()
        child.join(60)
        assert queue.get(timeout=5) >= 1
