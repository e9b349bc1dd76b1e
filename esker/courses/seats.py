"""The seat check at spawn time: capacity promised to a course's participants during its window, and its
pre-start lead before it (``reservations.held``), is kept for them. Pure given its inputs; the spawner base
gathers them (reservations, courses, who is running).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping, Sequence

from esker.core.catalog import UserInfo
from esker.courses.model import Course
from esker.courses.reservations import Reservation, Resources, held, hhmm, profile_resources


class SeatRefused(RuntimeError):
    """No room outside the seats promised now; ``status`` is the HTTP status to answer with."""

    status = 503


LEAD_MAX = 86400  # the schema's maximum of a course's prestart_lead (a test says so)


def may_hold(reservations: Iterable[Reservation], now: datetime) -> bool:
    """Whether any reservation might hold capacity at ``now`` whatever its course's lead: the cheap test
    before the courses are read."""
    return any(r.start - timedelta(seconds=LEAD_MAX) <= now < r.end for r in reservations)


def active_promises(reservations: Iterable[Reservation], now: datetime,
                    courses: Mapping[str, Course] | None = None) -> list[Reservation]:
    """The reservations holding capacity at ``now``: in their window, or in their course's pre-start lead."""
    return [r for r in reservations if held(r, courses).active(now)]


def check_seat(user, selection, *, catalog, courses: Iterable[Course], reservations: Sequence[Reservation],
               capacity: Resources, running_by_profile: Mapping[str, Iterable[str] | int] | None = None,
               now: datetime | None = None) -> None:
    """Refuse a spawn (:class:`SeatRefused`) when it would eat capacity promised to a course right now.

    ``running_by_profile``: profile slug -> the running servers' users (UserInfo, or anything with ``groups``;
    a plain count or names count as non-participants). Participants of an active reservation always get one of its seats (up to
    ``seats``); everybody else fits in what is not promised. Admins are not exempt: an admin's server also
    takes seats from a workshop.
    """
    now = now or datetime.now(timezone.utc)
    courses = {c.name: c for c in courses}
    active = active_promises(reservations, now, courses)
    if not active:
        return
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
        raise SeatRefused(f"{who} until {hhmm(r.end)} ({'; '.join(short)}). "
                        "Try a smaller profile or come back after the session.")




def running_from_db(db, catalog, exclude: str = "") -> dict[str, list]:
    """profile slug -> UserInfo of every user with a server (running or starting), from JupyterHub's database;
    the spawner's input for ``check_seat``. ``exclude``: the user now spawning."""
    from jupyterhub import (
        orm,  # the hub's own models: only a running hub has a database to read
    )

    out: dict[str, list] = {}
    default = catalog.profiles[0].slug if catalog.profiles else ""
    for sp in db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)).all():
        u = sp.user
        if u is None or u.name == exclude:
            continue
        slug = (sp.user_options or {}).get("profile") or next((p.slug for p in catalog.profiles if p.default), default)
        out.setdefault(slug, []).append(UserInfo(u.name, frozenset(g.name for g in u.groups), bool(u.admin)))
    return out
