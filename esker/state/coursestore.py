"""The course store: reservations, courses created or changed at run time (the esker-courses service's),
the last pre-warm pass per reservation, the participants' servers the service pre-started (per reservation and
user, with the last pass's summary and running totals for the metrics) and the instructors' shares the service
granted, in ``courses.sqlite`` in the state directory.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Iterable, Mapping

from esker.courses.model import Course, courses_from_config, parse_when
from esker.courses.prestart import Entry
from esker.courses.reservations import Decision, Reservation
from esker.state.db import Store


class CourseStore:
    """SQLite in the state dir: reservations, and courses created or changed at run time."""

    def __init__(self, path: str | Path):
        self._store = Store(path, [
            "CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, course TEXT NOT NULL,"
            " grp TEXT NOT NULL, profile TEXT NOT NULL, seats INTEGER NOT NULL, start TEXT NOT NULL,"
            " end_ TEXT NOT NULL, created_by TEXT NOT NULL, created REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS courses (name TEXT PRIMARY KEY, data TEXT NOT NULL, updated REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS prewarm (id TEXT PRIMARY KEY, data TEXT NOT NULL, updated REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS access (owner TEXT NOT NULL, recipient TEXT NOT NULL, updated REAL NOT NULL,"
            " PRIMARY KEY (owner, recipient))",
            "CREATE TABLE IF NOT EXISTS prestart (id TEXT NOT NULL, user TEXT NOT NULL, data TEXT NOT NULL,"
            " updated REAL NOT NULL, PRIMARY KEY (id, user))",
            "CREATE TABLE IF NOT EXISTS prestart_runs (id TEXT PRIMARY KEY, data TEXT NOT NULL, updated REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS prestart_totals (outcome TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        ])
        self.path = self._store.path
        self._tx = self._store.tx

    @classmethod
    def for_state_dir(cls, state_dir: str) -> "CourseStore":
        return cls(os.path.join(state_dir, "courses.sqlite"))

    # reservations
    def reservations(self) -> list[Reservation]:
        with self._tx() as db:
            rows = db.execute("SELECT id, course, grp, profile, seats, start, end_, created_by FROM reservations"
                              " ORDER BY start, course").fetchall()
        return [Reservation(course=c, group=g, profile=p, seats=s, start=parse_when(a), end=parse_when(b), id=i,
                            created_by=by) for i, c, g, p, s, a, b, by in rows]

    def reserve(self, new: Reservation, decide) -> tuple[Decision, Reservation]:
        """Admission and insert in one write transaction: two requests cannot both take the last room."""
        with self._tx() as db:
            rows = db.execute("SELECT id, course, grp, profile, seats, start, end_, created_by FROM reservations"
                              ).fetchall()
            existing = [Reservation(course=c, group=g, profile=p, seats=s, start=parse_when(a), end=parse_when(b),
                                    id=i, created_by=by) for i, c, g, p, s, a, b, by in rows]
            decision = decide(new, existing)
            if not decision.accepted:
                return decision, new
            new = replace(new, id=new.id or uuid.uuid4().hex[:10])
            db.execute("INSERT INTO reservations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (new.id, new.course, new.group, new.profile, new.seats, new.start.isoformat(),
                        new.end.isoformat(), new.created_by, time.time()))
            return decision, new

    def delete_reservation(self, rid: str) -> bool:
        """The reservation and its pre-warm record go; its pre-start records stay until the service's next pass
        has stopped the servers it started for it (esker.courses.jobs.prestart_once: orphans)."""
        with self._tx() as db:
            db.execute("DELETE FROM prewarm WHERE id=?", (rid,))
            db.execute("DELETE FROM prestart_runs WHERE id=?", (rid,))
            return db.execute("DELETE FROM reservations WHERE id=?", (rid,)).rowcount > 0

    def expire(self, now: datetime) -> list[str]:
        """Drop reservations whose window has ended (their seats are free again)."""
        gone = [r.id for r in self.reservations() if r.end <= now]
        with self._tx() as db:
            db.executemany("DELETE FROM reservations WHERE id=?", [(i,) for i in gone])
            db.executemany("DELETE FROM prewarm WHERE id=?", [(i,) for i in gone])
            db.executemany("DELETE FROM prestart WHERE id=?", [(i,) for i in gone])
            db.executemany("DELETE FROM prestart_runs WHERE id=?", [(i,) for i in gone])
        return gone

    # pre-warming: what the last passes found, per reservation (prewarm_record)
    def prewarm_records(self) -> dict[str, dict]:
        with self._tx() as db:
            return {i: json.loads(d) for i, d in db.execute("SELECT id, data FROM prewarm")}

    def put_prewarm(self, rid: str, record: dict) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO prewarm VALUES (?, ?, ?)", (rid, json.dumps(record), time.time()))

    # pre-start: per reservation, per participant, what the service started (esker.courses.prestart.Entry)
    def prestart_entries(self) -> dict[str, dict[str, Entry]]:
        out: dict[str, dict[str, Entry]] = {}
        with self._tx() as db:
            for rid, user, data in db.execute("SELECT id, user, data FROM prestart ORDER BY id, user"):
                out.setdefault(rid, {})[user] = Entry.from_dict(json.loads(data))
        return out

    def put_prestart(self, rid: str, entries: Mapping[str, Entry], summary: dict | None = None,
                     outcomes: Mapping[str, int] | None = None) -> None:
        """One pass's result for a reservation, in one transaction: its records (replacing the old ones), the
        summary the API shows, and the outcomes added to the running totals."""
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM prestart WHERE id=?", (rid,))
            db.executemany("INSERT INTO prestart VALUES (?, ?, ?, ?)",
                           [(rid, u, json.dumps(e.to_dict()), now) for u, e in sorted(entries.items())])
            if summary is not None:
                db.execute("INSERT OR REPLACE INTO prestart_runs VALUES (?, ?, ?)", (rid, json.dumps(summary), now))
            for outcome, n in (outcomes or {}).items():
                if n:
                    db.execute("INSERT INTO prestart_totals VALUES (?, ?) ON CONFLICT(outcome) DO UPDATE SET"
                               " n = n + excluded.n", (outcome, int(n)))

    def prestart_summaries(self) -> dict[str, dict]:
        with self._tx() as db:
            return {i: json.loads(d) for i, d in db.execute("SELECT id, data FROM prestart_runs")}

    def prestart_totals(self) -> dict[str, int]:
        with self._tx() as db:
            return {o: n for o, n in db.execute("SELECT outcome, n FROM prestart_totals")}

    # instructors' access: (participant, instructor) pairs whose share of the participant's server the service
    # granted (esker.courses.hubsync.reconcile_access), so it revokes only its own
    def access_grants(self) -> set[tuple[str, str]]:
        with self._tx() as db:
            return {(o, r) for o, r in db.execute("SELECT owner, recipient FROM access")}

    def record_access(self, granted: Iterable[tuple[str, str]], revoked: Iterable[tuple[str, str]]) -> None:
        with self._tx() as db:
            now = time.time()
            db.executemany("INSERT OR REPLACE INTO access VALUES (?, ?, ?)", [(o, r, now) for o, r in granted])
            db.executemany("DELETE FROM access WHERE owner=? AND recipient=?", list(revoked))

    # runtime courses
    def course_overlays(self) -> dict[str, dict]:
        with self._tx() as db:
            return {n: json.loads(d) for n, d in db.execute("SELECT name, data FROM courses")}

    def put_course(self, name: str, data: dict) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO courses VALUES (?, ?, ?)", (name, json.dumps(data), time.time()))

    def effective_courses(self, base: Iterable[Course]) -> list[Course]:
        """esker.yaml's courses, each updated by its runtime overlay, then courses created at run time."""
        overlays = self.course_overlays() if os.path.exists(self.path) else {}
        out = []
        names = set()
        for c in base:
            names.add(c.name)
            ov = overlays.get(c.name)
            out.append(Course.from_dict({**c.to_dict(secrets=True), **ov}, "config") if ov else c)
        for name, data in sorted(overlays.items()):
            if name not in names:
                out.append(Course.from_dict({**data, "name": name}, "runtime"))
        return out


def effective_courses(cfg, state_dir: str) -> list[Course]:
    """esker.yaml's courses with the runtime ones (and runtime updates) from the store, if there is one."""
    base = courses_from_config(cfg)
    path = os.path.join(state_dir, "courses.sqlite")
    return CourseStore(path).effective_courses(base) if os.path.exists(path) else base
