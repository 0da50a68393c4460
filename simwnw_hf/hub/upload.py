"""Validate an exported encoder folder and push it to the Hub (the logic behind ``hub_upload.py``).

Order of work, so that nothing reaches the Hub half-checked:

1. export (when given a run dir) into a temporary folder;
2. validate offline: files present; the weights load strictly into the named architecture through
   timm's own ``local-dir:`` path, and transformers' ``AutoModel`` loads the folder and gives the same
   features (so no ``model_args.num_classes``); the training record is complete and identical in the
   header and ``config.json``; the card's YAML parses with ``library_name: timm`` and a model-index;
3. ``--dry-run`` stops here;
4. resolve a token (argument, ``HF_TOKEN``, cached ``hf auth login``) and the endpoint (``HF_ENDPOINT``),
   refuse to replace an existing repo's weights unless ``force``;
5. ``HfApi.create_repo(exist_ok=True)`` + ``upload_folder``.

Tokens are never printed or put in messages.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from huggingface_hub import HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import (HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                   RevisionNotFoundError)

from .export import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, export_run
from .record import missing_fields, read_training_record

__all__ = ["HubUploadError", "MissingTokenError", "RepoExistsError", "EndpointUnreachableError",
           "FolderValidationError", "UploadResult", "validate_folder", "upload"]

REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)


def _transport_errors() -> tuple:
    """Connection/timeout error classes of whichever HTTP client this huggingface_hub uses
    (httpx2 for 2.x, httpx for 1.x, requests before)."""
    errors = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


class HubUploadError(RuntimeError):
    """Base class of every error ``hub_upload.py`` reports (printed as ``error: <message>``)."""


class FolderValidationError(HubUploadError):
    """The folder would not load, or its record or card is incomplete."""


class MissingTokenError(HubUploadError):
    """No Hugging Face token was found."""


class RepoExistsError(HubUploadError):
    """The repo already holds weights and ``force`` was not given."""


class EndpointUnreachableError(HubUploadError):
    """The Hub endpoint could not be reached (no network, wrong ``HF_ENDPOINT``)."""


@dataclass
class UploadResult:
    folder: Path
    repo_id: str
    files: dict = field(default_factory=dict)  # name -> size in bytes
    uploaded: bool = False
    commit_url: Optional[str] = None
    endpoint: Optional[str] = None


def self_scored_evals(record: dict) -> list:
    """Problems with the record's eval results: a score on the model's own memory bank is never published.

    Refused: a result that does not say which images were bank and queries (runs from before the record
    had ``bank``/``queries``), and one whose bank and queries are the same split of the same dataset
    without a hold-out (issue 14: ImageNet-sample kNN top-1 = 100.0).
    """
    problems = []
    for protocol, result in sorted((record.get("eval") or {}).items()):
        if not isinstance(result, dict) or "top1" not in result:
            continue
        bank, queries = result.get("bank"), result.get("queries")
        if not isinstance(bank, dict) or not isinstance(queries, dict):
            problems.append(f"eval '{protocol}' does not record which images were memory bank and queries (an "
                            f"older run); re-evaluate with python -m simwnw_hf.eval {protocol} --checkpoint RUN "
                            f"--output-json RUN/eval.json and export again")
        elif (result.get("holdout") is None and bank.get("dataset") == queries.get("dataset")
              and bank.get("split") == queries.get("split")):
            problems.append(f"eval '{protocol}' scored the model on its own memory bank (split "
                            f"{bank.get('split')!r} of {bank.get('dataset')!r} for both); re-evaluate on a held-out "
                            f"split and export again")
    return problems


def validate_folder(folder: Union[str, Path]) -> dict:
    """Check an exported folder offline; returns its training record.

    Raises:
        FolderValidationError: listing every problem found.
    """
    import timm
    import torch

    import simwnw_hf  # noqa: F401  (registers simwnw_* architectures)

    folder = Path(folder)
    if folder.name.startswith(".") and (".tmp-" in folder.name or ".old-" in folder.name):
        raise FolderValidationError(f"{folder} is a temporary folder of an interrupted export_run, not an export; "
                                    "export the run again")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FolderValidationError(f"{folder} is missing {missing}; export a run with hub_upload.py RUN_DIR "
                                    "or simwnw_hf.hub.export_run first")
    problems = []
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise FolderValidationError(f"{folder / CONFIG_FILE} is not valid JSON: {exc}") from exc
    for key in ("architecture", "num_features", "pretrained_cfg", "training"):
        if key not in config:
            problems.append(f"config.json has no '{key}'")
    if "num_classes" in config.get("model_args", {}):
        problems.append("config.json model_args sets num_classes, which transformers' TimmWrapperModel "
                        "rejects (duplicate keyword); re-export the folder")
    try:
        header_record = read_training_record(folder / WEIGHTS_FILE)
    except Exception as exc:  # unreadable or record-less file: report, keep checking
        header_record = None
        problems.append(f"{WEIGHTS_FILE}: {exc}")
    record = config.get("training") or {}
    if header_record is not None and json.loads(json.dumps(header_record)) != json.loads(json.dumps(record)):
        problems.append("the training record in the safetensors header differs from config.json's 'training'")
    gaps = missing_fields(record) if record else ["training"]
    if gaps:
        problems.append(f"training record incomplete: {gaps}")
    problems += self_scored_evals(record)
    if config.get("architecture") and record.get("model") and config["architecture"] != record["model"]:
        problems.append(f"config architecture {config['architecture']!r} != trained model {record['model']!r}")
    if not problems:
        # exactly what users run: timm's local-dir loader (strict state_dict load) and transformers' AutoModel
        size = config["pretrained_cfg"].get("input_size", [3, 32, 32])
        x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
        try:
            model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True).eval()
            with torch.no_grad():
                features = model(x)
            if features.shape[-1] != config["num_features"]:
                problems.append(f"features have {features.shape[-1]} channels, config says {config['num_features']}")
        except Exception as exc:
            features = None
            problems.append(f"weights do not load into {config.get('architecture')} with timm: "
                            f"{type(exc).__name__}: {exc}")
        try:
            from transformers import AutoModel

            wrapped = AutoModel.from_pretrained(str(folder)).eval()
            with torch.no_grad():
                pooled = wrapped(pixel_values=x).pooler_output
            if features is not None and not torch.allclose(pooled, features, atol=1e-5, rtol=1e-4):
                problems.append("transformers' AutoModel and timm give different features for the same weights")
        except Exception as exc:
            problems.append(f"transformers' AutoModel cannot load the folder: {type(exc).__name__}: {exc}")
    try:
        card = ModelCard.load(folder / CARD_FILE)
        if card.data.get("library_name") != "timm":
            problems.append("README.md metadata lacks library_name: timm")
        if record.get("eval") and not card.data.get("eval_results"):
            problems.append("README.md metadata has no model-index with the eval results")
    except Exception as exc:
        problems.append(f"README.md does not parse as a model card: {exc}")
    if problems:
        raise FolderValidationError(f"{folder} failed validation:\n  - " + "\n  - ".join(problems))
    return record


def _token(token: Optional[str]) -> str:
    token = token or get_token()
    if not token:
        raise MissingTokenError("no Hugging Face token found: set HF_TOKEN or run `hf auth login` "
                                "(a token with write access to the target namespace)")
    return token


def _has_weights(api: HfApi, repo_id: str, revision: Optional[str]) -> bool:
    """Whether ``repo_id`` (at ``revision``) already holds ``model.safetensors``; False if no such repo/branch."""
    try:
        info = api.model_info(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return False
    return any(s.rfilename == WEIGHTS_FILE for s in (info.siblings or []))


def _upload_folder(folder: Path, repo_id: str, *, private: bool, revision: Optional[str],
                   commit_message: Optional[str], force: bool, token: Optional[str],
                   endpoint: Optional[str]) -> str:
    if constants.is_offline_mode():
        raise EndpointUnreachableError("HF_HUB_OFFLINE is set: unset it (or use --dry-run) to upload")
    secret = _token(token)
    api = HfApi(endpoint=endpoint, token=secret)
    try:
        if _has_weights(api, repo_id, revision) and not force:
            raise RepoExistsError(f"{repo_id} already holds {WEIGHTS_FILE}"
                                  f"{f' on {revision}' if revision else ''}; pass --force to replace them")
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message or f"Upload {folder.name} with simwnw_hf hub_upload.py")
    except HubUploadError:  # ours (RepoExistsError): already one clear line
        raise
    except OfflineModeIsEnabled:
        raise EndpointUnreachableError("HF_HUB_OFFLINE is set: unset it (or use --dry-run) to upload") from None
    except TRANSPORT_ERRORS as exc:  # connection refused, DNS, timeout, proxy, not a URL
        if type(exc).__name__ in ("UnsupportedProtocol", "InvalidURL", "MissingSchema"):
            raise EndpointUnreachableError(f"the Hub endpoint {api.endpoint!r} is not an http(s) URL; "
                                           "check HF_ENDPOINT") from None
        if type(exc).__name__ in ("ConnectError", "ConnectTimeout", "ConnectionError"):
            raise EndpointUnreachableError(f"cannot reach the Hub at {api.endpoint} ({type(exc).__name__}); check "
                                           "the network connection and HF_ENDPOINT") from None
        # reached, then the connection dropped or stalled: the server may or may not have taken the commit
        raise HubUploadError(f"the connection to the Hub at {api.endpoint} failed during the upload of {repo_id} "
                             f"({type(exc).__name__}); the upload did not complete: run the same command again "
                             "to retry") from None
    except HfHubHTTPError as exc:
        raise _http_error(exc, repo_id, api.endpoint, secret) from None
    except (ConnectionError, RuntimeError) as exc:  # Xet client; "Error while uploading X" around an LFS failure
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, HfHubHTTPError):
            raise _http_error(cause, repo_id, api.endpoint, secret, what=_one_line(exc, secret)) from None
        detail = _one_line(exc, secret) + (f" ({type(cause).__name__}: {_one_line(cause, secret)})" if cause else "")
        raise HubUploadError(f"upload of {repo_id} to {api.endpoint} did not complete: {detail}; "
                             f"nothing was committed, run the same command again to retry") from None
    return info.commit_url


def _one_line(exc: BaseException, secret: Optional[str] = None) -> str:
    """The first line of an error message, with the token (should a library ever echo it) masked."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.replace(secret, "***") if secret else text


def _http_error(exc, repo_id: str, endpoint: str, secret: Optional[str], what: str = "") -> HubUploadError:
    status = exc.response.status_code if exc.response is not None else None
    if status == 401:
        return HubUploadError(f"the Hub at {endpoint} rejected the token (401) for {repo_id}; "
                              "check HF_TOKEN / `hf auth login`")
    if status == 403:
        return HubUploadError(f"the token may not write to {repo_id} (403 Forbidden)")
    prefix = f"{what}: " if what else ""
    return HubUploadError(f"Hub request failed for {repo_id} ({prefix}{_one_line(exc, secret)}); the upload did not "
                          "complete and nothing was committed, run the same command again to retry")


def upload(source: Union[str, Path], repo_id: str, *, private: bool = False, dry_run: bool = False,
           revision: Optional[str] = None, commit_message: Optional[str] = None, force: bool = False,
           checkpoint=None, baseline_run=None, token: Optional[str] = None, endpoint: Optional[str] = None,
           export_dir: Union[None, str, Path] = None, publish_command: Optional[str] = None) -> UploadResult:
    """Validate and upload a run dir (exported on the fly) or an already exported folder.

    Args:
        source: a training run dir or an exported folder (``model.safetensors`` + ``config.json``).
        repo_id: ``ORG/NAME``.
        private / revision / commit_message: passed to ``create_repo`` / ``upload_folder``.
        dry_run: validate and report the files, contact nobody.
        force: replace the weights of a repo that already has some.
        checkpoint / baseline_run: export options for a run dir (see ``export_run``).
        token: defaults to ``HF_TOKEN`` or the cached login. endpoint: defaults to ``HF_ENDPOINT``.
        export_dir: keep the exported folder here (default: a temporary folder).
        publish_command: this command line, for the card's "How it was made".
    """
    source = Path(source)
    if not source.exists():
        raise HubUploadError(f"{source} does not exist")
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubUploadError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    with tempfile.TemporaryDirectory(prefix="simwnw-export-") as tmp:
        if (source / "run_config.json").is_file():
            folder = Path(export_dir) if export_dir is not None else Path(tmp) / repo_id.split("/")[1]
            try:
                export_run(source, folder, checkpoint, repo_id=repo_id, baseline_run=baseline_run,
                           publish_command=publish_command, overwrite=export_dir is not None and force)
            except (FileNotFoundError, FileExistsError, ValueError) as exc:
                raise HubUploadError(f"cannot export {source}: {exc}") from None
        elif source.is_dir():
            folder = source
        else:
            raise HubUploadError(f"{source} is neither a training run dir (run_config.json) nor an exported folder")
        validate_folder(folder)
        result = UploadResult(folder=folder, repo_id=repo_id, endpoint=endpoint or constants.ENDPOINT,
                              files={p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()})
        if dry_run:
            return result
        result.commit_url = _upload_folder(folder, repo_id, private=private, revision=revision,
                                           commit_message=commit_message, force=force, token=token,
                                           endpoint=endpoint)
        result.uploaded = True
        if export_dir is None:
            result.folder = None  # the temporary export is gone
        return result
