"""A spawner whose servers cost next to nothing, for bench/scale.py (after JupyterHub's own MockSpawner in
jupyterhub.tests.mocking): no process per user. Every server points at one shared tiny HTTP server that the
harness runs (``NullSpawner.target_port``), which answers any ``/user/<name>/...`` path, the single-user API
included, with JupyterHub-ish JSON and the ``X-JupyterHub-Version`` header the hub checks.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jupyterhub.spawner import Spawner
from traitlets import Integer


class NullSpawner(Spawner):
    """start() returns the shared server's address at once; stop() forgets it; poll() says running."""

    target_port = Integer(0, config=True, help="port of the shared single-user stand-in (bench/scale.py)")

    running = False

    def load_state(self, state):
        super().load_state(state)
        self.running = bool(state.get("null_running"))

    def get_state(self):
        state = super().get_state()
        if self.running:
            state["null_running"] = True
        return state

    def clear_state(self):
        super().clear_state()
        self.running = False

    async def start(self):
        self.running = True
        return ("127.0.0.1", self.target_port)

    async def poll(self):
        return None if self.running else 0

    async def stop(self, now=False):
        self.running = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    version = "0"

    def _answer(self):
        body = json.dumps({"version": "2.14.0", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", self.version)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args):  # quiet
        pass


class SharedServer:
    """The one process-free stand-in for every user's server: a threaded HTTP server in the harness."""

    def __init__(self, jupyterhub_version: str):
        handler = type("H", (_Handler,), {"version": jupyterhub_version})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
