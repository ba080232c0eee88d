"""A small Hugging Face Hub-protocol HTTP server on 127.0.0.1, for tests.

It answers what ``huggingface_hub.snapshot_download``, ``hf_hub_download``, ``HfApi.create_repo``
and ``HfApi.upload_folder`` (regular, non-LFS files only) ask:

* ``GET /api/models/{repo}/revision/{rev}`` -> ``{"id", "sha", "siblings"}``;
* ``GET /api/models/{repo}/tree/{rev}`` -> ``[{"type": "file", "path", "size", "oid"}]``;
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length``;
* ``POST /api/repos/create``, ``POST /api/models/{repo}/preupload/{rev}`` (every file
  "regular"), ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, base64 files),
  ``POST /api/validate-yaml``;
* 404 with ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``.

It never imports huggingface_hub (the client side must read ``HF_ENDPOINT`` first).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    """A repo: commits (sha -> files) and refs (branch or tag -> sha)."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """The repos a :class:`FakeHubServer` serves, and a count of the requests it got."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()

    def create(self, repo_id: str) -> bool:
        """Creates an empty repo; False if it exists."""
        if repo_id in self.repos:
            return False
        self.repos[repo_id] = FakeRepo()
        return True

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes] | Path,
        branch: str = "main",
        tag: str | None = None,
    ) -> str:
        """Adds a commit of ``files`` (or a folder's files) on ``branch``; returns its sha."""
        if isinstance(files, Path):
            files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        repo = self.repos.setdefault(repo_id, FakeRepo())
        digest.update(str(len(repo.commits)).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = dict(files)
        repo.refs[branch] = sha
        if tag is not None:
            repo.refs[tag] = sha
        return sha


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"  # one connection per request: stop() really cuts clients off

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.hub.lock:
            self.hub.requests[f"{self.command} {path}"] += 1
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            self._api(f"{parts[2]}/{parts[3]}", parts[4], parts[5], body)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body)
        else:
            self._error(404, "NotFound", "no such endpoint", body)

    def do_POST(self) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.hub.lock:
            self.hub.requests[f"POST {path}"] += 1
        length = int(self.headers.get("Content-Length", 0))
        payload = self.rfile.read(length)
        parts = path.strip("/").split("/")
        if parts == ["api", "validate-yaml"]:
            return self._json(200, {"errors": [], "warnings": []})
        if parts == ["api", "repos", "create"]:
            data = json.loads(payload)
            repo_id = f"{data['organization']}/{data['name']}"
            url = f"http://{self.headers['Host']}/{repo_id}"
            if not self.hub.create(repo_id):  # the Hub answers 409 and still gives the url
                return self._json(409, {"error": "You already created this model repo", "url": url})
            return self._json(200, {"url": url})
        if parts[:2] == ["api", "models"] and len(parts) == 6:
            repo_id, kind, revision = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            repo = self.hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", True)
            if kind == "preupload":
                files = [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in json.loads(payload)["files"]
                ]
                return self._json(200, {"files": files})
            if kind == "commit":
                return self._commit(repo_id, repo, revision, payload)
        self._error(404, "NotFound", "no such endpoint", True)

    def _commit(self, repo_id: str, repo: FakeRepo, revision: str, payload: bytes) -> None:
        parent = repo.resolve(revision)
        files = dict(repo.commits[parent]) if parent else {}
        for line in payload.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] != "header":
                return self._error(400, "BadRequest", f"unsupported {item['key']}", True)
        sha = self.hub.commit(repo_id, files, branch=revision)
        url = f"http://{self.headers['Host']}/{repo_id}/commit/{sha}"
        self._json(200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"}, True)

    def _revision(self, repo_id: str, revision: str, body: bool) -> tuple[str, dict] | None:
        """(sha, files) of ``revision``, or None after answering the 404 for it."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", body)
            return None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
            return None
        return sha, repo.commits[sha]

    def _api(self, repo_id: str, kind: str, revision: str, body: bool) -> None:
        found = self._revision(repo_id, revision, body)
        if found is None:
            return
        sha, files = found
        if kind == "revision":
            data: object = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
        else:
            data = [
                {"type": "file", "path": name, "size": len(content), "oid": _oid(content)}
                for name, content in sorted(files.items())
            ]
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)

    def _resolve(self, repo_id: str, revision: str, name: str, body: bool) -> None:
        found = self._revision(repo_id, revision, body)
        if found is None:
            return
        sha, files = found
        content = files.get(name)
        if content is None:
            headers = {"X-Repo-Commit": sha}
            return self._error(404, "EntryNotFound", f"{name} does not exist", body, headers)
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{_oid(content)}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, content, headers, body)

    def _error(
        self, status: int, code: str, message: str, body: bool, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
        headers["Content-Type"] = "application/json"
        self._send(status, json.dumps({"error": message}).encode(), headers, body)

    def _send(self, status: int, content: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)


def _oid(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class FakeHubServer:
    """Serves a :class:`FakeHub` on 127.0.0.1; bound on creation, stoppable and restartable.

    Args:
        hub: The repos to serve.
        port: Port to bind; 0 picks a free one (then kept across restarts).
    """

    def __init__(self, hub: FakeHub, port: int = 0) -> None:
        self.hub = hub
        self._handler = type("Handler", (_Handler,), {"hub": hub})
        self._server: ThreadingHTTPServer | None = ThreadingHTTPServer(
            ("127.0.0.1", port), self._handler
        )
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Starts serving (binding the port again after :meth:`stop`)."""
        if self._thread is not None:
            return
        if self._server is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops serving and closes the port: clients get 'connection refused'."""
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join()
            self._server.server_close()
        self._server, self._thread = None, None
