"""A small Hugging Face Hub-compatible HTTP server for offline upload/download tests.

It implements the routes ``huggingface_hub`` 2.4 calls for ``create_repo``, ``model_info`` /
``repo_info``, ``create_branch``, ``upload_folder`` (``validate-yaml``, ``preupload``, the git-LFS batch
API with "basic" single-part PUT, and the NDJSON ``commit``), and for downloads (``resolve`` with
``X-Repo-Commit`` / ``ETag`` / ``X-Linked-*`` headers, ``tree``, ``paths-info``, ``whoami-v2``,
``agent-harnesses``).
Files whose path ends in ``.safetensors`` / ``.bin`` (or larger than 10 MB) go through LFS like on the
real Hub; everything else is committed inline. Xet is not implemented: run clients with
``HF_HUB_DISABLE_XET=1``.

Faults for reliability tests: ``hub.fail(route, kind, times)`` makes the next ``times`` requests of a route
(``"lfs_put"``, ``"commit"``, ``"preupload"``, ...) answer 500, drop the connection without an answer
(``"reset"``), or stall past the client's timeout (``"timeout"``), before the route changes any state.

Repos are kept in memory: ``repos[repo_id] = Repo`` with branches -> commit -> {path: File}.
Write routes require ``Authorization: Bearer <token>``; unknown routes answer 404 and are logged
in ``server.unhandled`` so a test can show what a client asked for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
LFS_MIN_SIZE = 10 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class File:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        """What the preupload route reports and clients compare with their local OID."""
        return self.sha256 if self.lfs else git_blob_sha1(self.data)

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": len(self.data), "oid": git_blob_sha1(self.data)}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return entry


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: Dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: Dict[str, Dict[str, File]] = field(default_factory=dict)  # commit oid -> files


class HubState:
    def __init__(self, token: str):
        self.token = token
        self.repos: Dict[str, Repo] = {}
        self.lfs_blobs: Dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.unhandled: list = []
        self.requests: list = []
        self.faults: Dict[str, list] = {}  # route name -> kinds still to inject, in order
        self.stall_s = 5.0
        self.headers_seen: list = []  # every request's headers (tests check where a token went)

    def new_repo(self, repo_id: str, private: bool = False) -> Repo:
        oid = uuid.uuid4().hex + "00000000"
        repo = Repo(repo_id, private, branches={"main": oid}, commits={oid: {
            ".gitattributes": File(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", lfs=False)}})
        self.repos[repo_id] = repo
        return repo

    def resolve(self, repo: Repo, revision: str) -> Optional[str]:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        return None


REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass made by start_server

    def log_message(self, *args):  # keep pytest output clean
        pass

    # ---- helpers -------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _send(self, status: int, body: bytes = b"", headers: Optional[dict] = None, head: bool = False):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: Optional[dict] = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, code: Optional[str] = None, extra: Optional[dict] = None,
               head: bool = False):
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def _require_auth(self) -> bool:
        if not self._authorized():
            self._error(401, "Invalid credentials in Authorization header")
            return False
        return True

    def _repo(self, repo_id: str, head: bool = False) -> Optional[Repo]:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            self._error(401 if not self._authorized() else 404, "Repository not found", "RepoNotFound", head=head)
            return None
        return repo

    def _route(self, method: str):
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.state.requests.append((method, path))
        for pattern, name in ROUTES.get(method, ()):
            match = re.fullmatch(pattern, path)
            if match:
                self.state.headers_seen.append(dict(self.headers))
                pending = self.state.faults.get(name)
                if pending:
                    return self._inject(pending.pop(0))
                with self.state.lock:
                    return getattr(self, name)(query=query, **match.groupdict())
        self.state.unhandled.append((method, self.path))
        self._error(404, f"no route for {method} {path}")

    def _inject(self, kind: str):
        """Fail this request before it touches any state."""
        import time

        if kind == "500":
            self._body()
            return self._error(500, "injected internal server error")
        if kind == "reset":  # no status line at all: the client sees the connection drop
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        if kind == "timeout":
            time.sleep(self.state.stall_s)
            self.close_connection = True
            return None
        raise ValueError(f"unknown fault {kind}")

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    # ---- routes --------------------------------------------------------------------------------
    def whoami(self, query):
        if not self._require_auth():
            return
        self._json(200, {"type": "user", "name": "tester", "fullname": "Test User", "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def agent_harnesses(self, query):
        # huggingface_hub's best-effort agent detection registry; an empty one disables detection
        self._json(200, {"standardEnvVars": [], "harnesses": {}})

    def create_repo(self, query):
        if not self._require_auth():
            return
        payload = json.loads(self._body() or b"{}")
        if payload.get("type") not in (None, "model"):
            return self._error(400, "this test server only hosts model repos")
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        base = f"http://{self.headers.get('Host')}"
        if repo_id in self.state.repos:
            return self._json(409, {"error": "You already created this model repo", "url": f"{base}/{repo_id}"})
        self.state.new_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": f"{base}/{repo_id}", "name": repo_id})

    def validate_yaml(self, query):
        payload = json.loads(self._body() or b"{}")
        content = payload.get("content", "")
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            if match:
                data = yaml.safe_load(match.group(1))
                if data is not None and not isinstance(data, dict):
                    raise ValueError("metadata is not a mapping")
        except Exception as exc:
            return self._json(400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
        self._json(200, {"errors": [], "warnings": [] if match else [{"message": "empty or missing yaml metadata"}]})

    def model_info(self, query, repo, rev="main"):
        repo_obj = self._repo(repo)
        if repo_obj is None:
            return
        commit = self.state.resolve(repo_obj, rev)
        if commit is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = repo_obj.commits[commit]
        siblings = []
        for name, f in sorted(files.items()):
            sib = {"rfilename": name}
            if query.get("blobs"):
                sib.update({"size": len(f.data), "blobId": git_blob_sha1(f.data)})
                if f.lfs:
                    sib["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
            siblings.append(sib)
        self._json(200, {"id": repo, "modelId": repo, "sha": commit, "private": repo_obj.private,
                         "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})

    def create_branch(self, query, repo, branch):
        if not self._require_auth():
            return
        repo_obj = self._repo(repo)
        if repo_obj is None:
            return
        if branch in repo_obj.branches:
            return self._error(409, f"branch {branch} already exists")
        payload = json.loads(self._body() or b"{}")
        start = self.state.resolve(repo_obj, payload.get("startingPoint") or "main")
        repo_obj.branches[branch] = start
        self._json(200, {})

    def preupload(self, query, repo, rev):
        if not self._require_auth():
            return
        repo_obj = self._repo(repo)
        if repo_obj is None:
            return
        commit = self.state.resolve(repo_obj, rev)
        if commit is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = repo_obj.commits[commit]
        out = []
        for entry in json.loads(self._body())["files"]:
            lfs = entry["path"].endswith(LFS_SUFFIXES) or entry["size"] >= LFS_MIN_SIZE
            existing = files.get(entry["path"])
            out.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": existing.oid if existing is not None else None})
        self._json(200, {"files": out, "commitOid": commit})

    def lfs_batch(self, query, repo):
        if not self._require_auth():
            return
        if self._repo(repo) is None:
            return
        payload = json.loads(self._body())
        if payload.get("operation") != "upload":
            return self._error(400, "only the upload operation is implemented")
        base = f"http://{self.headers.get('Host')}"
        objects = []
        for obj in payload["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs_blobs:  # already stored: no action, client skips it
                item["actions"] = {"upload": {"href": f"{base}/_lfs/{obj['oid']}", "header": {}}}
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, query, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "uploaded content does not match its sha256")
        self.state.lfs_blobs[oid] = data
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def commit(self, query, repo, rev):
        if not self._require_auth():
            return
        repo_obj = self._repo(repo)
        if repo_obj is None:
            return
        parent = self.state.resolve(repo_obj, rev)
        if parent is None or rev not in repo_obj.branches:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = dict(repo_obj.commits[parent])
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "commit payload must start with a header line")
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = File(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                blob = self.state.lfs_blobs.get(value["oid"])
                if blob is None:
                    return self._error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = File(blob, lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            else:
                return self._error(400, f"unsupported commit operation {key}")
        oid = hashlib.sha1(f"{parent}{uuid.uuid4()}".encode()).hexdigest()
        repo_obj.commits[oid] = files
        repo_obj.branches[rev] = oid
        base = f"http://{self.headers.get('Host')}"
        self._json(200, {"commitUrl": f"{base}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None,
                         "success": True})

    def _lookup(self, repo, rev, head=False):
        repo_obj = self._repo(repo, head=head)
        if repo_obj is None:
            return None, None
        commit = self.state.resolve(repo_obj, rev)
        if commit is None:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound", head=head)
            return None, None
        return repo_obj, commit

    def resolve(self, query, repo, rev, path, head=False):
        repo_obj, commit = self._lookup(repo, rev, head)
        if repo_obj is None:
            return
        f = repo_obj.commits[commit].get(path)
        if f is None:
            return self._error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit}, head=head)
        headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream",
                   "ETag": f'"{git_blob_sha1(f.data)}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": len(f.data)})
        data = f.data
        status = 200
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if ranged and not head:
            start = int(ranged.group(1))
            end = int(ranged.group(2)) if ranged.group(2) else len(f.data) - 1
            data, status = f.data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(f.data)}"
        if head:
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(f.data)))
            self.end_headers()
            return
        self._send(status, data, headers)

    def resolve_head(self, query, repo, rev, path):
        self.resolve(query, repo, rev, path, head=True)

    def tree(self, query, repo, rev, path=""):
        repo_obj, commit = self._lookup(repo, rev)
        if repo_obj is None:
            return
        prefix = path.strip("/") + "/" if path and path.strip("/") else ""
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for name, f in sorted(repo_obj.commits[commit].items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            entries.append(f.tree_entry(name))
        entries += [{"type": "directory", "path": p, "oid": git_blob_sha1(p.encode()), "size": 0} for p in sorted(folders)]
        self._json(200, entries)

    def paths_info(self, query, repo, rev):
        repo_obj, commit = self._lookup(repo, rev)
        if repo_obj is None:
            return
        form = parse_qs(self._body().decode())
        files = repo_obj.commits[commit]
        self._json(200, [files[p].tree_entry(p) for p in form.get("paths", []) if p in files])


ROUTES = {
    "GET": [
        (r"/api/whoami-v2", "whoami"),
        (r"/api/agent-harnesses", "agent_harnesses"),
        (rf"/api/models/{REPO}", "model_info"),
        (rf"/api/models/{REPO}/revision/{REV}", "model_info"),
        (rf"/api/models/{REPO}/tree/{REV}(?:/(?P<path>.*))?", "tree"),
        (rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve"),
    ],
    "HEAD": [
        (rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve_head"),
    ],
    "POST": [
        (r"/api/repos/create", "create_repo"),
        (r"/api/validate-yaml", "validate_yaml"),
        (rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
        (rf"/api/models/{REPO}/preupload/{REV}", "preupload"),
        (rf"/api/models/{REPO}/commit/{REV}", "commit"),
        (rf"/api/models/{REPO}/paths-info/{REV}", "paths_info"),
        (rf"/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ],
    "PUT": [
        (r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ],
}


class HubServer:
    """``with HubServer(token) as hub:`` serves on ``hub.url`` (127.0.0.1, a free port) in a thread."""

    def __init__(self, token: str = "hf_test_token"):
        self.state = HubState(token)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, route: str, kind: str = "500", times: int = 1) -> None:
        """The next ``times`` requests of ``route`` (a handler name, e.g. ``"lfs_put"``) fail with ``kind``."""
        if not any(name == route for routes in ROUTES.values() for _, name in routes):
            raise ValueError(f"no route named {route}")
        self.state.faults.setdefault(route, []).extend([kind] * times)

    @property
    def repos(self):
        return self.state.repos

    @property
    def unhandled(self):
        return self.state.unhandled
