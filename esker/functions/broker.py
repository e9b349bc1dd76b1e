"""The hub's side of the functions' task broker: a Redis admin client that makes each function server's ACL
user at its start and deletes it at its stop (the rules are esker.core.broker's). ``ACL SAVE`` after every
change when the Redis keeps its users in an ACL file (the chart's does), so a broker restart keeps them."""

from __future__ import annotations

import secrets
from typing import Optional

from esker.core import broker as names


class BrokerError(Exception):
    pass


class BrokerAdmin:
    def __init__(self, url: str, user: str, password: str, timeout: float = 5.0, missing: str = ""):
        import redis  # the hub's dependency; imported here so a hub without a broker never loads it

        self.url, self.missing = url, missing
        self._redis = redis
        self.r = redis.Redis.from_url(url, username=user, password=password, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)

    def _do(self, what: str, fn):
        if self.missing:
            raise BrokerError(self.missing)
        try:
            return fn()
        except (self._redis.RedisError, OSError) as e:
            raise BrokerError(f"the functions' task broker at {self.url}: {what}: {type(e).__name__}: {e}") from None

    def ping(self) -> None:
        self._do("PING", self.r.ping)

    def _save(self) -> None:
        try:
            self.r.execute_command("ACL", "SAVE")
        except self._redis.ResponseError as e:
            if "ACL file" not in str(e):  # "not configured to use an ACL file": nothing to save to
                raise

    def grant(self, owner: str, name: str) -> dict:
        """A fresh ACL user for this start of ``fn-<name>``: ``{url, user, password, prefix}``."""
        password = secrets.token_urlsafe(32)
        user = names.acl_user(owner, name)

        def setuser():
            self.r.execute_command("ACL", "SETUSER", user, *names.acl_rules(owner, name, password))
            self._save()
        self._do("ACL SETUSER", setuser)
        return {"url": self.url, "user": user, "password": password, "prefix": names.key_prefix(owner, name)}

    def revoke(self, owner: str, name: str) -> None:
        """Delete the start's user (Redis closes its connections); its keys stay until they expire."""
        def deluser():
            self.r.execute_command("ACL", "DELUSER", names.acl_user(owner, name))
            self._save()
        self._do("ACL DELUSER", deluser)

    def forget(self, owner: str, name: str) -> int:
        """Delete every key of the function (its deletion): the number deleted."""
        def scan_unlink():
            n = 0
            batch: list = []
            for key in self.r.scan_iter(match=names.key_prefix(owner, name) + "*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    n += self.r.unlink(*batch)
                    batch = []
            return n + (self.r.unlink(*batch) if batch else 0)
        return self._do("SCAN and UNLINK", scan_unlink)

    def users(self) -> list[str]:
        return [u.decode() if isinstance(u, bytes) else u for u in self._do("ACL USERS", lambda: self.r.acl_users())]

    def close(self) -> None:
        self.r.close()


def admin_from_config(functions: dict, environ) -> Optional[BrokerAdmin]:
    """The admin client of ``functions.broker`` (None when no URL is set); it connects at first use. Without
    the password's variable every use fails naming it (the hub's start checks that first: check_at_start)."""
    b = functions.get("broker") or {}
    if not b.get("url"):
        return None
    var = b.get("password_env") or names.PASSWORD_ENV
    password = environ.get(var, "")
    missing = "" if password else (f"functions.broker.url is set but the hub's environment has no {var} "
                                   "(functions.broker.password_env): the broker's admin password")
    return BrokerAdmin(b["url"], b.get("admin_user") or names.ADMIN_USER, password, missing=missing)


def check_at_start(functions: dict, environ, log) -> None:
    """At the hub's start: RuntimeError when the password is missing (the hub does not start half-configured);
    a warning when the broker does not answer yet (the chart's Redis may be starting: function starts say so
    until it does)."""
    admin = admin_from_config(functions, environ)
    if admin is None:
        return
    if admin.missing:
        raise RuntimeError(admin.missing)
    try:
        admin.ping()
    except BrokerError as e:
        log.warning("%s; function servers will not start until it answers", e)
    finally:
        admin.close()
