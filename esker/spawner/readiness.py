"""Knowing the moment a server answers. JupyterHub finds out by polling with an exponential backoff (0.2 s
doubling up to 5 s, jupyterhub.utils.exponential_backoff): a JupyterLab that listens after 3 s is noticed
anywhere up to 3 s later. The spawner waits here instead, with a short fixed interval, so the hub's own check
answers at its first try.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

POLL = 0.05  # seconds between tries for one server alone
TRIES_PER_SECOND = 80  # across all servers being waited for: 30 starting at once poll every 0.375 s each, so the
                       # hub's polling stays a small share of a CPU that the starting servers need
_waiting = 0  # servers being waited for in this process


class ExitedEarly(RuntimeError):
    """The server's process ended before it answered."""


class NotAnswering(RuntimeError):
    """The server runs but did not answer within http_timeout (not a TimeoutError: that one is start_timeout's)."""


async def _listening(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def _answers(url: str) -> bool:
    """Any answer below 500 counts, as for JupyterHub's wait_for_http_server (a 302 to login, a 404)."""
    try:
        r = await AsyncHTTPClient().fetch(url, raise_error=False, follow_redirects=False, request_timeout=5)
    except (OSError, HTTPClientError, asyncio.TimeoutError):
        return False
    return 0 < r.code < 500


async def wait_answering(url: str, budget: float, exited: Callable[[], Awaitable[int | None]] | None = None,
                         poll: float = POLL) -> bool:
    """Wait up to ``budget`` seconds until ``url`` answers HTTP; True if it did, False when the budget ran out
    (the caller lets JupyterHub go on waiting within its own http_timeout). ``exited``: the process's exit
    status, or None while it runs; an exit before the first answer raises :class:`ExitedEarly` at once
    instead of the hub's waiting out http_timeout for a server that is gone."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    global _waiting
    deadline = time.monotonic() + budget
    _waiting += 1
    try:
        while time.monotonic() < deadline:
            if await _listening(host, port) and await _answers(url):
                return True
            if exited is not None:
                status = await exited()
                if status is not None:
                    raise ExitedEarly(f"JupyterLab exited with status {status} before it answered")
            await asyncio.sleep(max(poll, _waiting / TRIES_PER_SECOND))
        return False
    finally:
        _waiting -= 1
