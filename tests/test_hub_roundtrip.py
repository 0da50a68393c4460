"""Publish and consume an encoder without internet (issue 6).

A real (tiny) SimSiam + SimWnW training run is exported, uploaded by ``hub_upload.py`` to a local
Hub-compatible server (``tests/hub_server.py``) and downloaded in fresh processes, first online
through ``HF_ENDPOINT``, then from the populated ``HF_HOME`` cache with ``HF_HUB_OFFLINE=1``. Every
way of loading must give the features of the trained checkpoint.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import simwnw_hf  # noqa: F401
from simwnw_hf.hub import export_run, read_training_record
from simwnw_hf.hub.export import build_encoder, default_repo_id
from simwnw_hf.hub.record import missing_fields, training_record
from simwnw_hf.hub.upload import (EndpointUnreachableError, FolderValidationError, HubUploadError,
                                  MissingTokenError, RepoExistsError, upload, validate_folder)

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_localtesttoken0123456789"
MODEL_ARGS = {"layers": [1, 1, 1, 1]}


def _train(out: Path, *extra: str) -> Path:
    from simwnw_hf.train import run
    from simwnw_hf.train.config import parse_config

    cfg = parse_config(["--dataset", "sample", "--image-size", "16", "--batch-size", "4", "--max-steps", "2",
                        "--max-samples", "8", "--eval-max-samples", "8", "--save-every", "1",
                        "--model-args", json.dumps(MODEL_ARGS), *extra, "--output-dir", str(out)],
                       defaults={"framework": "simsiam"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread per process is much faster under load
    try:
        run(cfg)  # training + the entry point's final kNN evaluation
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two-step SimSiam + SimWnW run of a 1-block-per-stage CIFAR ResNet on 8 sample images, 16 px."""
    return _train(tmp_path_factory.mktemp("run") / "simsiam", "--simwnw")


@pytest.fixture(scope="module")
def dense_run_dir(tmp_path_factory):
    """The same run without SimWnW: a comparable dense baseline."""
    return _train(tmp_path_factory.mktemp("dense") / "simsiam_dense")


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_run(run_dir, tmp_path_factory.mktemp("export") / "encoder")


@pytest.fixture(scope="module")
def hub():
    with HubServer(TOKEN) as server:
        yield server


@pytest.fixture
def online(monkeypatch):
    """conftest.py sets HF_HUB_OFFLINE=1 for the suite; these tests talk to the local server only,
    which speaks the regular + LFS upload protocols but not Xet."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def _expected_features(run_dir: Path, checkpoint: str, x: torch.Tensor) -> torch.Tensor:
    record = training_record(run_dir, checkpoint)
    model = build_encoder(record, load_file(str(run_dir / checkpoint / "model.safetensors")))
    with torch.no_grad():
        return model(x)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- export ---------------------------------------------------------------------------------------

def test_export_writes_timm_layout_with_training_record(run_dir, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "simwnw_resnet18_cifar"
    assert config["num_classes"] == 0 and config["num_features"] == 512
    assert "num_classes" not in config["model_args"]  # TimmWrapperModel would get it twice
    assert config["model_args"]["layers"] == [1, 1, 1, 1]
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16]

    record = config["training"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert missing_fields(record) == []
    assert record["framework"] == "simsiam" and record["pruning"]["method"] == "simwnw"
    assert record["pruning"]["psnr_threshold"] == 20.0
    assert record["steps"] == 2 and record["final_checkpoint"] and record["checkpoint"] == "checkpoint-2"
    for key in ("train_flops", "dense_train_flops", "overhead_flops", "wall_time_s", "mean_removal_ratio"):
        assert record[key] == summary[key]
    assert record["train_flops"] < record["dense_train_flops"]
    assert record["flops_saving_pct"] == pytest.approx(100 * (1 - record["train_flops"] / record["dense_train_flops"]))
    assert record["eval"]["knn"]["top1"] == summary["eval"]["knn"]["top1"]
    assert record["versions"]["timm"] and record["hardware"]

    with safe_open(str(exported / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    assert all(isinstance(v, str) for v in metadata.values())
    assert json.loads(metadata["simwnw.flops_saving_pct"]) == pytest.approx(record["flops_saving_pct"])
    assert read_training_record(exported) == record


def test_model_card_metadata_and_body(exported):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported / "README.md")
    record = read_training_record(exported)
    assert card.data.library_name == "timm" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["uoft-cs/cifar10"] and "simwnw" in card.data.tags
    assert card.data.training_flops == record["train_flops"]
    assert card.data.dense_training_flops == record["dense_train_flops"]
    (result,) = card.data.eval_results
    assert result.metric_type == "accuracy" and result.metric_value == pytest.approx(record["eval"]["knn"]["top1"])
    repo_id = default_repo_id(record)
    assert f'timm.create_model("hf-hub:{repo_id}", pretrained=True)' in card.text
    assert f'AutoModel.from_pretrained("{repo_id}")' in card.text
    assert "Trained 2 steps" in card.text and "not a reproduction" in card.text
    assert "--simwnw" in card.text and "--model-args" in card.text  # the recipe's command line


def test_intermediate_checkpoint_uses_its_own_counters_and_claims_no_eval(run_dir, tmp_path):
    final = training_record(run_dir)
    early = training_record(run_dir, 1)
    assert early["steps"] == 1 and not early["final_checkpoint"] and early["eval"] == {}
    assert 0 < early["train_flops"] < final["train_flops"]
    assert early["dense_train_flops"] == pytest.approx(final["dense_train_flops"] / 2)
    folder = export_run(run_dir, tmp_path / "early", checkpoint="checkpoint-1")
    assert "intermediate checkpoint" in (folder / "README.md").read_text()
    with pytest.raises(FolderValidationError, match="eval"):
        validate_folder(folder)  # no evaluation of these weights: not publishable as is


def test_export_never_overwrites_without_flag_and_leaves_no_temp(run_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export_run(run_dir, out)
    assert (out / "notes.txt").read_text() == "keep me"
    export_run(run_dir, out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no .tmp / .old folders left


def test_export_rejects_weights_that_do_not_fit_the_architecture(run_dir, tmp_path):
    fake = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoint-2", fake / "checkpoint-2", ignore=shutil.ignore_patterns("training_state"))
    config = json.loads((run_dir / "run_config.json").read_text())
    config["model_args"] = json.dumps({"layers": [2, 2, 2, 2]})
    (fake / "run_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not load into simwnw_resnet18_cifar"):
        export_run(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_names_missing_run_files(run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        export_run(empty, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_run(tmp_path / "nowhere", tmp_path / "out")
    no_config = tmp_path / "no_config"
    shutil.copytree(run_dir / "checkpoint-2", no_config / "checkpoint-2", ignore=shutil.ignore_patterns("training_state"))
    with pytest.raises(FileNotFoundError, match="run_config.json is missing"):
        export_run(no_config, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        export_run(run_dir, tmp_path / "out", checkpoint=7)


def test_validation_catches_broken_folders(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    config = json.loads((broken / "config.json").read_text())
    config["model_args"]["num_classes"] = 0
    config["training"]["steps"] = 99
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(FolderValidationError) as err:
        validate_folder(broken)
    assert "num_classes" in str(err.value) and "differs" in str(err.value)
    (broken / "README.md").unlink()
    with pytest.raises(FolderValidationError, match="README.md"):
        validate_folder(broken)
    assert validate_folder(exported)["steps"] == 2


# ---- upload + download round trip ------------------------------------------------------------------

CONSUMER = r"""
import json, sys
from pathlib import Path
import torch, timm
import simwnw_hf
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModel

repo, arch, model_args, x_path, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
x = torch.load(x_path)
models = {
    "timm hf-hub": lambda: timm.create_model(f"hf-hub:{repo}", pretrained=True),
    "transformers AutoModel": lambda: AutoModel.from_pretrained(repo),
}
if len(sys.argv) > 6:  # offline: the cached snapshot as a local folder / a file overlay
    folder = Path(try_to_load_from_cache(repo, "config.json")).parent
    models["timm local-dir"] = lambda: timm.create_model(f"local-dir:{folder}", pretrained=True)
    models["timm file overlay"] = lambda: timm.create_model(
        arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")),
        **model_args)
features = {}
with torch.no_grad():
    for name, make in models.items():
        model = make().eval()
        y = model(x)
        features[name] = getattr(y, "pooler_output", y)
torch.save(features, out)
"""


def _env(home: Path, endpoint: str, offline: bool, token: str = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    if token:
        env["HF_TOKEN"] = token
    return env


def test_upload_then_download_in_fresh_processes_gives_trained_features(run_dir, dense_run_dir, hub, tmp_path):
    record = training_record(run_dir)
    repo_id = default_repo_id(record)
    assert repo_id == "simwnw-hf/simwnw_resnet18_cifar.simsiam_simwnw_cifar10"
    up = subprocess.run([sys.executable, str(ROOT / "hub_upload.py"), str(run_dir), "--repo-id", repo_id,
                         "--baseline-run", str(dense_run_dir), "--commit-message", "tiny test encoder"],
                        env=_env(tmp_path / "uploader", hub.url, offline=False, token=TOKEN),
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]
    assert TOKEN not in up.stdout + up.stderr
    repo = hub.repos[repo_id]
    files = repo.commits[repo.branches["main"]]
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)
    assert files["model.safetensors"].lfs and not files["config.json"].lfs  # weights went through LFS
    assert "dense baseline" in files["README.md"].data.decode()

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    expected = _expected_features(run_dir, "checkpoint-2", x)
    consumer_home = tmp_path / "consumer"
    args = [sys.executable, "-c", CONSUMER, repo_id, record["model"], json.dumps(MODEL_ARGS), str(tmp_path / "x.pt")]

    online = subprocess.run(args + [str(tmp_path / "online.pt")], capture_output=True, text=True, timeout=300,
                            env=_env(consumer_home, hub.url, offline=False))
    assert online.returncode == 0, online.stderr[-3000:]
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens: any network use would fail
    offline = subprocess.run(args + [str(tmp_path / "offline.pt"), "offline"], capture_output=True, text=True,
                             timeout=300, env=_env(consumer_home, dead, offline=True))
    assert offline.returncode == 0, offline.stderr[-3000:]

    features = {**torch.load(tmp_path / "online.pt"),
                **{f"{k} (offline)": v for k, v in torch.load(tmp_path / "offline.pt").items()}}
    assert len(features) == 6  # hf-hub + AutoModel online; those two + local-dir + file overlay offline
    for name, value in features.items():
        torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    assert hub.unhandled == []


def test_upload_error_paths(exported, hub, online, monkeypatch, tmp_path):
    from huggingface_hub import constants

    # no token anywhere (env or cached login)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(MissingTokenError, match="HF_TOKEN"):
        upload(exported, "tester/enc", endpoint=hub.url)

    # dry run validates and contacts nobody
    before = len(hub.state.requests)
    result = upload(exported, "tester/enc", dry_run=True, endpoint=hub.url)
    assert not result.uploaded and "model.safetensors" in result.files and len(hub.state.requests) == before

    # first upload works; a second one refuses to replace the weights unless forced
    first = upload(exported, "tester/enc", token=TOKEN, endpoint=hub.url, private=True)
    assert first.uploaded and hub.repos["tester/enc"].private
    with pytest.raises(RepoExistsError, match="--force"):
        upload(exported, "tester/enc", token=TOKEN, endpoint=hub.url)
    heads = dict(hub.repos["tester/enc"].branches)
    upload(exported, "tester/enc", token=TOKEN, endpoint=hub.url, force=True, commit_message="again")
    assert hub.repos["tester/enc"].branches == heads  # identical files: huggingface_hub skips the empty commit

    # a revision branch is created on demand
    upload(exported, "tester/enc", token=TOKEN, endpoint=hub.url, revision="v1")
    assert "v1" in hub.repos["tester/enc"].branches

    # a rejected token: clear message, token never echoed
    with pytest.raises(HubUploadError, match="rejected the token") as err:
        upload(exported, "tester/other", token="hf_wrong_secret", endpoint=hub.url)
    assert "hf_wrong_secret" not in str(err.value)

    # nothing listening at the endpoint
    with pytest.raises(EndpointUnreachableError, match="cannot reach"):
        upload(exported, "tester/enc2", token=TOKEN, endpoint=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(EndpointUnreachableError, match="not an http"):
        upload(exported, "tester/enc2", token=TOKEN, endpoint="127.0.0.1:1")

    # missing files / bad arguments
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(exported / "config.json", partial / "config.json")
    with pytest.raises(FolderValidationError, match="model.safetensors"):
        upload(partial, "tester/enc3", token=TOKEN, endpoint=hub.url)
    with pytest.raises(HubUploadError, match="ORG/NAME"):
        upload(exported, "no-namespace", token=TOKEN, endpoint=hub.url)
    with pytest.raises(HubUploadError, match="does not exist"):
        upload(tmp_path / "nowhere", "tester/enc", token=TOKEN, endpoint=hub.url)


# ---- downstream use -------------------------------------------------------------------------------

def _finetune_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_example", ROOT / "examples" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_finetune_example_on_exported_encoder(exported, tmp_path, mode):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _finetune_main()(["--model", f"local-dir:{exported}", "--mode", mode, "--epochs", "1",
                                   "--batch-size", "8", "--max-samples", "16", "--output-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert result["num_classes"] == 10 and result["num_train"] == 16 and 0 <= result["top1"] <= 100
    tuned = load_file(str(tmp_path / "model.safetensors"))
    pretrained = load_file(str(exported / "model.safetensors"))
    assert tuned["fc.weight"].shape == (10, 512)
    changed = [k for k in pretrained if not torch.equal(pretrained[k], tuned[k])]
    if mode == "linear":  # frozen encoder, BatchNorm statistics included
        assert changed == []
    else:
        assert "conv1.weight" in changed and "bn1.running_mean" in changed


def test_finetune_default_evaluation_on_a_single_split_is_a_holdout(exported, tmp_path):
    """A file as --dataset, no --eval-dataset: the evaluation images are held out of the fine-tuning set."""
    from test_data_splits import _write_parquet

    _write_parquet(tmp_path / "dev.parquet", [i % 4 for i in range(20)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _finetune_main()(["--model", f"local-dir:{exported}", "--epochs", "1", "--batch-size", "8",
                                   "--dataset", str(tmp_path / "dev.parquet")])
    finally:
        torch.set_num_threads(threads)
    assert (result["num_train"], result["num_eval"]) == (16, 4) and result["holdout"]["fraction"] == 0.2
    assert result["queries_in_finetuning_set"] is False


# ---- issue 14: comparable baselines, usual permissions ----------------------------------------------

def test_baseline_that_is_not_comparable_is_refused_before_writing(run_dir, dense_run_dir, tmp_path):
    with pytest.raises(ValueError, match="not comparable.*pruning: the baseline is a simwnw run"):
        export_run(run_dir, tmp_path / "out", baseline_run=run_dir)
    assert not (tmp_path / "out").exists()
    card = (export_run(run_dir, tmp_path / "ok", baseline_run=dense_run_dir) / "README.md").read_text()
    assert "dense baseline" in card


def test_export_folder_and_files_have_usual_permissions(exported):
    assert exported.stat().st_mode & 0o777 == 0o755
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (exported / name).stat().st_mode & 0o777 == 0o644, name
