"""Issue 14, the CLI items: checks before step 1, resume semantics, logged lr, warnings, help text, report."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from simwnw_hf.train import run
from simwnw_hf.train.config import TrainConfig, build_parser
from simwnw_hf.train.trainer import build_backbone, train

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "simwnw_hf" / "data" / "sample"
MODEL_ARGS = '{"channels": [8, 16, 16, 16]}'


def tiny(output_dir, **kw):
    args = dict(framework="simsiam", image_size=16, batch_size=8, max_samples=40, max_steps=2, knn_eval=False,
                output_dir=str(output_dir), log_every=1, save_every=2, model_args=MODEL_ARGS,
                framework_args='{"hidden_dim": 32, "out_dim": 32}', eval_max_samples=40)
    args.update(kw)
    return TrainConfig(**args)


@pytest.fixture(scope="module")
def dev_only(tmp_path_factory):
    """A folder holding only dev.parquet: 200 CIFAR images of the bundled sample (20 per class)."""
    folder = tmp_path_factory.mktemp("devonly")
    frame = pd.read_parquet(SAMPLE / "train.parquet")
    frame.groupby("label", group_keys=False).head(20).reset_index(drop=True).to_parquet(folder / "dev.parquet")
    return folder


@pytest.fixture(scope="module")
def one_per_class(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onepc")
    frame = pd.read_parquet(SAMPLE / "train.parquet").groupby("label").head(1).reset_index(drop=True)
    frame = pd.concat([frame] * 2, ignore_index=True)
    frame["label"] = range(len(frame))  # every class one image, as the 500-image ImageNet sample
    frame.to_parquet(folder / "dev.parquet")
    return folder


# ---------------------------------------------------------------------------------- item 2: before step 1


def _never_trains(monkeypatch):
    import simwnw_hf.train.trainer as trainer

    def fail(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(trainer, "build_run", fail)


def test_missing_eval_split_is_refused_before_training(dev_only, tmp_path, monkeypatch):
    # a folder with dev.parquet only and --split dev --eval-split test gets a hold-out; another name is refused
    _never_trains(monkeypatch)
    cfg = tiny(tmp_path / "run", dataset=str(dev_only), split="dev", eval_split="dev", knn_eval=True)
    with pytest.raises(ValueError, match=r"run-end kNN evaluation \(--eval-split dev\): .*own memory bank.*"
                                         r"--no-knn-eval"):
        run(cfg)
    assert not (tmp_path / "run").exists()


def test_a_split_that_cannot_give_top1_is_refused_before_training(one_per_class, tmp_path, monkeypatch):
    _never_trains(monkeypatch)
    with pytest.raises(ValueError, match=r"every class has a single image.*--no-knn-eval"):
        run(tiny(tmp_path / "run", dataset=str(one_per_class), knn_eval=True))


def test_single_split_holdout_is_left_out_of_training(dev_only, tmp_path):
    from simwnw_hf.eval.splits import planned_holdout_indices

    out = tmp_path / "run"
    summary = run(tiny(out, dataset=str(dev_only), max_samples=None, knn_eval=True, eval_max_samples=None))
    held = planned_holdout_indices(str(dev_only))
    assert len(held) == 40  # 20% of 20 per class
    assert summary["num_images"] == 200 - 40  # trained on the bank only
    knn = summary["eval"]["knn"]
    assert knn["holdout"] is not None and knn["queries_seen_in_training"] is False
    assert knn["num_train"] == 160 and knn["num_test"] == 40
    config = json.loads((out / "run_config.json").read_text())
    assert config["eval_holdout_excluded"] is True and config["eval_holdout_images"] == 40
    # the eval CLI reads the record and agrees
    proc = subprocess.run([sys.executable, "-m", "simwnw_hf.eval", "knn", "--checkpoint", str(out), "--dataset",
                           str(dev_only), "--k", "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["queries_seen_in_training"] is False


def test_vit_is_built_for_the_image_size():
    backbone = build_backbone(TrainConfig(model="simwnw_vit_tiny_patch16_224", image_size=32, framework="simsiam"))
    assert tuple(backbone.patch_embed.img_size) == (32, 32)
    with pytest.raises(ValueError, match=r"img_size=64 does not match --image-size 32"):
        build_backbone(TrainConfig(model="simwnw_vit_tiny_patch16_224", image_size=32, model_args='{"img_size": 64}'))


def test_wrong_model_args_key_is_one_line():
    with pytest.raises(ValueError, match=r"--model-args \{\"widht\": 3\} do not fit 'simwnw_resnet18_cifar'.*widht"):
        build_backbone(TrainConfig(model_args='{"widht": 3}'))


# ------------------------------------------------------------------------------------ item 9: resume


def test_safe_changes_on_resume_are_recorded_not_passed_off(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, max_steps=2, save_every=2))
    train(tiny(out, resume=True, max_steps=4, save_every=1, log_every=2))
    config = json.loads((out / "run_config.json").read_text())
    assert config["max_steps"] == 4
    assert config["resumed_with"] == [{"step": 2, "changed": {"max_steps": [2, 4], "save_every": [2, 1],
                                                              "log_every": [1, 2]}}]
    train(tiny(out, resume=True, max_steps=5, save_every=1, log_every=2))
    history = json.loads((out / "run_config.json").read_text())["resumed_with"]
    assert [h["step"] for h in history] == [2, 4] and history[1]["changed"] == {"max_steps": [4, 5]}


def test_resume_error_is_one_line_from_the_script(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "simsiam.py"), "--resume", "--output-dir",
                           str(tmp_path / "nothing")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --resume: no checkpoint-<step>/ in ")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- item 10, 11: feedback


def test_logged_lr_is_the_lr_the_step_used(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, max_steps=2, lr=0.1))
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # cosine over 2 steps: step 1 at the full lr, step 2 at half of it (the post-step value would be 0.0)
    assert lrs == pytest.approx([0.1, 0.05])


def test_bf16_on_a_cpu_without_bf16_warns_at_build(tmp_path, monkeypatch, caplog):
    import simwnw_hf.train.precision as precision
    from simwnw_hf.train.trainer import build_run

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    monkeypatch.setattr(precision, "CPUINFO", str(fake))
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)  # the process-wide Accelerate state was made fp32 by earlier tests
    try:
        with caplog.at_level("WARNING", logger="simwnw_hf.train.precision"):
            build_run(tiny(tmp_path / "run", mixed_precision="bf16"))
    finally:
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
    warned = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    assert len(warned) == 1 and "pass --mixed-precision no" in warned[0]


def test_no_knn_eval_ends_with_a_summary(tmp_path, capsys):
    run(tiny(tmp_path / "run", simwnw=True))
    out = capsys.readouterr().out
    assert "no evaluation: --no-knn-eval" in out
    assert "training FLOPs: dense" in out and "saved" in out and "removal ratio" in out


def test_feature_extraction_shows_progress(capsys):
    import timm

    from simwnw_hf.data.datasets import load_image_dataset
    from simwnw_hf.eval.features import extract_features

    backbone = timm.create_model("simwnw_resnet18_cifar", num_classes=0, channels=[8, 16, 16, 16])
    extract_features(backbone, load_image_dataset(None, "test", max_samples=8), 16, (0.5,) * 3, (0.5,) * 3,
                     batch_size=4, desc="kNN queries")
    assert "kNN queries" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- item 7: help


def test_help_describes_every_flag_with_default_and_choices():
    text = build_parser({"framework": "simsiam"}).format_help()
    for field in ("--image-size", "--max-steps", "--keep-checkpoints", "--simwnw-executor", "--eval-split"):
        assert field in text
    from simwnw_hf.train.config import field_docs

    docs, _ = field_docs()
    assert set(docs) == {f for f in TrainConfig.__dataclass_fields__}
    assert all(docs.values()), [k for k, v in docs.items() if not v]  # every field carries its comment
    assert docs["batch_size"] == "per process"
    assert docs["framework_args"].startswith("JSON dict of framework kwargs, e.g. '{\"hidden_dim\"")
    assert "(default: 32)" in " ".join(text.split())
    assert "{simclr,simsiam,byol,moco,vicreg,dino}" in text
    assert "{fused,lean,reference,auto}" in text


def test_help_lists_the_framework_args_keys():
    text = " ".join(build_parser({"framework": "simsiam"}).format_help().split())
    assert "hidden_dim" in text and "out_dim" in text  # SimSiam's constructor keywords
    dino = " ".join(build_parser({"framework": "dino"}).format_help().split())
    assert "teacher_temp=0.04" in dino and "out_dim=4096" in dino  # the value --dino-out-dim passes, not 65536


def test_save_total_limit_is_an_alias_of_keep_checkpoints():
    args = build_parser().parse_args(["--save-total-limit", "5"])
    assert args.keep_checkpoints == 5


# ------------------------------------------------------------------------------------- the closing report


def test_report_states_gain_flops_saving_and_wall_time():
    from simwnw_hf.train.report import run_report

    summary = {"framework": "simsiam", "model": "m", "dataset": "sample", "num_images": 1000, "steps": 30,
               "epochs": 2.0, "global_batch_size": 64, "pruning": {"method": "simwnw"},
               "dense_train_flops": 2e13, "train_flops": 1.5e13, "flops_saving_pct": 25.0,
               "mean_removal_ratio": 0.31, "wall_time_s": 200.0,
               "eval": {"knn": {"top1": 35.0, "k": 200, "num_train": 1000, "num_test": 500, "holdout": None,
                                "queries": {"split": "test"}, "queries_seen_in_training": False},
                        "knn_random_init": {"top1": 28.5}}}
    text = run_report(summary, "runs/x", total_s=250.0)
    assert "trained 35.0% vs random init 28.5% (+6.5 points)" in text
    assert "dense 20.00 TFLOP, simwnw 15.00 TFLOP (25.0% saved), mean removal ratio 0.31" in text
    assert "training steps 3m20s, whole run 4m10s" in text


# ------------------------------------------------------------------ damaged weights, self-scored evals


@pytest.mark.parametrize("target", ["checkpoint-2", "checkpoint-2/model.safetensors"])
def test_eval_of_truncated_weights_is_one_line(tmp_path, target):
    out = tmp_path / "run"
    train(tiny(out))
    weights = out / "checkpoint-2" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    proc = subprocess.run([sys.executable, "-m", "simwnw_hf.eval", "knn", "--checkpoint", str(out / target),
                           "--max-train", "8", "--max-test", "8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "model.safetensors" in last and ("truncated" in last or "damaged" in last)


def test_upload_refuses_an_eval_scored_on_its_own_memory_bank():
    from simwnw_hf.hub.upload import self_scored_evals

    held = {"top1": 40.0, "holdout": None, "bank": {"dataset": "d", "split": "train"},
            "queries": {"dataset": "d", "split": "test"}}
    assert self_scored_evals({"eval": {"knn": held}}) == []
    holdout = {**held, "holdout": {"of_split": "dev"}, "bank": {"dataset": "d", "split": "dev"},
               "queries": {"dataset": "d", "split": "dev"}}
    assert self_scored_evals({"eval": {"knn": holdout}}) == []
    own = {**holdout, "holdout": None, "top1": 100.0}
    (problem,) = self_scored_evals({"eval": {"knn": own}})
    assert "own memory bank" in problem
    old = {"top1": 100.0, "train_split": "dev", "test_split": "dev"}  # an old run's record: no bank / queries
    (problem,) = self_scored_evals({"eval": {"linear": old}})
    assert "does not record which images" in problem


def test_resume_cannot_change_whether_the_holdout_is_trained_on(dev_only, tmp_path):
    out = tmp_path / "run"
    train(tiny(out, dataset=str(dev_only), max_samples=None))  # --no-knn-eval: trained on the whole split
    with pytest.raises(ValueError, match=r"eval_holdout_excluded=False \(now True\)"):
        run(tiny(out, dataset=str(dev_only), max_samples=None, resume=True, max_steps=3, knn_eval=True))


def test_eval_cli_help_renders(capsys):
    """`python -m simwnw_hf.eval --help` once crashed: argparse %-formats help text, and a bare '%' broke it."""
    from simwnw_hf.eval.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "20% of each class" in " ".join(capsys.readouterr().out.split())
