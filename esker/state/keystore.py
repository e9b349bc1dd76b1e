"""The key store: the S3 keys issued to each hub user, the secret half encrypted with Fernet, in
``<state>/storage/keys.sqlite`` (0600, in a 0700 folder). The Fernet key is ``fernet.key`` beside it (0600)
or ``$ESKER_STORAGE_KEY``. Secrets never go to logs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet

from esker.objectstore.errors import StorageError
from esker.state.db import Store


def _create_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass
class Identity:
    username: str  # hub username, or "" for the datasets owner
    uid: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    readable: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    updated: float = 0.0


class KeyStore:
    """Issued keys, encrypted with Fernet, in a 0600 sqlite file (one row per hub user)."""

    def __init__(self, directory: str | os.PathLike, fernet_key: str | bytes | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key = fernet_key or os.environ.get("ESKER_STORAGE_KEY")
        if not key:
            kf = self.dir / "fernet.key"
            try:
                _create_private(kf, Fernet.generate_key())
            except FileExistsError:
                pass
            os.chmod(kf, 0o600)
            key = kf.read_bytes().strip()
        self._fernet = Fernet(key)
        self.path = self.dir / "keys.sqlite"
        self._store = Store(self.path, [
            "CREATE TABLE IF NOT EXISTS identities (username TEXT PRIMARY KEY, uid TEXT UNIQUE NOT NULL, "
            "bucket TEXT NOT NULL, access_key TEXT NOT NULL, secret BLOB NOT NULL, readable TEXT NOT NULL, "
            "writable TEXT NOT NULL, updated REAL NOT NULL)",
        ])
        self._db = self._store.tx

    def _row(self, row) -> Identity:
        return Identity(row[0], row[1], row[2], row[3], self._fernet.decrypt(row[4]).decode(),
                        tuple(json.loads(row[5])), tuple(json.loads(row[6])), row[7])

    def get(self, username: str) -> Identity | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM identities WHERE username = ?", (username,)).fetchone()
        return self._row(row) if row else None

    def by_bucket(self, bucket: str) -> Identity | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM identities WHERE bucket = ?", (bucket,)).fetchone()
        return self._row(row) if row else None

    def all(self) -> list[Identity]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM identities ORDER BY username").fetchall()
        return [self._row(r) for r in rows]

    def put(self, ident: Identity) -> None:
        ident.updated = time.time()
        with self._db() as db:
            other = db.execute("SELECT username FROM identities WHERE uid = ? AND username != ?",
                               (ident.uid, ident.username)).fetchone()
            if other:
                raise StorageError(f"RGW user {ident.uid} already belongs to hub user {other[0]!r}")
            db.execute(
                "INSERT OR REPLACE INTO identities VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ident.username, ident.uid, ident.bucket, ident.access_key,
                 self._fernet.encrypt(ident.secret_key.encode()), json.dumps(list(ident.readable)),
                 json.dumps(list(ident.writable)), ident.updated),
            )

    def delete(self, username: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM identities WHERE username = ?", (username,))
