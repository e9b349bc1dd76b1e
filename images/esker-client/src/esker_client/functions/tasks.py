"""The async calls' task store: one SQLite file (0600) in the server's cache directory, no extra server.

A task is visible to the caller who submitted it and to the owner. Finished tasks are kept `ttl` seconds;
a restart turns tasks that were queued or running into failed ones (their worker is gone)."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from typing import Optional

FINISHED = ("done", "failed", "cancelled")
RESTARTED = {"type": "ServerRestarted",
             "message": "the function server restarted while this task was queued or running; submit it again"}


class Tasks:
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
        tid = secrets.token_urlsafe(24)
        self.db.execute("INSERT INTO tasks (id, caller, vid, status, created) VALUES (?, ?, ?, 'queued', ?)",
                        (tid, caller, vid, time.time()))
        return tid

    def running(self, tid: str) -> None:
        self.db.execute("UPDATE tasks SET status='running' WHERE id=? AND status='queued'", (tid,))

    def finish(self, tid: str, status: str, result=None, error: Optional[dict] = None) -> None:
        assert status in FINISHED
        self.db.execute("UPDATE tasks SET status=?, finished=?, result=?, error=? WHERE id=? AND status NOT IN "
                        "('done','failed','cancelled')",
                        (status, time.time(), None if result is None and status != "done" else json.dumps(result),
                         json.dumps(error) if error else None, tid))

    def get(self, tid: str) -> Optional[dict]:
        self.purge()
        row = self.db.execute("SELECT id, caller, vid, status, created, finished, result, error FROM tasks WHERE id=?",
                              (tid,)).fetchone()
        if row is None:
            return None
        t = dict(zip(("task", "caller", "version", "status", "created", "finished", "result", "error"), row))
        t["result"] = json.loads(t["result"]) if t["result"] is not None else None
        t["error"] = json.loads(t["error"]) if t["error"] else None
        return t

    def close(self) -> None:
        self.db.close()
