"""The Hub failing mid-upload (500, connection reset, stall): a clear error, nothing reported as uploaded,
no weights on the remote, a retry after the fault succeeds, and the token never printed."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simwnw_hf.hub import export_run
from simwnw_hf.hub.upload import HubUploadError, upload

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_faultsecret_0123456789abcdef"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from simwnw_hf.train.config import TrainConfig
    from simwnw_hf.train import run as train_and_evaluate  # the run-end kNN: an export needs an evaluation

    run = tmp_path_factory.mktemp("run") / "simsiam"
    train_and_evaluate(TrainConfig(framework="simsiam", image_size=16, batch_size=4, max_samples=8, max_steps=1,
                                   eval_max_samples=8, output_dir=str(run), model_args='{"layers": [1, 1, 1, 1]}'))
    return export_run(run, tmp_path_factory.mktemp("export") / "encoder")


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(TOKEN) as server:
        yield server


def _remote_weights(hub, repo_id):
    repo = hub.repos.get(repo_id)
    if repo is None:
        return None
    f = repo.commits[repo.branches["main"]].get("model.safetensors")
    return None if f is None else hashlib.sha256(f.data).hexdigest()


FAULTS = [("lfs_put", "500", 10), ("lfs_put", "reset", 10), ("commit", "500", 1), ("commit", "reset", 1),
          ("preupload", "500", 10)]


@pytest.mark.parametrize("route,kind,times", FAULTS)
def test_failed_upload_reports_clearly_then_retry_succeeds(exported, hub, route, kind, times, monkeypatch):
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)  # no backoff waits in tests
    hub.fail(route, kind, times)
    with pytest.raises(HubUploadError) as err:
        upload(exported, "tester/enc", token=TOKEN, endpoint=hub.url)
    message = str(err.value)
    assert "tester/enc" in message and TOKEN not in message and "\n" not in message
    assert _remote_weights(hub, "tester/enc") is None  # the failed commit left no weights behind
    hub.state.faults.clear()
    result = upload(exported, "tester/enc", token=TOKEN, endpoint=hub.url)  # the retry, no --force needed
    assert result.uploaded
    assert _remote_weights(hub, "tester/enc") == hashlib.sha256((exported / "model.safetensors").read_bytes()).hexdigest()


def test_a_transient_500_is_retried_by_the_client(exported, hub, monkeypatch):
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)
    hub.fail("lfs_put", "500", 1)
    assert upload(exported, "tester/enc", token=TOKEN, endpoint=hub.url).uploaded
    assert hub.state.faults["lfs_put"] == []  # the fault was hit, and the client's backoff retried past it


def test_a_stalled_server_times_out_with_a_clear_error(exported, hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)
    hub.state.stall_s = 3
    hub.fail("commit", "timeout", 1)
    with pytest.raises(HubUploadError) as err:
        upload(exported, "tester/slow", token=TOKEN, endpoint=hub.url)
    assert TOKEN not in str(err.value) and _remote_weights(hub, "tester/slow") is None


def _cli(args, hub, env_extra=None):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "hub_upload.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_never_prints_the_token_and_never_overwrites_without_force(exported, hub):
    hub.fail("commit", "500", 1)
    failed = _cli([str(exported), "--repo-id", "tester/cli"], hub)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and "uploaded" not in failed.stdout
    assert [line for line in failed.stderr.splitlines() if line.strip()][-1].startswith("error: ")
    upload(exported, "tester/cli", token=TOKEN, endpoint=hub.url)  # the retry (in-process: faster)
    head = dict(hub.repos["tester/cli"].branches)
    again = _cli([str(exported), "--repo-id", "tester/cli"], hub)
    assert again.returncode == 2 and "--force" in again.stderr and hub.repos["tester/cli"].branches == head
    for proc in (failed, again):
        assert TOKEN not in proc.stdout + proc.stderr and TOKEN[9:] not in proc.stdout + proc.stderr
    sent = [v for h in hub.state.headers_seen for k, v in h.items() if k.lower() == "authorization"]
    assert f"Bearer {TOKEN}" in sent  # the token was sent, in the header only
