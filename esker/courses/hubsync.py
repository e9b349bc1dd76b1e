"""The hub's REST API as the esker-courses service uses it, with the service's own token: course groups and
their members, and instructors' access to their participants' servers.

JupyterHub's roles come only from its configuration (``load_roles``, read at hub start) and it has no REST API
for them; what its API can change at run time is groups and *shares* (JupyterHub 5+: one user's server opened
to another user, with scopes filtered to that server). So an instructor's reach into participants' servers is
kept here as shares, in step with the course groups: granted when a course is created or changed, when someone
joins, at the service's start and on every access pass (``ESKER_COURSES_ACCESS_EVERY``), and revoked when a
participant leaves or an instructor is dropped. The pairs granted are recorded in the course store, so only
shares this service made are ever revoked. The same code runs for the embedded hub and the Kubernetes chart's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Iterable, Mapping
from urllib.parse import quote

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from esker.courses.model import Course
from esker.state.coursestore import CourseStore

log = logging.getLogger("esker.courses")

# What an instructor may do with a participant's (default) server through the share: open it (UI, API,
# kernels), see it, start it and stop it. JupyterHub filters each to !server=<participant>/.
SHARED_SCOPES = ("access:servers", "read:servers", "start:servers", "delete:servers")
CONCURRENCY = 8  # hub API calls in flight at once during an access pass


def q(name: str) -> str:
    """A user or group name as one URL path segment."""
    return quote(name, safe="")


class HubError(web.HTTPError):
    """The hub refused a call: a 4xx becomes 400 with the hub's reason, anything else 502."""

    def __init__(self, what: str, code: int, data):
        reason = (data or {}).get("message") if isinstance(data, dict) else None
        super().__init__(400 if 400 <= code < 500 else 502,
                         f"{what}: the hub answered {code}" + (f" ({reason})" if reason else ""))
        self.hub_status = code


class HubApi:
    """The hub's REST API with the service's own token."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.token = token
        self.http = AsyncHTTPClient()

    async def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, object]:
        """(status, decoded JSON body or None) whatever the status; 502 if the hub does not answer."""
        req = HTTPRequest(f"{self.url}{path}", method=method,
                          headers={"Authorization": f"token {self.token}", **(headers or {})},
                          body=None if body is None else json.dumps(body),
                          allow_nonstandard_methods=True, request_timeout=30)
        try:
            r = await self.http.fetch(req, raise_error=False)
        except OSError as e:
            raise web.HTTPError(502, f"hub API unreachable: {e}") from None
        if r.code == 599:  # tornado's own: timeout or connection failure
            raise web.HTTPError(502, f"hub API unreachable: {r.error}")
        try:
            data = json.loads(r.body) if r.body else None
        except ValueError:
            data = None
        return r.code, data

    async def __call__(self, method: str, path: str, body=None, ok=(200, 201, 204)):
        """(status, body) for the statuses in ``ok``, (status, None) for the others."""
        code, data = await self.request(method, path, body)
        return (code, data) if code in ok else (code, None)

    async def paginated(self, path: str, limit: int = 200):
        """Every item of a paginated list (``/users?state=ready``), page after page as the hub's ``next``
        says (``limit`` is capped by the hub's ``api_page_max_limit``). Large pages: a page's cost in the hub is
        mostly fixed (a page of 50 shares took as long as one of 200 at 1,000 users, bench/scale.py), so
        smaller pages only multiply the requests."""
        sep = "&" if "?" in path else "?"
        offset = 0
        while True:
            code, data = await self.request("GET", f"{path}{sep}offset={offset}&limit={limit}",
                                            headers={"Accept": "application/jupyterhub-pagination+json"})
            if code != 200 or not isinstance(data, dict):
                raise HubError(f"listing {path}", code, data)
            for item in data.get("items") or ():
                yield item
            nxt = (data.get("_pagination") or {}).get("next")
            if not nxt:
                return
            offset = nxt["offset"]


async def spawn_failure(api: HubApi, user: str, timeout: float = 10) -> str | None:
    """Why ``user``'s last start failed, as the hub tells a browser's spawn-pending page (the progress stream's
    ``failed`` event: ``Spawn failed: ...``), or None when the hub does not say."""
    req = HTTPRequest(f"{api.url}/users/{q(user)}/server/progress", headers={"Authorization": f"token {api.token}"},
                      request_timeout=timeout)
    try:
        r = await api.http.fetch(req, raise_error=False)
    except OSError:
        return None
    if r.code != 200 or not r.body:
        return None
    for line in r.body.decode(errors="replace").splitlines():
        if line.startswith("data:"):
            try:
                event = json.loads(line[5:])
            except ValueError:
                continue
            if event.get("failed"):
                return str(event.get("message") or "Spawn failed")
    return None


async def ensure_users(api: HubApi, names: Iterable[str]) -> None:
    """Create the hub users that do not exist yet (the hub answers 409 when none is new)."""
    names = sorted(set(names))
    if not names:
        return
    code, data = await api.request("POST", "/users", {"usernames": names})
    if code not in (201, 409):
        raise HubError(f"creating users {', '.join(names)}", code, data)


async def sync_members(api: HubApi, group: str, add: Iterable[str], remove: Iterable[str] = ()) -> None:
    """Make the hub group exist and hold ``add`` (creating the users), without ``remove``."""
    add, remove = sorted(set(add)), sorted(set(remove))
    code, data = await api.request("GET", f"/groups/{q(group)}")
    if code == 404:
        code, data = await api.request("POST", f"/groups/{q(group)}")
        if code not in (201, 409):
            raise HubError(f"creating group {group}", code, data)
    elif code != 200:
        raise HubError(f"reading group {group}", code, data)
    if add:
        await ensure_users(api, add)
        code, data = await api.request("POST", f"/groups/{q(group)}/users", {"users": add})
        if code != 200:
            raise HubError(f"adding {', '.join(add)} to {group}", code, data)
    if remove:
        code, data = await api.request("DELETE", f"/groups/{q(group)}/users", {"users": remove})
        if code not in (200, 404):
            raise HubError(f"removing {', '.join(remove)} from {group}", code, data)


async def group_members(api: HubApi, groups: Iterable[str]) -> dict[str, set[str]]:
    """Each group's members as the hub has them now (a group the hub lacks has none)."""
    out = {}
    for g in sorted(set(groups)):
        code, data = await api.request("GET", f"/groups/{q(g)}")
        if code == 200 and isinstance(data, dict):
            out[g] = set(data.get("users") or ())
        elif code == 404:
            out[g] = set()
        else:
            raise HubError(f"reading group {g}", code, data)
    return out


def desired_access(courses: Iterable[Course], members: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
    """(participant, instructor) pairs: every instructor of a course reaches every member of its group (the
    group as the hub has it: named participants, people who joined with the password, those an admin added)."""
    return {(m, i) for c in courses for i in c.instructors for m in members.get(c.group, ()) if m != i}


async def _bounded(calls) -> list:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(call):
        async with sem:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


async def hub_shares(api: HubApi, instructors: Iterable[str]) -> set[tuple[str, str]]:
    """(participant, instructor) pairs for which the hub holds a share of the participant's default server with
    every one of SHARED_SCOPES for the instructor (their own, not through a group): read from each instructor's
    ``/users/<name>/shared`` list, page by page. An instructor the hub does not know has none."""
    pairs = set()
    for who in sorted(set(instructors)):
        try:
            async for share in api.paginated(f"/users/{q(who)}/shared"):
                server = share.get("server") or {}
                owner = (server.get("user") or {}).get("name")
                held = {s.split("!", 1)[0] for s in share.get("scopes") or ()}
                if share.get("kind", "user") == "user" and owner and server.get("name", "") == "" \
                        and held >= set(SHARED_SCOPES):
                    pairs.add((owner, who))
        except HubError as e:
            if e.hub_status != 404:
                raise
    return pairs


async def reconcile_access(api: HubApi, store: CourseStore, courses: Iterable[Course], full: bool = False) -> dict:
    """Grant the shares the courses call for and revoke the ones this service granted that they no longer do.
    ``full``: also grant the wanted pairs the hub no longer holds, whatever the store records (at start, and now
    and then: a share is lost with its server when a user is deleted and made again); the hub's shares are read
    page by page rather than every pair granted again. Returns what changed."""
    courses = list(courses)
    members = await group_members(api, [c.group for c in courses if c.instructors])
    want = desired_access(courses, members)
    have = store.access_grants()
    held: set[tuple[str, str]] = set()
    if full:  # what the hub holds now: a few pages per instructor, not one POST per pair (docs/scale.md)
        held = await hub_shares(api, {i for _, i in want}) & want
        grant = sorted(want - held)
    else:
        grant = sorted(want - have)
    revoke = sorted(have - want)
    await ensure_users(api, {i for _, i in grant})
    scopes = list(SHARED_SCOPES)

    async def give(owner: str, who: str):
        code, data = await api.request("POST", f"/shares/{q(owner)}/", {"user": who, "scopes": scopes})
        if code == 200:
            return owner, who
        # 404: the participant has no server entry yet (made with the account; retried next pass)
        log.warning("could not share %s's server with %s: hub answered %s %s", owner, who, code,
                    (data or {}).get("message", "") if isinstance(data, dict) else "")
        return None

    async def take(owner: str, who: str):
        # the scopes as the share holds them (filtered to the server): only those go, whatever else it has
        held = [f"{s}!server={owner}/" for s in scopes]
        code, data = await api.request("PATCH", f"/shares/{q(owner)}/", {"user": who, "scopes": held})
        if code in (200, 404):  # revoked, or the server (or the user) is gone and the share with it
            return owner, who
        log.warning("could not revoke %s's access to %s's server: hub answered %s", who, owner, code)
        return None

    granted = [p for p in await _bounded(give(o, w) for o, w in grant) if p]
    revoked = [p for p in await _bounded(take(o, w) for o, w in revoke) if p]
    store.record_access(granted + sorted(held - have), revoked)
    new = [p for p in granted if p not in have]
    if new or revoked:
        log.info("instructors' access: granted %s; revoked %s",
                 ", ".join(f"{w}->{o}" for o, w in new) or "none",
                 ", ".join(f"{w}->{o}" for o, w in revoked) or "none")
    return {"granted": new, "revoked": revoked, "wanted": len(want)}
