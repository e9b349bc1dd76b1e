"""The hub's REST API as the esker-courses service uses it, with the service's own token: course groups and
their members."""

from __future__ import annotations

import json
from urllib.parse import quote

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest


class HubApi:
    """The hub's REST API with the service's own token."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.token = token
        self.http = AsyncHTTPClient()

    async def __call__(self, method: str, path: str, body=None, ok=(200, 201, 204)):
        req = HTTPRequest(f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"},
                          body=None if body is None else json.dumps(body),
                          allow_nonstandard_methods=True, request_timeout=30)
        try:
            r = await self.http.fetch(req, raise_error=False)
        except OSError as e:
            raise web.HTTPError(502, f"hub API unreachable: {e}") from None
        if r.code not in ok:
            return r.code, None
        return r.code, (json.loads(r.body) if r.body else None)


Api = HubApi  # the name the tests and older callers use


async def sync_members(api: HubApi, group: str, add: list[str], remove: list[str] = ()) -> None:
    """Make the hub group exist and hold ``add`` (creating the users), without ``remove``."""
    code, _ = await api("GET", f"/groups/{quote(group)}", ok=(200,))
    if code == 404:
        await api("POST", f"/groups/{quote(group)}", ok=(201, 409))
    if add:
        await api("POST", "/users", {"usernames": list(add)}, ok=(201, 409))
        code, _ = await api("POST", f"/groups/{quote(group)}/users", {"users": list(add)}, ok=(200,))
        if code != 200:
            raise web.HTTPError(502, f"could not add participants to {group} (hub answered {code})")
    if remove:
        await api("DELETE", f"/groups/{quote(group)}/users", {"users": list(remove)}, ok=(200,))
