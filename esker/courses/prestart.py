"""Pre-starting the booked participants' servers before a reservation's window opens, so a participant who logs
in at nine finds JupyterLab running. Pure: the hub's server state and the service's own records in, what to do
(start, stop, report activity) and the new records out; ``esker.courses.jobs.prestart_once`` talks to the hub.

A reservation's pre-start has three periods (``Window``), from its course's ``prestart_lead`` and
``prestart_grace``:

- **lead** ``[start - lead, start)``: every seated participant without a server gets one (``POST
  /users/<name>/server`` with ``{"profile": <reserved profile>}``, through Esker's spawner); at most ``seats``
  participants are seated, those with a server already (started by themselves or by this service) first, so the
  rest are left out and said to be; a start that fails is retried after a bounded backoff; a participant removed
  from the course has the server this service started for them stopped; a pre-started server that disappears
  (a hub restart, a stop from the admin page) is started again.
- **grace** ``[start, start + grace)``: nothing new is started (participants arriving now start their own at login,
  as usual); pre-started servers are kept from the idle cullers, and a removed participant's is still stopped.
- after that the servers are the participants' own, culled like any other.

The hub's REST API is the truth about servers: each pass reconciles the records (persisted in the course store,
so a restart of the hub or the service neither loses nor doubles servers) against it. A server is this service's
only while the hub's ``started`` time of the user's server is the one recorded when it became ready: a server the
participant stopped and started again is theirs, never stopped by this service.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Iterable, Mapping

from esker.courses.model import parse_when
from esker.courses.reservations import Reservation

# An entry's status: what this service knows of the participant's server.
STARTING = "starting"  # asked for (the hub answered 201/202); not ready yet
RUNNING = "running"  # ready, and the server this service started (protected until ``until``)
FAILED = "failed"  # the last start failed (``message``: the hub's words); retried at ``next_try``
GONE = "gone"  # was running and is not any more (a hub restart, an admin's stop): started again in the lead
STOPPED = "stopped"  # stopped by this service: the participant left the course, or the reservation went
OWN = "own"  # the participant's own server now (they restarted it): left alone
STATUSES = (STARTING, RUNNING, FAILED, GONE, STOPPED, OWN)
OURS = (STARTING, RUNNING)  # entries whose server this service holds

# The hub's last_activity of a protected server is moved forward when older than this (the hub-wide culler
# decides on it; a pass reports for each protected server at most this often).
ACTIVITY_EVERY = timedelta(seconds=60)


@dataclass(frozen=True)
class Window:
    """When a reservation's pre-start runs: ``opens`` = start - lead, ``start``, ``until`` = start + grace."""
    opens: datetime
    start: datetime
    until: datetime
    end: datetime

    @classmethod
    def of(cls, r: Reservation, lead: int | float, grace: int | float) -> "Window":
        return cls(r.start - timedelta(seconds=lead), r.start, r.start + timedelta(seconds=grace), r.end)

    def phase(self, now: datetime) -> str:
        """``waiting`` (before the lead), ``lead``, ``grace``, ``after`` (the servers are the participants')."""
        if now < self.opens:
            return "waiting"
        if now < self.start:
            return "lead"
        if now < min(self.until, self.end):
            return "grace"
        return "after"


@dataclass(frozen=True)
class Server:
    """A user's default server as the hub's REST API shows it (``GET /users/<name>``)."""
    state: str = "none"  # none | pending | ready | stopping
    started: str | None = None
    last_activity: datetime | None = None

    @classmethod
    def from_user(cls, model: Mapping | None) -> "Server":
        s = ((model or {}).get("servers") or {}).get("")
        if not s:
            return cls()
        pending = s.get("pending")
        state = "stopping" if pending == "stop" else "pending" if pending else "ready" if s.get("ready") else "pending"
        la = s.get("last_activity")
        return cls(state, s.get("started"), parse_when(la) if la else None)

    @property
    def active(self) -> bool:
        return self.state != "none"


@dataclass(frozen=True)
class Entry:
    """The service's record of one participant's pre-start for one reservation (persisted)."""
    user: str
    status: str
    attempts: int = 0  # failed starts in a row
    message: str = ""
    started: str | None = None  # the hub's ``started`` of the server this service started (once ready)
    requested_at: str | None = None  # the last start asked for
    next_try: str | None = None  # a failed start is retried from then
    until: str | None = None  # kept from the cullers until then (the window's start + grace)
    opens: str | None = None  # the window's lead began then (an orphan's server is stopped only before start)
    start: str | None = None  # the window's start

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Entry":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def ours(self, server: Server) -> bool:
        """Whether ``server`` is the one this entry started (a pending one counts while the start is ours)."""
        if self.status == STARTING:
            return server.state in ("pending", "ready")
        return self.status == RUNNING and server.state == "ready" and server.started == self.started


def backoff(attempts: int, base: float = 60.0, cap: float = 600.0) -> timedelta:
    """How long after the ``attempts``-th failure in a row the next start is tried: doubling, at most ``cap``."""
    return timedelta(seconds=min(cap, base * 2 ** max(attempts - 1, 0)))


@dataclass(frozen=True)
class Plan:
    """One pass for one reservation."""
    reservation: str
    phase: str
    seats: int
    start: tuple[str, ...] = ()  # POST /users/<name>/server with the reserved profile
    stop: tuple[str, ...] = ()  # DELETE /users/<name>/server (this service's server; the participant left)
    keep_alive: tuple[str, ...] = ()  # POST /users/<name>/activity (protected, hub's last_activity stale)
    entries: Mapping[str, Entry] = field(default_factory=dict)  # the records reconciled with the hub
    over_seats: tuple[str, ...] = ()  # participants not pre-started: the seats are taken
    already: tuple[str, ...] = ()  # participants with a server of their own (they count toward the seats)
    waiting: tuple[str, ...] = ()  # failed starts whose next try is later


def reconcile(entry: Entry, server: Server, failure: str | None = None, now: datetime | None = None,
              base: float = 60.0, cap: float = 600.0) -> Entry | None:
    """An entry brought in step with the hub's view of the server (None: forget it). ``failure``: the hub's
    message for a start that vanished (the progress stream's ``Spawn failed: ...``)."""
    if entry.status == STARTING:
        if server.state == "ready":
            return replace(entry, status=RUNNING, started=server.started, attempts=0, message="", next_try=None)
        if server.state in ("pending", "stopping"):
            return entry
        attempts = entry.attempts + 1
        nxt = (now + backoff(attempts, base, cap)).isoformat() if now else None
        return replace(entry, status=FAILED, attempts=attempts, next_try=nxt,
                       message=failure or "the server stopped before it was ready")
    if entry.status == RUNNING:
        if entry.ours(server):
            return entry
        if server.state == "none":
            return replace(entry, status=GONE, message="stopped, not by this service")
        return replace(entry, status=OWN, message="the participant's own server now")
    if entry.status in (FAILED, GONE, STOPPED) and server.active:
        return replace(entry, status=OWN, message="the participant's own server now")
    if entry.status == OWN and not server.active:
        return None  # their server went: a participant like any other
    return entry


def seat_order(members: Iterable[str], named: Iterable[str], servers: Mapping[str, Server],
               entries: Mapping[str, Entry]) -> list[str]:
    """Who gets the seats first: members with a server (theirs or this service's), then those with a live record
    (a failed start keeps its seat), then the course's named participants in their order, then the others."""
    members = list(dict.fromkeys(members))
    rank = {u: i for i, u in enumerate(named)}

    def key(u):
        srv = servers.get(u, Server())
        e = entries.get(u)
        holds = 0 if srv.active else 1 if e is not None and e.status in (STARTING, RUNNING, FAILED, GONE) else 2
        return (holds, rank.get(u, len(rank)), u)

    return sorted(members, key=key)


def vanished(entries: Mapping[str, Entry], servers: Mapping[str, Server]) -> list[str]:
    """Users whose asked-for start is no longer pending or ready: the job asks the hub why (progress stream)."""
    return sorted(u for u, e in entries.items() if e.status == STARTING and not servers.get(u, Server()).active)


def plan_prestart(now: datetime, r: Reservation, window: Window, members: Iterable[str], named: Iterable[str],
                  servers: Mapping[str, Server], entries: Mapping[str, Entry],
                  failures: Mapping[str, str] | None = None, base: float = 60.0, cap: float = 600.0) -> Plan:
    """What one pass does for reservation ``r``: ``members`` are the course group's members as the hub has them
    now, ``named`` the course's named participants (they get seats first), ``servers`` the hub's view of each
    member's (and each recorded user's) server, ``entries`` this service's records."""
    phase = window.phase(now)
    rid = r.id or r.course
    failures = failures or {}
    members = list(dict.fromkeys(members))
    if phase in ("waiting", "after"):
        return Plan(rid, phase, r.seats, entries=dict(entries))
    current: dict[str, Entry] = {}
    for u, e in entries.items():
        e2 = reconcile(e, servers.get(u, Server()), failures.get(u), now, base, cap)
        if e2 is not None:
            current[u] = e2
    inside = set(members)
    stop = []
    for u, e in sorted(current.items()):
        if u in inside:
            continue
        if e.status == RUNNING and e.ours(servers.get(u, Server())):
            stop.append(u)  # the participant left the course: the server this service started goes
        elif e.status in (FAILED, GONE):
            current[u] = replace(e, status=STOPPED, message="no longer a participant", next_try=None)
    order = seat_order(members, named, servers, current)
    seated, over = order[:max(r.seats, 0)], order[max(r.seats, 0):]
    start, waiting, already, keep = [], [], [], []
    for u in seated:
        srv, e = servers.get(u, Server()), current.get(u)
        if srv.active:
            if e is None or e.status not in OURS:
                already.append(u)
            continue
        if phase != "lead" or (e is not None and e.status == STARTING):
            continue
        if e is not None and e.status == FAILED and e.next_try and parse_when(e.next_try) > now:
            waiting.append(u)
            continue
        start.append(u)
    for u, e in sorted(current.items()):
        srv = servers.get(u, Server())
        if e.status == RUNNING and e.ours(srv) and u not in stop and now < window.until:
            if srv.last_activity is None or now - srv.last_activity >= ACTIVITY_EVERY:
                keep.append(u)
    # Records carry the window (the culler's protection, an orphan's stop) as of this pass.
    stamp = {"until": window.until.isoformat(), "opens": window.opens.isoformat(), "start": window.start.isoformat()}
    current = {u: replace(e, **stamp) for u, e in current.items()}
    return Plan(rid, phase, r.seats, tuple(start), tuple(stop), tuple(keep), current, tuple(over),
                tuple(already), tuple(waiting))


def after_start(prev: Entry | None, user: str, window: Window, code: int, message: str, now: datetime,
                base: float = 60.0, cap: float = 600.0) -> Entry:
    """The record after asking the hub to start ``user``'s server: 201/202 accepted, anything else failed (with
    the hub's message, a backoff before the next try)."""
    stamp = {"until": window.until.isoformat(), "opens": window.opens.isoformat(), "start": window.start.isoformat()}
    attempts = prev.attempts if prev is not None else 0
    if code in (201, 202):
        return Entry(user, STARTING, attempts, "", None, now.isoformat(), None, **stamp)
    attempts += 1
    why = f"the hub answered {code}" + (f": {message}" if message else "")
    return Entry(user, FAILED, attempts, why, None, now.isoformat(), (now + backoff(attempts, base, cap)).isoformat(),
                 **stamp)


def after_stop(e: Entry, code: int, message: str = "", why: str = "no longer a participant") -> Entry:
    """The record after stopping a removed participant's pre-started server (202/204, or 404: gone already)."""
    if code in (202, 204, 404):
        return replace(e, status=STOPPED, message=f"stopped: {why}", next_try=None)
    return replace(e, message=f"could not stop it (the hub answered {code}{': ' + message if message else ''}); "
                   "the next pass tries again")


def orphan_stops(now: datetime, entries: Mapping[str, Entry], servers: Mapping[str, Server]) -> list[str]:
    """Records of a reservation that is gone (deleted): the servers this service started for it go if its window
    had not opened yet (after that they are the participants')."""
    return sorted(u for u, e in entries.items()
                  if e.status == RUNNING and e.ours(servers.get(u, Server())) and e.start and now < parse_when(e.start))


def protected_users(now: datetime, entries: Mapping[str, Mapping[str, Entry]]) -> set[str]:
    """Users whose pre-started server the cullers leave alone now (until the window's start + grace)."""
    return {e.user for by_user in entries.values() for e in by_user.values()
            if e.status in OURS and e.until and now < parse_when(e.until)}


def outcomes(before: Mapping[str, Entry], after: Mapping[str, Entry]) -> Counter:
    """What a pass did, for the esker_prestart_total counter: ``started`` (a pre-started server became ready),
    ``failed`` (a start failed), ``stopped`` (a removed participant's server stopped)."""
    out: Counter = Counter()
    for u, e in after.items():
        b = before.get(u)
        was = (b.status, b.attempts, b.requested_at) if b is not None else None
        if e.status == RUNNING and (b is None or b.status != RUNNING or b.started != e.started):
            out["started"] += 1
        elif e.status == FAILED and was != (e.status, e.attempts, e.requested_at):
            out["failed"] += 1
        elif e.status == STOPPED and (b is None or b.status != STOPPED) and e.message.startswith("stopped"):
            out["stopped"] += 1
    return out


def summary(plan: Plan, window: Window, now: datetime, lead: int, grace: int) -> dict:
    """What ``GET api/reservations`` shows as ``prestart`` (and ``esker reserve list`` prints)."""
    by: dict[str, list] = {s: [] for s in STATUSES}
    for u, e in sorted(plan.entries.items()):
        by[e.status].append(u)
    failed = [{"user": u, "message": e.message, "attempts": e.attempts, "next_try": e.next_try}
              for u, e in sorted(plan.entries.items()) if e.status == FAILED]
    notes = []
    if plan.over_seats:
        notes.append(f"{len(plan.over_seats)} participant{'s' if len(plan.over_seats) != 1 else ''} beyond the "
                     f"{plan.seats} seats not pre-started: {', '.join(plan.over_seats)}")
    if failed:
        notes.append(f"{len(failed)} failed (retried with a backoff): "
                     + "; ".join(f"{f['user']}: {f['message']}" for f in failed))
    return {
        "lead": lead, "grace": grace, "phase": plan.phase, "seats": plan.seats,
        "opens_at": window.opens.isoformat(), "protected_until": window.until.isoformat(),
        "running": by[RUNNING], "starting": by[STARTING], "failed": failed, "stopped": by[STOPPED],
        "already_running": list(plan.already), "over_seats": list(plan.over_seats),
        "attempts": {u: e.attempts for u, e in sorted(plan.entries.items()) if e.attempts},
        "checked_at": now.isoformat(), "message": "; ".join(notes) or "ok",
    }
