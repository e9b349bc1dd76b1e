"""The async calls' task store, the same interface on two stores (docs/functions.md, "Async calls"):

- ``SqliteTasks``: one SQLite file (0600) in the owner's home, no extra server: embedded mode's default;
- ``RedisTasks``: a Redis broker (the chart's), reached as a per-function ACL user that the hub creates at
  each start and deletes at stop, whose keys all start with the function's own prefix.

The server (serve.prepare) takes the broker when the hub named one (``ESKER_FUNCTION_BROKER_*``). Either way
a task is visible to the caller who submitted it and to the owner; finished tasks are kept ``ttl`` seconds; a
restart turns the tasks that were queued or running into failed ones (their worker is gone). Both are used
from the server's one event-loop thread, the only writer of its function's tasks, so a read-then-write needs
no transaction. (None is used on Redis: Redis 7.0 replays a MULTI/EXEC of its append-only file as a client
held to the ACL and drops it, "NOPERM ACLs rules changed", so a restarted broker lost every such write; plain
pipelines replay.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sqlite3
import time
from typing import Mapping, Optional, Protocol
from urllib.parse import urlparse

FINISHED = ("done", "failed", "cancelled")
RESTARTED = {"type": "ServerRestarted",
             "message": "the function server restarted while this task was queued or running; submit it again"}
FIELDS = ("task", "caller", "version", "status", "created", "finished", "result", "error")
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")  # what new_id() makes; anything else is no task of ours
BROKER_ENV = ("ESKER_FUNCTION_BROKER_URL", "ESKER_FUNCTION_BROKER_USER", "ESKER_FUNCTION_BROKER_PASSWORD",
              "ESKER_FUNCTION_BROKER_PREFIX")
UNFINISHED_KEEP = 7 * 86400  # a queued or running task's key expires after this even if nobody finishes it


class TaskStoreError(Exception):
    """The store cannot be reached or refused us; a caller gets 503 with this message."""


class Tasks(Protocol):
    ttl: float

    def create(self, caller: str, vid: str) -> str: ...
    def running(self, tid: str) -> None: ...
    def finish(self, tid: str, status: str, result=None, error: Optional[dict] = None) -> None: ...
    def get(self, tid: str) -> Optional[dict]: ...
    def delete(self, tid: str) -> None: ...
    def close(self) -> None: ...


def new_id() -> str:
    return secrets.token_urlsafe(24)


class SqliteTasks:
    def __init__(self, path: str, ttl: float):
        self.ttl = float(ttl)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # created 0600 before sqlite opens it
        os.close(fd)
        os.chmod(path, 0o600)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS tasks (
            id TEXT PRIMARY KEY, caller TEXT NOT NULL, vid TEXT NOT NULL, status TEXT NOT NULL,
            created REAL NOT NULL, finished REAL, result TEXT, error TEXT)""")
        for suffix in ("-wal", "-shm"):  # sqlite makes these with the umask: the owner's alone too
            if os.path.exists(path + suffix):
                os.chmod(path + suffix, 0o600)
        self.db.execute("UPDATE tasks SET status='failed', finished=?, error=? WHERE status IN ('queued','running')",
                        (time.time(), json.dumps(RESTARTED)))
        self.purge()

    def purge(self) -> int:
        return self.db.execute("DELETE FROM tasks WHERE finished IS NOT NULL AND finished < ?",
                               (time.time() - self.ttl,)).rowcount

    def create(self, caller: str, vid: str) -> str:
        tid = new_id()
        self.db.execute("INSERT INTO tasks (id, caller, vid, status, created) VALUES (?, ?, ?, 'queued', ?)",
                        (tid, caller, vid, time.time()))
        return tid

    def running(self, tid: str) -> None:
        self.db.execute("UPDATE tasks SET status='running' WHERE id=? AND status='queued'", (tid,))

    def finish(self, tid: str, status: str, result=None, error: Optional[dict] = None) -> None:
        assert status in FINISHED
        self.db.execute("UPDATE tasks SET status=?, finished=?, result=?, error=? WHERE id=? AND status NOT IN "
                        "('done','failed','cancelled')",
                        (status, time.time(), json.dumps(result) if status == "done" else None,
                         json.dumps(error) if error else None, tid))

    def get(self, tid: str) -> Optional[dict]:
        self.purge()
        row = self.db.execute("SELECT id, caller, vid, status, created, finished, result, error FROM tasks WHERE id=?",
                              (tid,)).fetchone()
        if row is None:
            return None
        t = dict(zip(FIELDS, row))
        t["result"] = json.loads(t["result"]) if t["result"] is not None else None
        t["error"] = json.loads(t["error"]) if t["error"] else None
        return t

    def delete(self, tid: str) -> None:
        self.db.execute("DELETE FROM tasks WHERE id=?", (tid,))

    def close(self) -> None:
        self.db.close()


class RedisTasks:
    """A task is the hash ``<prefix>task:<id>``, expiring ``ttl`` s after it finishes; ``<prefix>live`` is the
    set of unfinished ones, which a restart fails. The ACL user may touch ``<prefix>*`` only and has no command
    that lists keys, so nothing here can see another function's tasks (esker.core.broker)."""

    def __init__(self, client, prefix: str, ttl: float):
        import redis
        self.r, self.prefix, self.ttl = client, prefix, float(ttl)
        self._redis_errors = (redis.RedisError, OSError)
        with self._errors():
            for raw in self.r.smembers(self.prefix + "live"):
                self.finish(raw.decode(), "failed", error=RESTARTED)

    def _key(self, tid: str) -> str:
        return f"{self.prefix}task:{tid}"

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except self._redis_errors as e:
            raise TaskStoreError(f"the task broker: {type(e).__name__}: {e}") from None

    def create(self, caller: str, vid: str) -> str:
        tid = new_id()
        with self._errors():
            p = self.r.pipeline(transaction=False)
            p.hset(self._key(tid), mapping={"caller": caller, "version": vid, "status": "queued",
                                            "created": repr(time.time())})
            p.expire(self._key(tid), UNFINISHED_KEEP)
            p.sadd(self.prefix + "live", tid)
            p.execute()
        return tid

    def running(self, tid: str) -> None:
        with self._errors():
            if self.r.hget(self._key(tid), "status") == b"queued":
                self.r.hset(self._key(tid), "status", "running")

    def finish(self, tid: str, status: str, result=None, error: Optional[dict] = None) -> None:
        assert status in FINISHED
        key = self._key(tid)
        with self._errors():
            now = self.r.hget(key, "status")
            if now is None or now.decode() in FINISHED:
                self.r.srem(self.prefix + "live", tid)
                return
            fields = {"status": status, "finished": repr(time.time())}
            if status == "done":
                fields["result"] = json.dumps(result)
            if error:
                fields["error"] = json.dumps(error)
            p = self.r.pipeline(transaction=False)
            p.hset(key, mapping=fields)
            p.pexpire(key, max(1, int(self.ttl * 1000)))
            p.srem(self.prefix + "live", tid)
            p.execute()

    def get(self, tid: str) -> Optional[dict]:
        if not TASK_ID.match(tid):
            return None
        with self._errors():
            raw = self.r.hgetall(self._key(tid))
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return {"task": tid, "caller": h["caller"], "version": h["version"], "status": h["status"],
                "created": float(h["created"]), "finished": float(h["finished"]) if "finished" in h else None,
                "result": json.loads(h["result"]) if "result" in h else None,
                "error": json.loads(h["error"]) if "error" in h else None}

    def delete(self, tid: str) -> None:
        with self._errors():
            p = self.r.pipeline(transaction=False)
            p.delete(self._key(tid))
            p.srem(self.prefix + "live", tid)
            p.execute()

    def close(self) -> None:
        self.r.close()


def broker_settings(env: Mapping[str, str]) -> Optional[dict]:
    """The broker the hub named (``ESKER_FUNCTION_BROKER_*``), checked; None without one. ValueError naming
    the variable that is missing or wrong."""
    url = env.get("ESKER_FUNCTION_BROKER_URL", "")
    if not url:
        return None
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss") or not u.hostname:
        raise ValueError(f"ESKER_FUNCTION_BROKER_URL={url!r}: expected redis://HOST:PORT[/DB] or rediss://...")
    if u.username or u.password:
        raise ValueError("ESKER_FUNCTION_BROKER_URL carries credentials: they come in ESKER_FUNCTION_BROKER_USER "
                         "and ESKER_FUNCTION_BROKER_PASSWORD")
    missing = [k for k in BROKER_ENV[1:] if not env.get(k)]
    if missing:
        raise ValueError(f"ESKER_FUNCTION_BROKER_URL is set but {', '.join(missing)} is not")
    return {"url": url, "user": env["ESKER_FUNCTION_BROKER_USER"], "password": env["ESKER_FUNCTION_BROKER_PASSWORD"],
            "prefix": env["ESKER_FUNCTION_BROKER_PREFIX"]}


def connect(broker: dict, timeout: float = 5.0):
    """A redis-py client as the function's ACL user, checked with a PING (TaskStoreError if refused)."""
    import redis
    client = redis.Redis.from_url(broker["url"], username=broker["user"], password=broker["password"],
                                  socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30,
                                  retry_on_timeout=True)
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        client.close()
        raise TaskStoreError(f"the task broker at {broker['url']} as {broker['user']}: {type(e).__name__}: {e}") from None
    return client
