"""Configs from elsewhere: run_config.json / config.json with unknown keys, wrong types, another
architecture; a missing model card template; an export killed half way never validates."""

import json
import os
import shutil
import signal
import sys

import pytest

from simwnw_hf.hub import card as card_mod
from simwnw_hf.hub import export as export_mod
from simwnw_hf.hub import export_run
from simwnw_hf.hub.upload import FolderValidationError, validate_folder
from simwnw_hf.train.config import TrainConfig
from simwnw_hf.train import run as train_and_evaluate
from simwnw_hf.train.trainer import train


def tiny(output_dir, **kw):
    args = dict(framework="simsiam", image_size=16, batch_size=4, max_samples=8, max_steps=2, eval_max_samples=8,
                output_dir=str(output_dir), save_every=1, model_args='{"layers": [1, 1, 1, 1]}')
    args.update(kw)
    return TrainConfig(**args)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "simsiam"
    train_and_evaluate(tiny(out))  # training + the run-end kNN: an export needs an evaluation to validate
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_run(run_dir, tmp_path_factory.mktemp("export") / "encoder")


def test_resume_with_other_run_settings_is_refused_in_one_line(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with pytest.raises(ValueError, match=r"--resume: .*run_config.json was written by a run with batch_size=4 \(now 8\)"):
        train(tiny(run, resume=True, batch_size=8, max_steps=3))
    config = json.loads((run / "run_config.json").read_text())
    config["a_future_field"] = 1  # unknown keys are ignored
    (run / "run_config.json").write_text(json.dumps(config))
    assert train(tiny(run, resume=True, max_steps=3))["steps"] == 3
    (run / "run_config.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="run_config.json is not valid JSON"):
        train(tiny(run, resume=True, max_steps=3))


@pytest.mark.parametrize("change,word", [
    (lambda c: c.update(architecture="resnet50"), "architecture"),
    (lambda c: c.update(num_features="wide"), "num_features|features"),
    (lambda c: c.pop("pretrained_cfg"), "pretrained_cfg"),
    (lambda c: c["model_args"].update(num_classes=10), "num_classes"),
])
def test_tampered_config_json_never_validates(exported, tmp_path, change, word):
    folder = tmp_path / "encoder"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FolderValidationError, match=word):
        validate_folder(folder)


def test_config_json_unknown_keys_still_validate(exported, tmp_path):
    folder = tmp_path / "encoder"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config["some_future_key"] = {"x": 1}
    (folder / "config.json").write_text(json.dumps(config))
    validate_folder(folder)


def test_run_config_naming_another_architecture_does_not_mislabel_the_export(run_dir, tmp_path):
    """The architecture comes from the checkpoint's own record (summary / weights header), not a stray run_config."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "run_config.json").read_text())
    config["model"] = "simwnw_resnet50"
    (run / "run_config.json").write_text(json.dumps(config))
    out = export_run(run, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architecture"] == "simwnw_resnet18_cifar"
    validate_folder(out)


def test_missing_card_template_is_one_clear_error_and_writes_nothing(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(card_mod, "TEMPLATE_PATH", tmp_path / "gone" / "template.md")
    with pytest.raises(FileNotFoundError, match="model card template .* not found"):
        export_run(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("stage", ["after_weights", "after_all_files"])
def test_export_killed_half_way_never_validates(run_dir, tmp_path, stage):
    out = tmp_path / "encoder"
    pid = os.fork()
    if pid == 0:
        try:
            real_write = export_mod._write_folder
            real_save = export_mod.save_file

            def save(*a, **k):
                real_save(*a, **k)
                if stage == "after_weights":
                    os.kill(os.getpid(), signal.SIGKILL)

            def write(*a, **k):
                real_write(*a, **k)
                os.kill(os.getpid(), signal.SIGKILL)  # everything written, not yet renamed into place
            export_mod.save_file = save
            export_mod._write_folder = write
            sys.stdout = sys.stderr = open(os.devnull, "w")
            export_run(run_dir, out)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not out.exists()
    leftovers = list(tmp_path.glob(".encoder.tmp-*"))
    assert len(leftovers) == 1
    with pytest.raises(FolderValidationError, match="interrupted export_run|missing"):
        validate_folder(leftovers[0])
    export_run(run_dir, out)  # a re-run succeeds beside the leftover
    validate_folder(out)


def test_simwnw_run_from_before_the_waxing_fields_resumes_only_as_it_ran(tmp_path):
    """A run_config.json without wax_decision / wax_peak was written when waxing was per channel: resuming it
    under today's spatial default is refused, not silently switched; with the old value, or for a dense run
    (waxing plays no part), it resumes."""
    from simwnw_hf.train.run_files import check_resume_config

    current = {**TrainConfig(simwnw=True).__dict__}
    old = {k: v for k, v in current.items() if k not in ("wax_decision", "wax_peak")}
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(old))
    assert current["wax_decision"] == "spatial"
    with pytest.raises(ValueError, match=r"wax_decision='channel' \(now 'spatial'\)"):
        check_resume_config(path, current)
    check_resume_config(path, {**current, "wax_decision": "channel"})
    path.write_text(json.dumps({**old, "simwnw": False}))
    check_resume_config(path, {**current, "simwnw": False})


def test_simwnw_token_run_from_before_token_groups_resumes_only_as_it_ran(tmp_path):
    """Before --token-groups existed SimWnW token removal split each view into 4 chunks: such a run resumes
    with --token-groups 4, not silently under today's auto default; other runs ignore the field."""
    from simwnw_hf.train.run_files import check_resume_config

    current = {**TrainConfig(token_pruning="simwnw").__dict__}
    old = {k: v for k, v in current.items() if k != "token_groups"}
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"token_groups='4' \(now 'auto'\)"):
        check_resume_config(path, current)
    check_resume_config(path, {**current, "token_groups": "4"})
    assert TrainConfig(token_pruning="simwnw", token_groups=4).token_groups == "4"      # one spelling per value
    assert TrainConfig(token_pruning="simwnw", token_groups="04").token_groups == "4"
    path.write_text(json.dumps({**old, "token_pruning": "evit"}))
    check_resume_config(path, {**current, "token_pruning": "evit"})
    path.write_text(json.dumps({**current, "token_pruning": "evit", "token_groups": "2"}))   # no effect on EViT
    check_resume_config(path, {**current, "token_pruning": "evit"})


def test_hub_record_of_an_old_run_is_rebuilt_as_it_ran():
    """A run without a stored pruning record gets one from its run_config.json, with the values of the
    fields it predates (wax_decision for SimWnW, token_groups for SimWnW tokens), not today's defaults."""
    from simwnw_hf.hub.record import _pruning

    token = {k: v for k, v in TrainConfig(token_pruning="simwnw").__dict__.items() if k != "token_groups"}
    assert _pruning({}, None, token)["token_groups"] == 4
    cnn = {k: v for k, v in TrainConfig(simwnw=True).__dict__.items() if k not in ("wax_decision", "wax_peak")}
    assert _pruning({}, None, cnn)["wax_decision"] == "channel"
    assert _pruning({}, None, TrainConfig(token_pruning="simwnw").__dict__)["token_groups"] == "auto"
