"""The allocation ledger: the one place scarce things (GPUs, for now) are handed out.

SQLite in the state directory, one transaction per assignment, so concurrent spawns and a hub restart can
never give one device to two servers, and a failed spawn releases by owner key.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Sequence

from esker.state.db import Store


class NoCapacity(RuntimeError):
    """Nothing free: the message says what is in use and by whom."""


class Ledger:
    def __init__(self, path: str | Path):
        self._store = Store(path, [
            "CREATE TABLE IF NOT EXISTS assignments ("
            " kind TEXT NOT NULL, item TEXT NOT NULL, owner TEXT NOT NULL, since REAL NOT NULL,"
            " PRIMARY KEY (kind, item))",
        ])
        self.path = self._store.path
        self._tx = self._store.tx

    def assign(self, kind: str, owner: str, count: int, pool: Sequence[str]) -> tuple[str, ...]:
        """Give ``owner`` ``count`` items of ``pool``; an owner that already holds items keeps them."""
        if count <= 0:
            return ()
        with self._tx() as db:
            rows = db.execute("SELECT item, owner FROM assignments WHERE kind=?", (kind,)).fetchall()
            mine = tuple(item for item, o in rows if o == owner)
            if len(mine) == count:
                return mine
            if mine:  # a different count than before: start over
                db.execute("DELETE FROM assignments WHERE kind=? AND owner=?", (kind, owner))
                rows = [(i, o) for i, o in rows if o != owner]
            taken = {item for item, _ in rows}
            free = [item for item in pool if item not in taken]
            if len(free) < count:
                holders = sorted({o.split("/")[0] for i, o in rows if i in pool})
                raise NoCapacity(
                    f"{count} {kind}(s) requested but {len(free)} of {len(pool)} free"
                    + (f" (in use by {', '.join(holders)})" if holders else "")
                    + ("; this machine has none" if not pool else "")
                )
            chosen = tuple(free[:count])
            now = time.time()
            db.executemany(
                "INSERT INTO assignments (kind, item, owner, since) VALUES (?, ?, ?, ?)",
                [(kind, item, owner, now) for item in chosen],
            )
            return chosen

    def claim(self, kind: str, owner: str, items: Iterable[str]) -> list[str]:
        """Re-register items an owner held before a restart. Returns items someone else holds (conflicts)."""
        conflicts = []
        with self._tx() as db:
            for item in items:
                row = db.execute("SELECT owner FROM assignments WHERE kind=? AND item=?", (kind, item)).fetchone()
                if row is None:
                    db.execute("INSERT INTO assignments VALUES (?, ?, ?, ?)", (kind, item, owner, time.time()))
                elif row[0] != owner:
                    conflicts.append(item)
        return conflicts

    def release(self, kind: str, owner: str) -> list[str]:
        with self._tx() as db:
            items = [r[0] for r in db.execute(
                "SELECT item FROM assignments WHERE kind=? AND owner=?", (kind, owner))]
            db.execute("DELETE FROM assignments WHERE kind=? AND owner=?", (kind, owner))
        return items

    def held(self, kind: str, owner: str | None = None) -> dict[str, str]:
        """item -> owner (all owners, or one)."""
        with self._tx() as db:
            rows = db.execute("SELECT item, owner FROM assignments WHERE kind=? ORDER BY item", (kind,)).fetchall()
        return {item: o for item, o in rows if owner is None or o == owner}

    def forget_owners_except(self, kind: str, live: Iterable[str]) -> list[str]:
        """Drop assignments of owners that no longer exist (servers gone while the hub was down)."""
        live = set(live)
        with self._tx() as db:
            rows = db.execute("SELECT item, owner FROM assignments WHERE kind=?", (kind,)).fetchall()
            stale = [(i, o) for i, o in rows if o not in live]
            db.executemany("DELETE FROM assignments WHERE kind=? AND item=?", [(kind, i) for i, _ in stale])
        return [i for i, _ in stale]
