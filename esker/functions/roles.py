"""What functions add to the hub's configuration, as plain dicts for the configurer: the ``esker-functions``
managed service with its role, and the named-server gate (only ``fn-<name>``, at most functions.max_per_user).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable

from tornado import web

from esker.core.functions import function_of
from esker.core.plan import OptionError
from esker.system.ports import stable_port

SERVICE_NAME = "esker-functions"
SNAPSHOT = "functions-metrics.json"  # in the state dir: the service writes it, the hub's collector reads it
STORE = "functions.sqlite"

# What the service's token may do, and why; nothing else (JupyterHub 5+ scopes).
SERVICE_SCOPES = [
    "servers",           # read fn-* servers (ready? last activity?), start a stopped one for a call or a publish,
                         # stop an idle one, stop and delete one at `esker fn delete`
    "list:users",        # the idle pass lists users with ready servers (one paginated request, not one per user)
    "shares",            # grant and revoke shares and share codes of fn-* servers for their owners; includes
                         # access:servers, which the hub requires of whoever grants a share of it
    "read:users:name",   # the hub requires it to share with a user by name
    "read:groups:name",  # ... and this one to share with a group by name
]
# Who may publish, when functions.publish_groups restricts it: a JupyterHub custom scope held through a role by
# those groups (and passed to their servers' tokens, which `esker fn publish` uses).
PUBLISH_SCOPE = "custom:esker-functions:publish"


def publisher_traits(groups: list[str]) -> tuple[dict, list[dict]]:
    """``JupyterHub.custom_scopes`` and the publishers' role for ``functions.publish_groups`` (none when empty:
    then every user publishes and no scope is checked)."""
    if not groups:
        return {}, []
    scopes = {PUBLISH_SCOPE: {"description": "Publish functions with esker fn publish (docs/functions.md)."}}
    role = {"name": "esker-function-publishers", "description": "May publish functions",
            "scopes": [PUBLISH_SCOPE], "groups": list(groups)}
    return scopes, [role]


SERVICE_ENV_KEEP = ("ESKER_FUNCTIONS_PROXY_URL", "ESKER_FUNCTIONS_CALL_TIMEOUT")


def functions_service(cfg: dict, deployment: Any, port: int | None = None, proxy_url: str = "") -> tuple[dict, dict]:
    """The ``esker-functions`` managed service (activator, publish API, page, idle pass) and its role.
    ``proxy_url``: where the service reaches the hub's proxy (the function servers are behind it)."""
    if port is None and os.path.isdir(deployment.state_dir):
        port = stable_port(deployment.state_dir, SERVICE_NAME, 0)
    elif port is None:  # no state dir (a dry rendering of the traitlets): a fixed, recognisable port
        port = 30000 + int(hashlib.sha256(deployment.state_dir.encode()).hexdigest(), 16) % 10000
    env = {"ESKER_CONFIG": deployment.config_file, "ESKER_STATE_DIR": deployment.state_dir,
           **{k: v for k, v in os.environ.items() if k in SERVICE_ENV_KEEP}}
    if proxy_url:
        env["ESKER_FUNCTIONS_PROXY_URL"] = proxy_url
    service = {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{port}",
        "command": [deployment.python, "-m", "esker.functions.service"],
        "environment": env,
        "display": True,
        "oauth_no_confirm": True,
    }
    role = {"name": SERVICE_NAME, "description": "Functions: start them for authorised calls, publish, share, "
            "stop idle ones", "scopes": list(SERVICE_SCOPES), "services": [SERVICE_NAME]}
    return service, role


def _server_of(handler) -> str:
    # The hub's API (/users/<user>/servers/<name>) and pages (/spawn/<user>/<name>) both have the server name
    # second among the route's arguments; tornado has already unquoted it.
    args = [*handler.path_args, *handler.path_kwargs.values()]
    return args[1] if len(args) > 1 else ""


def named_server_gate(limit: int) -> Callable:
    """``JupyterHub.named_server_limit_per_user`` as a callable: the hub asks it before it creates a named server
    (before the server's row exists), so a name other than ``fn-<name>`` is refused there with 400, and then
    the limit applies. The spawner refuses the same names again at start (for hubs configured otherwise)."""

    def gate(handler) -> int:
        server = _server_of(handler)
        try:
            if server:
                function_of(server)
        except OptionError as e:
            raise web.HTTPError(400, str(e)) from None
        return limit

    gate.limit = limit
    return gate
