"""Fixtures for the function server's tests: a real server (uvicorn, in a subprocess on a loopback port),
a directory with the bucket's layout, and a tiny hub on loopback that answers `/hub/api/user` for known
tokens the way JupyterHub does (the hub's documented API: the user model with the token's scopes, 403 for
an unknown token)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SRC = ROOT / "images" / "esker-client" / "src"
SCOPE = "access:servers!server=alice/fn-demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeHub:
    """`GET /hub/api/user` with `Authorization: token X` -> the model registered for X, else 403."""

    def __init__(self):
        self.tokens: dict[str, dict] = {}
        self.requests = 0
        self.activity: list[tuple[str, str, dict]] = []  # (path, token, body) of each activity report
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests += 1
                auth = self.headers.get("Authorization", "")
                model = hub.tokens.get(auth[len("token "):]) if auth.startswith("token ") else None
                if self.path.rstrip("/") != "/hub/api/user" or model is None:
                    body, code = b'{"status": 403, "message": "Forbidden"}', 403
                else:
                    body, code = json.dumps(model).encode(), 200
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                hub.activity.append((self.path, self.headers.get("Authorization", ""), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"

    def add(self, token: str, name: str, scopes: list[str], kind: str = "user"):
        self.tokens[token] = {"kind": kind, "name": name, "scopes": scopes}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def publish(root: Path, name: str, vid: str, code: str, entry: str, aliases: dict | None = None, **manifest):
    d = root / ".esker" / "functions" / name / "versions" / vid
    d.mkdir(parents=True, exist_ok=True)
    (d / "code.py").write_text(code)
    m = {"name": name, "vid": vid, "semver": None, "entry": entry, "profile": "minimal", "options": {},
         "source": "module", "origin": "test.py", "created": "2026-01-01T00:00:00Z", "timeout": 60,
         "concurrency": 4, "schema": {}, "packages_hash": "x", **manifest}
    (d / "manifest.json").write_text(json.dumps(m))
    if aliases is not None:
        set_aliases(root, name, aliases)


def set_aliases(root: Path, name: str, aliases: dict):
    p = root / ".esker" / "functions" / name / "aliases.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(aliases))
    os.replace(tmp, p)


class Server:
    def __init__(self, tmp: Path, hub: FakeHub, source: str, name: str = "demo", **env):
        self.port = free_port()
        self.prefix = f"/user/alice/fn-{name}/"
        self.url = f"http://127.0.0.1:{self.port}{self.prefix}"
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)
        self.scratch = tmp / "scratch"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "ESKER_", "AWS_"))}
        self.env.update(
            ESKER_FUNCTION=name, ESKER_FUNCTION_SOURCE=source, HOME=str(self.home), SCRATCH_DIR=str(self.scratch),
            JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{self.port}{self.prefix}", JUPYTERHUB_SERVICE_PREFIX=self.prefix,
            JUPYTERHUB_USER="alice", JUPYTERHUB_SERVER_NAME=f"fn-{name}", JUPYTERHUB_API_URL=hub.api_url,
            JUPYTERHUB_API_TOKEN="the-servers-own-token",
            JUPYTERHUB_ACTIVITY_URL=f"{hub.api_url}/users/alice/activity", ESKER_FUNCTION_ACTIVITY_EVERY="0.5",
            JUPYTERHUB_OAUTH_ACCESS_SCOPES=json.dumps([f"access:servers!server=alice/fn-{name}"]),
            PYTHONPATH=os.pathsep.join([str(CLIENT_SRC), os.environ.get("PYTHONPATH", "")]),
            ESKER_FUNCTION_AUTH_CACHE="1", ESKER_FUNCTION_QUEUE="1")
        self.env.update(env)
        self.stderr_path = tmp / f"server-{self.port}.log"
        self.proc = None

    def start(self, token: str = "alice-token", timeout: float = 60) -> "Server":
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "esker_client.functions.serve"], env=self.env,
                                     stdout=self.stderr, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "api", headers=auth(token), timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log())

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.stderr.close()


def auth(token: str) -> dict:
    return {"Authorization": f"token {token}"}
