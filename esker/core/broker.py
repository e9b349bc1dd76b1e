"""The functions' task broker (docs/functions.md, "Async calls"): who a function server is in Redis and what it
may do there. Pure: the hub's broker client (esker.functions.broker) applies these, the tests read them.

Each start of ``fn-<name>`` gets a fresh ACL user whose keys are ``esker:fn:<id>:*`` alone, where ``<id>``
is a hash of owner and name: no glob character of a user name can widen the pattern, and no two functions
share one. The user has no command that lists or scans keys (SCAN and KEYS ignore key patterns), none of
pub/sub, scripting, administration or other users' connections.
"""

from __future__ import annotations

import hashlib
import re

ADMIN_USER = "esker-hub"
PASSWORD_ENV = "ESKER_FUNCTIONS_BROKER_PASSWORD"  # the hub's variable with the admin user's password
URL_RE = re.compile(r"^rediss?://[A-Za-z0-9.\-\[\]:]+(:[0-9]+)?(/[0-9]{1,2})?$")
# What RedisTasks sends, and what redis-py sends when it connects; nothing else.
COMMANDS = ("auth", "hello", "ping", "select", "quit", "reset",
            "hset", "hget", "hgetall", "pexpire", "expire", "del", "sadd", "srem", "smembers")


def function_id(owner: str, name: str) -> str:
    return hashlib.sha256(f"{owner}\0{name}".encode()).hexdigest()[:32]


def acl_user(owner: str, name: str) -> str:
    return f"fn.{function_id(owner, name)}"


def key_prefix(owner: str, name: str) -> str:
    return f"esker:fn:{function_id(owner, name)}:"


def acl_rules(owner: str, name: str, password: str) -> list[str]:
    """The ``ACL SETUSER <user> ...`` rules: ``reset`` first, so a user left by an earlier start (a hub that
    died before its stop) gets exactly these and only this password."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]{32,}", password):
        raise ValueError("a broker password is at least 32 characters of [A-Za-z0-9_-]")
    return ["reset", "on", f">{password}", f"~{key_prefix(owner, name)}*", "resetchannels", "-@all",
            *(f"+{c}" for c in COMMANDS)]


def check_url(url: str) -> str | None:
    """Why ``functions.broker.url`` is wrong, or None."""
    if url and not URL_RE.match(url):
        return (f"{url!r} is not redis://HOST[:PORT][/DB] or rediss://... (no credentials: the password comes "
                f"from the hub's environment, functions.broker.password_env)")
    return None
