"""Reservations: a course's promise of ``seats`` servers of one profile to its group between ``start`` and
``end``. ``admit`` (pure) accepts one only if the hub's capacity (CPU, memory, GPUs, scratch) holds ``seats``
times the profile's limits on top of everything already promised at every moment of the window.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping, Sequence

from esker.courses.model import Course, parse_when
from esker.units import parse_size

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


def held(r: Reservation, courses: Mapping[str, Course] | None) -> Reservation:
    """``r`` over the time it holds capacity: from its course's pre-start (``prestart_lead`` s before the
    window, when the participants' servers are started) to its end."""
    course = (courses or {}).get(r.course)
    lead = getattr(course, "prestart_lead", 0) or 0
    return replace(r, start=r.start - timedelta(seconds=lead)) if lead > 0 else r


def admit(new: Reservation, existing: Sequence[Reservation], capacity: Resources, catalog,
          courses: Mapping[str, Course] | None = None, groups: Iterable[str] | None = None,
          now: datetime | None = None) -> Decision:
    """Accept ``new`` only if it is well formed, names known things, and fits beside every overlapping
    promise at every moment it holds capacity: its window and, before it, its course's pre-start lead (the
    same for the others: their pre-started servers take capacity before their windows open)."""
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
    mine, theirs = held(new, courses), [r for r in existing if r.id != new.id]
    others = [held(r, courses) for r in theirs]
    leads = " and their pre-starts" if mine != new or others != theirs else ""
    for a, b, promised in peak_promised(others, mine.start, mine.end, catalog):
        short = (capacity - promised).short_of(need)
        if short:
            return Decision(False, f"{new.seats} seats of {new.profile} do not fit {_span(a, b)}: "
                            + "; ".join(short) + f" (other reservations{leads} hold the rest)", 409, tuple(short))
    return Decision(True, "fits", 201)
