"""A client for a running hub, for `esker bench` (and anything else that drives a live hub): REST calls
with an admin token, spawns timed from the progress stream, and code run in a kernel of a user's server
over the Jupyter websocket protocol.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


@dataclass
class Hub:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    token: str  # an admin token

    @property
    def api(self) -> str:
        return f"{self.url}/hub/api"

    def request(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(method, f"{self.api}{path}", headers=headers, timeout=kw.pop("timeout", 120), **kw)

    def ensure_user(self, name: str, groups: list[str] | None = None, admin: bool = False) -> dict:
        r = self.request("GET", f"/users/{name}")
        if r.status_code == 404:
            r = self.request("POST", f"/users/{name}", json={"admin": admin})
            r.raise_for_status()
        for g in groups or []:
            if self.request("GET", f"/groups/{g}").status_code == 404:
                self.request("POST", f"/groups/{g}").raise_for_status()
            self.request("POST", f"/groups/{g}/users", json={"users": [name]}).raise_for_status()
        return self.request("GET", f"/users/{name}").json()

    def user_token(self, name: str, scopes: list[str] | None = None) -> str:
        body = {"note": "esker tests", "expires_in": 3600}
        if scopes:
            body["scopes"] = scopes
        r = self.request("POST", f"/users/{name}/tokens", json=body)
        r.raise_for_status()
        return r.json()["token"]

    def form_login(self, name: str, password: str = "x", next_url: str | None = None,
                   timeout: float = 600) -> tuple[requests.Session, requests.Response]:
        """Log in through the HTML login form as a browser does and follow the redirects (to the spawn page, the
        spawn-pending page, or straight into a running server). Returns the session (its cookies) and the last
        response; ``response.url`` says where the participant landed."""
        s = requests.Session()
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', s.get(f"{self.url}/hub/login", timeout=60).text).group(1)
        url = f"{self.url}/hub/login" + (f"?next={next_url}" if next_url else "")
        r = s.post(url, data={"username": name, "password": password, "_xsrf": xsrf}, timeout=timeout)
        return s, r

    def login_token(self, name: str, password: str = "x", note: str = "esker") -> str:
        """A user's own token, from logging in through the login form as a browser does: it carries what the
        user may do, shares included (one minted with an admin token carries only what that token holds)."""
        s = requests.Session()
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', s.get(f"{self.url}/hub/login", timeout=60).text).group(1)
        s.post(f"{self.url}/hub/login", data={"username": name, "password": password, "_xsrf": xsrf}, timeout=60)
        # The hub's own _xsrf: a running server the login redirected to sets one of its own under /user/<name>/.
        hub_xsrf = next((c.value for c in s.cookies if c.name == "_xsrf" and c.path.startswith("/hub")), None)
        r = s.post(f"{self.api}/users/{name}/tokens", json={"note": note},
                   headers={"X-XSRFToken": hub_xsrf or xsrf}, timeout=60)
        if r.status_code != 201:
            raise RuntimeError(f"{name} could not log in and make a token: {r.status_code} {r.text}")
        return r.json()["token"]

    def spawn(self, name: str, options: dict | None = None, timeout: float = 600, retries_429: int = 60) -> dict:
        """Start a server and wait until it is ready, following the progress stream as a browser's
        spawn-pending page does. Returns the server model plus ``events`` (each with ``t``, seconds since
        the request), ``seconds`` (request -> the ``ready`` event on the progress stream), ``post_seconds``
        (how long the POST took to answer) and ``throttled`` (429 answers retried: the hub's
        concurrent_spawn_limit)."""
        t0 = time.monotonic()
        throttled = 0
        while True:
            with ThreadPoolExecutor(1) as pool:
                post = pool.submit(self._timed_post, name, options or {}, t0)
                events: list[dict] = []
                while not post.done() or not events:
                    if post.done() and post.result()[0].status_code >= 400:
                        break
                    r = self.request("GET", f"/users/{name}/server/progress", stream=True, timeout=timeout)
                    if r.status_code == 200:
                        events = self._events(r, t0)
                        break
                    r.close()
                    time.sleep(0.05)
                r, post_seconds = post.result()
            if r.status_code == 429 and throttled < retries_429:
                throttled += 1
                time.sleep(float(r.headers.get("Retry-After") or 1))
                continue
            break
        if r.status_code >= 400:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text
            raise SpawnRefused(r.status_code, message)
        if not events or not (events[-1].get("ready") or events[-1].get("failed")):
            events += self.follow_progress(name, timeout, t0)
        seconds = time.monotonic() - t0
        model = self.request("GET", f"/users/{name}").json()["servers"].get("", {})
        model["events"] = events
        model["seconds"] = next((e["t"] for e in events if e.get("ready")), seconds)
        model["post_seconds"] = post_seconds
        model["throttled"] = throttled
        if not model.get("ready"):
            raise RuntimeError(f"{name}'s server is not ready: {events[-3:]}")
        return model

    def _timed_post(self, name: str, options: dict, t0: float):
        r = self.request("POST", f"/users/{name}/server", json=options)
        return r, time.monotonic() - t0

    @staticmethod
    def _events(r: requests.Response, t0: float | None = None) -> list[dict]:
        events = []
        with r:
            for line in r.iter_lines():
                if line.startswith(b"data:"):
                    ev = json.loads(line[5:])
                    if t0 is not None:
                        ev["t"] = time.monotonic() - t0
                    events.append(ev)
                    if ev.get("ready") or ev.get("failed"):
                        break
        return events

    def follow_progress(self, name: str, timeout: float = 600, t0: float | None = None) -> list[dict]:
        return self._events(self.request("GET", f"/users/{name}/server/progress", stream=True, timeout=timeout), t0)

    def delete_user(self, name: str) -> None:
        r = self.request("DELETE", f"/users/{name}")
        if r.status_code not in (204, 404):
            r.raise_for_status()

    def server_url(self, name: str) -> str:
        return f"{self.url}/user/{name}/"

    def stop(self, name: str, timeout: float = 120) -> None:
        r = self.request("DELETE", f"/users/{name}/server")
        if r.status_code not in (202, 204, 400):
            r.raise_for_status()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            servers = self.request("GET", f"/users/{name}").json().get("servers", {})
            if "" not in servers:
                return
            time.sleep(0.3)
        raise TimeoutError(f"{name}'s server did not stop")


class SpawnRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


async def _execute(conn, code: str, timeout: float) -> dict:
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    out = {"stdout": "", "stderr": "", "error": None, "result": None}
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("kernel did not finish in time")
        raw = await asyncio.wait_for(conn.read_message(), remaining)
        if raw is None:
            raise ConnectionError("kernel websocket closed")
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        t = msg["msg_type"]
        c = msg["content"]
        if t == "stream":
            out[c["name"]] += c["text"]
        elif t == "execute_result":
            out["result"] = c["data"].get("text/plain")
        elif t == "error":
            out["error"] = f"{c['ename']}: {c['evalue']}\n" + "\n".join(c.get("traceback", []))
        elif t == "status" and c.get("execution_state") == "idle":
            return out


async def _run_cells(server_url: str, token: str, cells: list[str], timeout: float) -> list[dict]:
    headers = {"Authorization": f"token {token}"}
    r = await asyncio.to_thread(requests.post, f"{server_url}api/kernels", headers=headers, json={}, timeout=60)
    r.raise_for_status()
    kid = r.json()["id"]
    ws_url = server_url.replace("http", "ws", 1) + f"api/kernels/{kid}/channels"
    results = []
    try:
        # A busy machine (a workshop burst) can take more than tornado's default 20 s to open a kernel.
        request = HTTPRequest(ws_url, headers=headers, connect_timeout=120, request_timeout=120)
        conn = await websocket_connect(request, max_message_size=64 * 1024**2)
        for code in cells:
            results.append(await _execute(conn, code, timeout))
            if results[-1]["error"]:
                break
        conn.close()
    finally:
        await asyncio.to_thread(requests.delete, f"{server_url}api/kernels/{kid}", headers=headers, timeout=30)
    return results


def run_code(server_url: str, token: str, code: str, timeout: float = 300) -> dict:
    """Run code in a fresh kernel of the server at server_url (…/user/NAME/); stdout, stderr, error."""
    return asyncio.run(_run_cells(server_url, token, [code], timeout))[0]


class KernelSession:
    """One kernel of a server kept open across calls: ``run(code)`` executes a cell in it and returns what
    run_code returns. For measurements interleaved with other work (the kernel starts once, outside them).
    Use as a context manager; the kernel is deleted on exit."""

    def __init__(self, server_url: str, token: str, timeout: float = 300):
        self.server_url, self.timeout = server_url, timeout
        self.headers = {"Authorization": f"token {token}"}
        self.loop = asyncio.new_event_loop()
        self.kid: str | None = None
        self.conn = None

    def __enter__(self) -> "KernelSession":
        r = requests.post(f"{self.server_url}api/kernels", headers=self.headers, json={}, timeout=60)
        r.raise_for_status()
        self.kid = r.json()["id"]
        ws_url = self.server_url.replace("http", "ws", 1) + f"api/kernels/{self.kid}/channels"
        request = HTTPRequest(ws_url, headers=self.headers, connect_timeout=120, request_timeout=120)
        try:
            async def connect():  # tornado wants its loop running when the connection is made
                return await websocket_connect(request, max_message_size=64 * 1024**2)

            self.conn = self.loop.run_until_complete(connect())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, code: str, timeout: float | None = None) -> dict:
        return self.loop.run_until_complete(_execute(self.conn, code, timeout or self.timeout))

    def __exit__(self, *exc) -> None:
        try:
            if self.conn is not None:
                async def close():  # tornado closes on its running loop too
                    self.conn.close()

                self.loop.run_until_complete(close())
            if self.kid:
                requests.delete(f"{self.server_url}api/kernels/{self.kid}", headers=self.headers, timeout=30)
        finally:
            self.loop.close()


def run_notebook(server_url: str, token: str, path: str, timeout: float = 600) -> list[dict]:
    """Run every code cell of a notebook file, in order, in one kernel of the server."""
    nb = json.loads(open(path).read())
    cells = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
             for c in nb["cells"] if c["cell_type"] == "code"]
    return asyncio.run(_run_cells(server_url, token, cells, timeout))
