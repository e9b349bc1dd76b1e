"""Functions (docs/functions.md): the names, and the rule that a named server is a function's server.

Pure: the spawner (before anything is taken), the hub's named-server gate and the esker-functions service all
decide with these, so the three agree on what ``fn-<name>`` means.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from esker.core.plan import OptionError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
SERVER_PREFIX = "fn-"
FUNCTION_SERVER = "esker_client.functions.serve"  # the module a fn-* server runs instead of jupyterhub-singleuser
OPTION = "function"  # the user_options key naming the function a fn-* server runs


def check_name(name: Any) -> str:
    """A function name, or OptionError(400) saying what a name must be."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise OptionError(f"function name {name!r}: must match {NAME_RE.pattern} (a lowercase letter, then up to "
                          "30 lowercase letters, digits or dashes)")
    return name


def server_name(name: str) -> str:
    return SERVER_PREFIX + check_name(name)


def function_of(server: str) -> str | None:
    """The function a named server runs (``fn-x`` -> ``x``); None for the default server ("")."""
    if server == "":
        return None
    if not server.startswith(SERVER_PREFIX) or not NAME_RE.match(server[len(SERVER_PREFIX):]):
        raise OptionError(f"named server {server!r}: this hub allows named servers only for functions, "
                          f"named {SERVER_PREFIX}<name> with <name> matching {NAME_RE.pattern} "
                          "(publish one with `esker fn publish`)")
    return server[len(SERVER_PREFIX):]


def function_of_server(server: str) -> str | None:
    """Like :func:`function_of`, but None (not an error) for a name that is no function's server."""
    try:
        return function_of(server)
    except OptionError:
        return None


def split_options(server: str, user_options: Mapping[str, Any] | None) -> tuple[str | None, dict]:
    """``(function or None, the profile's user_options)`` for a start of ``server``: a fn-* server's options
    carry ``function`` (equal to the server's suffix), a default server's must not."""
    function = function_of(server)
    opts = dict(user_options or {})
    asked = opts.pop(OPTION, None)
    if function is None:
        if asked is not None:
            raise OptionError(f"{OPTION}: only a function's named server ({SERVER_PREFIX}<name>) runs a function")
        return None, opts
    if asked != function:
        raise OptionError(f"{OPTION}: the server {server} runs the function {function!r}, so user_options must "
                          f"carry \"{OPTION}\": {function!r} (got {asked!r})")
    return function, opts
