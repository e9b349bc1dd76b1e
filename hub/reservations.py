"""Seats for courses: reservations, admission control, the spawn-time seat check and pre-warming.

A reservation promises ``seats`` servers of one profile to one course's group between ``start`` and ``end``.
``admit`` (pure) accepts it only if the hub's capacity (CPU, memory, GPUs, scratch) holds ``seats`` times the
profile's limits on top of everything already promised at every moment of the window. ``check_seat`` (pure
given its inputs) applies the promises at spawn time. ``CourseStore`` keeps reservations and runtime courses in
SQLite in the state directory, so a hub restart keeps them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .courses import Course, parse_when

RESOURCES = ("cpu", "memory", "gpus", "scratch")


# ----------------------------------------------------------------------------------------- capacity
@dataclass(frozen=True)
class Resources:
    cpu: float = 0.0
    memory: int = 0
    gpus: int = 0
    scratch: int = 0

    def __add__(self, o: "Resources") -> "Resources":
        return Resources(self.cpu + o.cpu, self.memory + o.memory, self.gpus + o.gpus, self.scratch + o.scratch)

    def __sub__(self, o: "Resources") -> "Resources":
        return Resources(self.cpu - o.cpu, self.memory - o.memory, self.gpus - o.gpus, self.scratch - o.scratch)

    def times(self, n: int) -> "Resources":
        return Resources(self.cpu * n, self.memory * n, self.gpus * n, self.scratch * n)

    def short_of(self, need: "Resources") -> list[str]:
        """What ``need`` lacks in ``self`` (free), as words: ['needs 60 CPU, 16 free']."""
        out = []
        for k in RESOURCES:
            have, want = getattr(self, k), getattr(need, k)
            if want > have + 1e-9:
                free = fmt(k, max(have, 0)).split(" ")[0]
                out.append(f"needs {fmt(k, want)}, {free} free")
        return out


def fmt(kind: str, v: float) -> str:
    if kind == "cpu":
        return f"{v:g} CPU"
    if kind == "gpus":
        return f"{int(v)} GPU{'s' if v != 1 else ''}"
    return f"{v / 1024**3:.0f}G {'memory' if kind == 'memory' else 'scratch'}"


def profile_resources(profile) -> Resources:
    return Resources(float(profile.cpu_limit), int(profile.mem_limit), int(profile.gpus), int(profile.scratch_size))


def machine_capacity(cfg, state_dir: str, gpus: int | None = None) -> Resources:
    """capacity: from esker.yaml, each unset field from this machine."""
    from .config import parse_size

    cap = (getattr(cfg, "data", cfg).get("capacity") or {})
    cpu = cap.get("cpu") or float(os.cpu_count() or 1)
    if cap.get("memory"):
        mem = parse_size(cap["memory"])
    else:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if cap.get("gpus") is not None:
        ngpu = cap["gpus"]
    else:
        ngpu = gpus if gpus is not None else 0
    if cap.get("scratch"):
        scratch = parse_size(cap["scratch"])
    else:
        root = getattr(cfg, "data", cfg)["scratch"]["root"].replace("{state_dir}", state_dir)
        probe = root
        while not os.path.exists(probe) and probe not in ("/", ""):
            probe = os.path.dirname(probe)
        scratch = shutil.disk_usage(probe or "/").total
    return Resources(float(cpu), int(mem), int(ngpu), int(scratch))


# ------------------------------------------------------------------------------------- reservations
@dataclass(frozen=True)
class Reservation:
    course: str
    profile: str
    seats: int
    start: datetime
    end: datetime
    group: str = ""
    id: str = ""
    created_by: str = ""

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and start < self.end

    def active(self, now: datetime) -> bool:
        return self.start <= now < self.end

    def to_dict(self) -> dict:
        return {"id": self.id, "course": self.course, "group": self.group, "profile": self.profile,
                "seats": self.seats, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "created_by": self.created_by}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Reservation":
        return cls(course=d["course"], profile=d["profile"], seats=int(d["seats"]), start=parse_when(d["start"]),
                   end=parse_when(d["end"]), group=d.get("group", ""), id=d.get("id", ""),
                   created_by=d.get("created_by", ""))


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str = ""
    status: int = 200  # the HTTP status a refusal maps to (400 malformed, 404 unknown, 409 does not fit)
    short: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.accepted


def hhmm(dt: datetime) -> str:
    return dt.astimezone().strftime("%H:%M")


def _span(a: datetime, b: datetime) -> str:
    same_day = a.astimezone().date() == b.astimezone().date()
    return f"{hhmm(a)}-{hhmm(b)}" if same_day else f"{a.astimezone():%a %d %b %H:%M}-{b.astimezone():%a %d %b %H:%M}"


def peak_promised(existing: Iterable[Reservation], start: datetime, end: datetime, catalog
                  ) -> list[tuple[datetime, datetime, Resources]]:
    """Promised resources over [start, end), as segments where the sum is constant (a sweep)."""
    rel = [r for r in existing if r.overlaps(start, end)]
    cuts = sorted({start, end, *(t for r in rel for t in (r.start, r.end) if start < t < end)})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        total = Resources()
        for r in rel:
            if r.overlaps(a, b):
                p = catalog.get(r.profile)
                if p is not None:
                    total = total + profile_resources(p).times(r.seats)
        out.append((a, b, total))
    return out


def admit(new: Reservation, existing: Sequence[Reservation], capacity: Resources, catalog,
          courses: Mapping[str, Course] | None = None, groups: Iterable[str] | None = None,
          now: datetime | None = None) -> Decision:
    """Accept ``new`` only if it is well formed, names known things, and fits beside every overlapping
    promise at every moment of its window."""
    now = now or datetime.now(timezone.utc)
    if new.seats < 1:
        return Decision(False, "seats must be at least 1", 400)
    if new.end <= new.start:
        return Decision(False, f"the window ends ({new.end.isoformat()}) before it starts", 400)
    if new.end <= now:
        return Decision(False, f"the window {_span(new.start, new.end)} is in the past", 400)
    profile = catalog.get(new.profile)
    if profile is None:
        return Decision(False, f"unknown profile {new.profile!r} (profiles: "
                        f"{', '.join(p.slug for p in catalog.profiles)})", 404)
    if courses is not None:
        course = courses.get(new.course)
        if course is None:
            return Decision(False, f"unknown course {new.course!r}", 404)
        if course.profiles and new.profile not in course.profiles:
            return Decision(False, f"course {new.course} does not use profile {new.profile!r} "
                            f"(its profiles: {', '.join(course.profiles)})", 400)
        if new.group and new.group != course.group:
            return Decision(False, f"course {new.course} is for group {course.group}, not {new.group}", 400)
    if groups is not None and new.group and new.group not in set(groups):
        return Decision(False, f"unknown group {new.group!r}", 404)
    for r in existing:
        if r.course == new.course and r.overlaps(new.start, new.end) and r.id != new.id:
            return Decision(False, f"course {new.course} already has seats reserved {_span(r.start, r.end)} "
                            f"(reservation {r.id}); change or delete it instead", 409)
    need = profile_resources(profile).times(new.seats)
    alone = capacity.short_of(need)
    if alone:
        return Decision(False, f"{new.seats} seats of {new.profile} can never fit on this hub: "
                        + "; ".join(alone), 409, tuple(alone))
    for a, b, promised in peak_promised([r for r in existing if r.id != new.id], new.start, new.end, catalog):
        short = (capacity - promised).short_of(need)
        if short:
            return Decision(False, f"{new.seats} seats of {new.profile} do not fit {_span(a, b)}: "
                            + "; ".join(short) + " (other reservations hold the rest)", 409, tuple(short))
    return Decision(True, "fits", 201)


# ------------------------------------------------------------------------------------- spawn policy
def active_promises(reservations: Iterable[Reservation], now: datetime) -> list[Reservation]:
    return [r for r in reservations if r.active(now)]


def check_seat(runtime, user, selection, now: datetime | None = None,
               running_by_profile: Mapping[str, Iterable[str] | int] | None = None,
               reservations: Sequence[Reservation] | None = None, capacity: Resources | None = None) -> None:
    """Refuse a spawn (tornado HTTPError 503) when it would eat capacity promised to a course right now.

    ``running_by_profile``: profile slug -> the running servers' users (UserInfo, or anything with ``groups``;
    a plain count or names count as non-participants). Participants of an active reservation always get one of its seats (up to
    ``seats``); everybody else fits in what is not promised. Admins are not exempt: an admin's server also
    takes seats from a workshop.
    """
    from tornado.web import HTTPError

    now = now or datetime.now(timezone.utc)
    if reservations is None:
        reservations = CourseStore.for_state_dir(runtime.state_dir).reservations()
    active = active_promises(reservations, now)
    if not active:
        return
    from .courses import all_courses

    courses = {c.name: c for c in all_courses(runtime)}
    catalog = runtime.catalog
    capacity = capacity or machine_capacity(runtime.config, runtime.state_dir, len(runtime.gpus))
    running = {slug: (list(v) if not isinstance(v, int) else [None] * v)
               for slug, v in (running_by_profile or {}).items()}

    def group_of(r: Reservation) -> str:
        c = courses.get(r.course)
        return r.group or (c.group if c else "")

    # Where each running server counts: inside a reservation's seats (its participants, up to seats) or free.
    seats_used: dict[str, int] = {r.id or r.course: 0 for r in active}
    outside = Resources()
    for slug, users in running.items():
        p = catalog.get(slug)
        if p is None:
            continue
        for u in users:
            groups = set(getattr(u, "groups", ()) or ())
            home = next((r for r in active if r.profile == slug and group_of(r) in groups
                         and seats_used[r.id or r.course] < r.seats), None)
            if home is not None:
                seats_used[home.id or home.course] += 1
            else:
                outside = outside + profile_resources(p)
    mine = next((r for r in active if r.profile == selection.profile.slug and group_of(r) in user.groups), None)
    if mine is not None and seats_used[mine.id or mine.course] < mine.seats:
        return  # a participant: a seat is waiting
    promised = Resources()
    for r in active:
        p = catalog.get(r.profile)
        if p is not None:
            promised = promised + profile_resources(p).times(r.seats)
    need = Resources(selection.cpu_limit, selection.mem_limit, selection.gpus, selection.scratch_size)
    short = (capacity - promised - outside).short_of(need)
    if short:
        r = max(active, key=lambda r: r.seats)
        name = courses[r.course].display_name if r.course in courses else r.course
        who = "the course's seats are all taken" if mine is not None else f"capacity reserved for {name}"
        raise HTTPError(503, f"{who} until {hhmm(r.end)} ({'; '.join(short)}). "
                        "Try a smaller profile or come back after the session.")


# ---------------------------------------------------------------------------------------- pre-warming
PLACEHOLDER_COMPONENT = "seat-placeholder"
PLACEHOLDER_SELECTOR = f"app.kubernetes.io/component={PLACEHOLDER_COMPONENT}"
PRIORITY_CLASS = "esker-user-placeholder"  # helm/esker/templates/priorityclass.yaml


@dataclass(frozen=True)
class Due:
    """A reservation inside the pre-warm lookahead (or running), and what its profile needs ready."""
    reservation: Reservation
    environment: str
    spark: bool  # the profile uses the hub's Spark cluster: check the master is up


@dataclass(frozen=True)
class Prewarm:
    environments: tuple[str, ...]  # embedded: build these environments now
    placeholders: tuple[dict, ...]  # kubernetes: pods that hold room for the seats
    due: tuple[Due, ...] = ()  # the reservations this plan is for

    @property
    def spark(self) -> bool:
        return any(d.spark for d in self.due)


def placeholder_pod(r: Reservation, profile, index: int, namespace: str = "esker",
                    gpu_resource: str = "nvidia.com/gpu", priority_class: str = PRIORITY_CLASS) -> dict:
    """A pause pod shaped like one seat: same requests and limits as the profile, lowest priority, so real
    participants' pods preempt it (z2jh's user-placeholder pattern) and the cluster autoscaler sees the need."""
    res = {"cpu": f"{profile.cpu_limit:g}", "memory": str(profile.mem_limit),
           "ephemeral-storage": str(profile.scratch_size)}
    if profile.gpus:
        res[gpu_resource] = str(profile.gpus)
    name = f"esker-seat-{r.course}-{index}"[:63].rstrip("-")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "esker", "app.kubernetes.io/component": PLACEHOLDER_COMPONENT,
                       "esker.dev/course": r.course, "esker.dev/profile": r.profile},
            "annotations": {"esker.dev/reservation": r.id, "esker.dev/until": r.end.isoformat()},
        },
        "spec": {
            "priorityClassName": priority_class,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "pause",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": dict(res), "limits": dict(res)},
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65535,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


def prewarm_plan(now: datetime, reservations: Iterable[Reservation], lookahead: timedelta, catalog,
                 namespace: str = "esker", gpu_resource: str = "nvidia.com/gpu",
                 priority_class: str = PRIORITY_CLASS) -> Prewarm:
    """What to get ready for reservations starting within ``lookahead`` (or running): environments to build
    (embedded), and placeholder pods, ``seats`` per reservation (Kubernetes)."""
    envs: dict[str, None] = {}
    pods = []
    due = []
    for r in sorted(reservations, key=lambda r: (r.start, r.course)):
        if not (r.start - lookahead <= now < r.end):
            continue
        p = catalog.get(r.profile)
        if p is None:
            continue
        envs[p.environment] = None
        due.append(Due(r, p.environment, bool(getattr(p, "spark", False))))
        pods += [placeholder_pod(r, p, i, namespace, gpu_resource, priority_class) for i in range(r.seats)]
    return Prewarm(tuple(envs), tuple(pods), tuple(due))


def environments_to_build(plan: Prewarm, ready: Iterable[str]) -> tuple[str, ...]:
    """The plan's environments that are not built yet (``ready``: the names whose environment exists)."""
    done = set(ready)
    return tuple(e for e in plan.environments if e not in done)


def prewarm_record(due: Due, env_status: Mapping[str, str], spark_status: str | None, now: datetime,
                   before: Mapping | None = None) -> dict:
    """What the reservations API shows for one reservation after a pre-warm pass. ``prewarmed_at`` is set the
    first time everything it needs is ready (its environment built; the Spark master up if its profile uses
    Spark) and then kept; a pass that finds something missing says so in ``status`` without erasing it."""
    env = env_status.get(due.environment, "not checked")
    problems = [f"environment {due.environment}: {env}"] if env != "ready" else []
    if due.spark and spark_status is not None and not spark_status.startswith("up"):
        problems.append(f"spark master: {spark_status}")
    before = before or {}
    ok = not problems
    return {
        "prewarmed_at": before.get("prewarmed_at") or (now.isoformat() if ok else None),
        "environment": due.environment,
        "environment_status": env,
        "spark": spark_status if due.spark else None,
        "status": "ready" if ok else "; ".join(problems),
        "checked_at": now.isoformat(),
    }


def placeholder_changes(wanted: Iterable[Mapping], existing: Iterable[str], made: Iterable[str] = ()
                        ) -> tuple[list[Mapping], list[str]]:
    """(pods to create, pod names to delete) to bring the cluster's placeholders to the plan.

    A placeholder is created once: one that is gone though still planned (a participant's pod preempted it, so
    the seat is now a real server) is not created again, or the cluster would hold each seat twice. ``made``:
    names this service created before. Placeholders no longer planned (window over, reservation deleted) go."""
    have, done = set(existing), set(made)
    want = {p["metadata"]["name"]: p for p in wanted}
    create = [p for n, p in want.items() if n not in have and n not in done]
    delete = sorted(n for n in have if n not in want)
    return create, delete


# ------------------------------------------------------------------------------------------ the store
class CourseStore:
    """SQLite in the state dir: reservations, and courses created or changed at run time."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, course TEXT NOT NULL,"
                       " grp TEXT NOT NULL, profile TEXT NOT NULL, seats INTEGER NOT NULL, start TEXT NOT NULL,"
                       " end_ TEXT NOT NULL, created_by TEXT NOT NULL, created REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS courses (name TEXT PRIMARY KEY, data TEXT NOT NULL,"
                       " updated REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS prewarm (id TEXT PRIMARY KEY, data TEXT NOT NULL,"
                       " updated REAL NOT NULL)")

    @classmethod
    def for_state_dir(cls, state_dir: str) -> "CourseStore":
        return cls(os.path.join(state_dir, "courses.sqlite"))

    @contextmanager
    def _tx(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

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
        with self._tx() as db:
            db.execute("DELETE FROM prewarm WHERE id=?", (rid,))
            return db.execute("DELETE FROM reservations WHERE id=?", (rid,)).rowcount > 0

    def expire(self, now: datetime) -> list[str]:
        """Drop reservations whose window has ended (their seats are free again)."""
        gone = [r.id for r in self.reservations() if r.end <= now]
        with self._tx() as db:
            db.executemany("DELETE FROM reservations WHERE id=?", [(i,) for i in gone])
            db.executemany("DELETE FROM prewarm WHERE id=?", [(i,) for i in gone])
        return gone

    # pre-warming: what the last passes found, per reservation (prewarm_record)
    def prewarm_records(self) -> dict[str, dict]:
        with self._tx() as db:
            return {i: json.loads(d) for i, d in db.execute("SELECT id, data FROM prewarm")}

    def put_prewarm(self, rid: str, record: dict) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO prewarm VALUES (?, ?, ?)", (rid, json.dumps(record), time.time()))

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


def running_from_db(db, catalog, exclude: str = "") -> dict[str, list]:
    """profile slug -> UserInfo of every user with a server (running or starting), from JupyterHub's database;
    the spawner's input for ``check_seat``. ``exclude``: the user now spawning."""
    from jupyterhub import orm

    from esker.spawner.catalog import UserInfo

    out: dict[str, list] = {}
    default = catalog.profiles[0].slug if catalog.profiles else ""
    for sp in db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)).all():
        u = sp.user
        if u is None or u.name == exclude:
            continue
        slug = (sp.user_options or {}).get("profile") or next((p.slug for p in catalog.profiles if p.default), default)
        out.setdefault(slug, []).append(UserInfo(u.name, frozenset(g.name for g in u.groups), bool(u.admin)))
    return out
