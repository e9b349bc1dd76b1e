"""Who is calling: the hub token of the `Authorization` header, checked with JupyterHub's own HubAuth against
the server's access scopes (`JUPYTERHUB_OAUTH_ACCESS_SCOPES`, which the hub sets to
`access:servers!server=<owner>/fn-<name>`; a share grants it).

Only the header counts: a `?token=` in the URL is ignored, since URLs end up in logs. HubAuth caches each
token's answer; the cache is kept short (`ESKER_FUNCTION_AUTH_CACHE`, default 5 s) so a revoked share or token
stops working within seconds rather than HubAuth's default 5 minutes."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Optional

from jupyterhub.services.auth import HubAuth, check_scopes

HEADER = re.compile(r"^\s*(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)
METRICS_SERVICE = "esker-functions"


@dataclass(frozen=True)
class Caller:
    kind: str  # "user" or "service"
    name: str

    @property
    def key(self) -> str:  # what a task records as its submitter
        return f"{self.kind}:{self.name}"


class Denied(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def token_from(header: Optional[str]) -> Optional[str]:
    m = HEADER.match(header or "")
    return m.group(1) if m else None


class Auth:
    def __init__(self, owner: str, server_name: str, env=os.environ):
        cache = float(env.get("ESKER_FUNCTION_AUTH_CACHE", "5") or 0)
        # HubAuth's max age 0 means "forever": 0 here means no cache at all.
        self.use_cache = cache > 0
        self.hub = HubAuth(cache_max_age=max(1, math.ceil(cache)))
        self.owner = owner
        scopes = env.get("JUPYTERHUB_OAUTH_ACCESS_SCOPES")
        # Without the hub's list (a hand-started server), access is this server's own scope, never "anyone".
        self.required = set(json.loads(scopes)) if scopes else {f"access:servers!server={owner}/{server_name}"}
        if not self.required:
            self.required = {f"access:servers!server={owner}/{server_name}"}

    async def identify(self, authorization: Optional[str]) -> tuple[Caller, bool]:
        """(the caller, whether it has the access scope), or Denied(401|502)."""
        token = token_from(authorization)
        if not token:
            raise Denied(401, "no token: send `Authorization: token <JupyterHub token>`")
        try:
            model = await self.hub.user_for_token(token, use_cache=self.use_cache, sync=False)
        except Exception as e:  # tornado HTTPError from HubAuth: the hub did not answer properly
            raise Denied(502, f"cannot check the token with the hub: {getattr(e, 'log_message', None) or e}") from None
        if not model:
            raise Denied(401, "invalid or expired token")
        caller = Caller(model.get("kind", "user"), model.get("name", ""))
        return caller, bool(check_scopes(self.required, set(model.get("scopes", []))))

    def is_owner(self, c: Caller) -> bool:
        return c.kind == "user" and c.name == self.owner

    def may_see_stats(self, c: Caller) -> bool:
        return self.is_owner(c) or (c.kind == "service" and c.name == METRICS_SERVICE)
