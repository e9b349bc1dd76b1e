"""A small JSON client for the esker-functions service (stdlib only: esker_client has no hard dependencies)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Optional, Tuple

SERVICE = "/services/esker-functions/"


class ServiceError(Exception):
    """The service (or the hub) answered an error; ``str()`` is its own message, never the token."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


def hub_url(explicit: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """The hub's public origin: --hub-url, $ESKER_HUB_URL, $JUPYTERHUB_PUBLIC_URL, else $JUPYTERHUB_API_URL's."""
    e = os.environ if env is None else env
    for v in (explicit, e.get("ESKER_HUB_URL"), e.get("JUPYTERHUB_PUBLIC_URL"), e.get("JUPYTERHUB_API_URL")):
        if v:
            u = urllib.parse.urlsplit(v)
            if u.scheme not in ("http", "https") or not u.netloc:
                raise ValueError(f"hub URL {v!r} is not an http(s) URL")
            return f"{u.scheme}://{u.netloc}"
    raise ValueError("no hub URL: run inside an Esker notebook server, or pass --hub-url / set ESKER_HUB_URL")


def token(token_file: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> str:
    """--token-file, $ESKER_TOKEN, else this server's $JUPYTERHUB_API_TOKEN (tokens never go on argv)."""
    e = os.environ if env is None else env
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            t = f.read().strip()
        if not t:
            raise ValueError(f"--token-file {token_file}: the file is empty")
        return t
    t = e.get("ESKER_TOKEN") or e.get("JUPYTERHUB_API_TOKEN")
    if not t:
        raise ValueError("no token: set ESKER_TOKEN or pass --token-file (inside a notebook server "
                         "JUPYTERHUB_API_TOKEN is used)")
    return t


def _message(status: int, raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:500] or f"status {status}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return ": ".join(str(x) for x in (err.get("type"), err.get("message")) if x)
        if isinstance(err, str):
            return err
        if body.get("message"):  # JupyterHub's own errors
            return str(body["message"])
    return json.dumps(body)[:500]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would resend the Authorization header to wherever a redirect points: refuse redirects instead
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise ServiceError(code, f"redirected to {newurl} (is the hub URL right and the token valid?)")


_OPENER = urllib.request.build_opener(_NoRedirect)


def request(method: str, url: str, tok: str, body: Any = None, timeout: float = 120) -> Tuple[int, dict, Any]:
    """(status, headers, parsed JSON or text); ServiceError for a 4xx/5xx answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"token {tok}")
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            raw, status, headers = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raise ServiceError(e.code, _message(e.code, e.read())) from None
    except urllib.error.URLError as e:
        raise ServiceError(0, f"cannot reach {urllib.parse.urlsplit(url).netloc}: {e.reason}") from None
    if not raw:
        return status, headers, None
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")
