"""The functions service's records: per (owner, name), the user_options of its last publish (what a call to
the stopped function starts it with), the manifest, and its publish history (the versions the page lists).

One SQLite file in the state dir, 0600 (esker.state.db.Store): the hub's state is root's alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from esker.state.db import Store

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS functions (owner TEXT NOT NULL, name TEXT NOT NULL, options TEXT NOT NULL, "
    "manifest TEXT NOT NULL, version TEXT NOT NULL, published TEXT NOT NULL, PRIMARY KEY (owner, name))",
    "CREATE TABLE IF NOT EXISTS versions (owner TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, "
    "semver TEXT, published TEXT NOT NULL, PRIMARY KEY (owner, name, version))",
]


@dataclass(frozen=True)
class Record:
    owner: str
    name: str
    options: dict  # user_options of the named server: {"profile", <profile options>, "function"}
    manifest: dict
    version: str
    published: str  # ISO UTC
    versions: tuple[dict, ...] = ()  # [{"version", "semver", "published"}], newest first

    def as_json(self) -> dict:
        return {"owner": self.owner, "name": self.name, "options": dict(self.options), "version": self.version,
                "published": self.published, "manifest": dict(self.manifest), "versions": list(self.versions)}


class FunctionStore(Store):
    def __init__(self, path: str):
        super().__init__(path, SCHEMA)

    def put(self, owner: str, name: str, options: dict, manifest: dict, now: datetime | None = None) -> Record:
        when = (now or datetime.now(timezone.utc)).isoformat()
        version = str(manifest.get("vid") or "")
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO functions VALUES (?, ?, ?, ?, ?, ?)",
                       (owner, name, json.dumps(options, sort_keys=True), json.dumps(manifest, sort_keys=True),
                        version, when))
            db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?)",
                       (owner, name, version, manifest.get("semver"), when))
        return self.get(owner, name)

    def get(self, owner: str, name: str) -> Record | None:
        with self.tx() as db:
            row = db.execute("SELECT owner, name, options, manifest, version, published FROM functions "
                             "WHERE owner = ? AND name = ?", (owner, name)).fetchone()
            if row is None:
                return None
            vs = db.execute("SELECT version, semver, published FROM versions WHERE owner = ? AND name = ? "
                            "ORDER BY published DESC", (owner, name)).fetchall()
        return _record(row, vs)

    def delete(self, owner: str, name: str) -> bool:
        with self.tx() as db:
            n = db.execute("DELETE FROM functions WHERE owner = ? AND name = ?", (owner, name)).rowcount
            db.execute("DELETE FROM versions WHERE owner = ? AND name = ?", (owner, name))
        return n > 0

    def of_owner(self, owner: str) -> list[Record]:
        with self.tx() as db:
            names = [r[0] for r in db.execute("SELECT name FROM functions WHERE owner = ? ORDER BY name", (owner,))]
        return [r for r in (self.get(owner, n) for n in names) if r is not None]

    def keys(self) -> list[tuple[str, str]]:
        with self.tx() as db:
            return [(o, n) for o, n in db.execute("SELECT owner, name FROM functions ORDER BY owner, name")]


def _record(row, versions) -> Record:
    owner, name, options, manifest, version, published = row
    return Record(owner, name, json.loads(options), json.loads(manifest), version, published,
                  tuple({"version": v, "semver": s, "published": p} for v, s, p in versions))
