"""The activator: a call to a stopped function starts it (once, however many calls wait), is held until the
server is ready (bounded by functions.start_wait), then goes through the proxy with the caller's own token."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

from tornado.httpclient import HTTPRequest

from esker.core.functions import server_name

FORWARD_HEADERS = ("Authorization", "Content-Type", "Accept")


class StartFailed(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Activator:
    def __init__(self, api, store, start_wait: float, poll: float = 0.25):
        self.api, self.store, self.start_wait, self.poll = api, store, start_wait, poll
        self._starting: dict[tuple[str, str], asyncio.Task] = {}
        self.cold_starts: dict[str, list] = {}  # "owner/name" -> [count, seconds]
        self.last_call: dict[tuple[str, str], float] = {}

    async def server(self, owner: str, name: str) -> dict | None:
        code, user = await self.api("GET", f"/users/{quote(owner, safe='')}", ok=(200,))
        return ((user or {}).get("servers") or {}).get(server_name(name))

    async def ensure_running(self, owner: str, name: str) -> float | None:
        """None if it was ready; else the cold start's seconds. StartFailed (404, 503 with the reason, or
        TimeoutError past start_wait: the start goes on for the next call)."""
        model = await self.server(owner, name)
        if model and model.get("ready"):
            return None
        key = (owner, name)
        task = self._starting.get(key)
        if task is None or task.done():
            task = self._starting[key] = asyncio.ensure_future(self._start(owner, name))
        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.shield(task), self.start_wait)
        took = time.monotonic() - t0
        c = self.cold_starts.setdefault(f"{owner}/{name}", [0, 0.0])
        c[0], c[1] = c[0] + 1, c[1] + took
        return took

    async def _start(self, owner: str, name: str) -> None:
        record = self.store.get(owner, name)
        if record is None:
            raise StartFailed(404, f"{owner} has no published function {name!r}")
        path = f"/users/{quote(owner, safe='')}/servers/{server_name(name)}"
        asked = False
        while True:
            model = await self.server(owner, name)
            if model and model.get("ready"):
                return
            if model is None or not model.get("pending"):
                if asked:  # it was starting and is gone: the start failed
                    raise StartFailed(503, f"function {name} failed to start (see `esker fn logs {name}`)")
                code, data = await self.api.request("POST", path, {"user_options": record.options})
                if code not in (201, 202, 400):  # 400: already running or pending; look again
                    msg = (data or {}).get("message") if isinstance(data, dict) else None
                    raise StartFailed(503 if code >= 500 else code, f"the hub refused to start {name}: "
                                      f"{msg or code}")
                asked = True
            await asyncio.sleep(self.poll)


def forward_request(proxy_url: str, base_url: str, owner: str, name: str, rest: str, method: str, headers,
                    body: bytes, timeout: float) -> HTTPRequest:
    """The call as the proxy gets it: /user/<owner>/fn-<name>/<rest>, same method, body and caller's token."""
    url = (f"{proxy_url.rstrip('/')}{base_url.rstrip('/')}/user/{quote(owner, safe='')}/{server_name(name)}/"
           f"{quote(rest, safe='/')}")
    return HTTPRequest(url, method=method, headers={k: headers[k] for k in FORWARD_HEADERS if k in headers},
                       body=body if method not in ("GET", "HEAD", "DELETE", "OPTIONS") else None,
                       allow_nonstandard_methods=True, follow_redirects=False, request_timeout=timeout)


def safe_rest(rest: str) -> bool:
    """A call's path inside the function: no dot segments (the proxy must not route it elsewhere)."""
    return not any(seg in (".", "..") for seg in rest.replace("\\", "/").split("/"))
