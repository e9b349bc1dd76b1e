"""The one SQLite helper every store in the state directory uses (ledger, course store, key store).

Hub state is root's alone: each database and its journal files are created mode 0600 (umask 077 around
every connection), and each write is one ``BEGIN IMMEDIATE`` transaction, so concurrent writers (the hub,
the courses service, the CLI) serialise on the file's lock instead of reading stale state.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


class Store:
    """A SQLite file with a schema: ``Store(path, ["CREATE TABLE IF NOT EXISTS ..."])``."""

    timeout = 30.0

    def __init__(self, path: str | os.PathLike, schema: Iterable[str] = ()):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if not os.path.exists(self.path):
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        os.chmod(self.path, 0o600)  # also tightens a file an older version left 0644
        with self.tx() as db:
            for statement in schema:
                db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        old = os.umask(0o077)  # the -journal/-wal files SQLite creates beside the file
        try:
            return sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        finally:
            os.umask(old)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the lock is taken before anything is read."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()
