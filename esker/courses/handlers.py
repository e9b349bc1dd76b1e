"""The esker-courses service's REST handlers (docs/courses.md; the API is described in
``esker.courses.openapi``, whose request schemas are the ones bodies are checked against). Every request but
the description's carries a hub token (``Authorization: token ...``), identified with
``jupyterhub.services.auth.HubAuth``. Errors are JSON: ``{"status": ..., "message": ...}``.

Who may do what (decided here from the token's identity, never from the request body):

- admins (and the ``esker-admin`` service): everything;
- a course's instructors: read it, update its participants/content/window/seats/password/idle timeout (not its
  group or instructors), sync its content, reserve and release its seats;
- anyone logged in: see the courses they take, and join a course with its password.

Whenever a course's members or instructors change, the instructors' shares of the participants' servers are
brought in step (``ServiceState.sync_access``).
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import os
import pwd

import jsonschema
import yaml
from tornado import web

from esker.core import config as config_mod
from esker.courses import openapi
from esker.courses.content import content_source, merge_as_user
from esker.courses.context import ServiceState
from esker.courses.hubsync import ensure_users, q, sync_members
from esker.courses.model import Course, CourseError, course_problems
from esker.courses.reservations import Reservation, admit
from esker.system.accounts import system_username

log = logging.getLogger("esker.courses")

INSTRUCTOR_FIELDS = {"display_name", "participants", "content", "window", "seats", "password", "idle_timeout",
                     "prestart_lead", "prestart_grace", "profiles"}


class JsonHandler(web.RequestHandler):
    """JSON answers and JSON errors."""

    def write_error(self, status_code, **kw):
        reason = self._reason
        exc = kw.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": reason}))

    def json(self, data, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class NotFoundHandler(JsonHandler):
    """Any path under the service's prefix that is not a route (a JSON 404, as the routes' own)."""

    def prepare(self):
        raise web.HTTPError(404, f"no such path: {self.request.path}")


class OpenApiHandler(JsonHandler):
    """The API's OpenAPI description (no token needed: it holds no data)."""

    def initialize(self, prefix: str):
        self.prefix = prefix

    def get(self, fmt):
        doc = openapi.spec(self.prefix)
        if fmt == "yaml":
            self.set_header("Content-Type", "application/yaml")
            return self.finish(yaml.safe_dump(doc, sort_keys=False))
        self.json(doc)


class Base(JsonHandler):
    @property
    def st(self) -> ServiceState:
        return self.settings["state"]

    async def prepare(self):
        token = self.st.auth.get_token(self, in_cookie=False)
        model = await self.identify(token) if token else None
        if not model:
            raise web.HTTPError(403, "a hub token is required (Authorization: token ...)")
        self.who = model
        scopes = set(model.get("scopes", ()))
        self.is_admin = bool(model.get("admin")) or {"admin:users", "admin:groups"} <= scopes
        self.name = model.get("name", "")
        self.groups = set(model.get("groups", ()))

    async def identify(self, token: str, tries: int = 3):
        """The token's owner as the hub sees it (HubAuth, cached), or None. A hub that answers 5xx for a moment (a
        busy database) is asked again; one that keeps failing is a 502, not the 500 HubAuth raises."""
        for attempt in range(tries):
            try:
                return await self.st.auth.user_for_token(token, sync=False)
            except web.HTTPError as e:
                if attempt == tries - 1:
                    raise web.HTTPError(502, "the hub could not check the token: "
                                             f"{e.log_message or e.status_code}") from None
                await asyncio.sleep(0.5 * (attempt + 1))

    def body(self, schema: dict | None = None) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):
            raise web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        if schema is not None:
            check(schema, data)
        return data

    def course(self, name: str) -> Course:
        c = self.st.courses().get(name)
        if c is None:
            raise web.HTTPError(404, f"no course {name!r}")
        return c

    def may_manage(self, c: Course) -> bool:
        return self.is_admin or (self.who.get("kind", "user") == "user" and c.is_instructor(self.name))

    def require_manage(self, c: Course) -> None:
        if not self.may_manage(c):
            raise web.HTTPError(403, f"only admins and the instructors of {c.name} may do this")

    async def sync_access(self) -> None:
        """After a change: instructors' shares in step now (the periodic pass repeats it if the hub failed)."""
        try:
            await self.st.sync_access()
        except web.HTTPError as e:
            log.warning("instructors' access not brought in step now (the next pass tries again): %s",
                        e.log_message)


def check(schema: dict, data) -> None:
    """400 naming the first field ``data`` gets wrong against ``schema``."""
    try:
        jsonschema.Draft202012Validator(schema).validate(data)
    except jsonschema.ValidationError as e:
        where = ".".join(map(str, e.absolute_path)) or "(body)"
        raise web.HTTPError(400, f"{where}: {e.message}") from None


def name_problems(field: str, names) -> list[str]:
    """Hub user names as the hub keeps them: lowercase (the authenticators normalise so), no '/', no control
    characters, no surrounding spaces, not only dots. Anything else the hub would store under another name or
    refuse."""
    bad = [n for n in names if n != n.strip() or n != n.lower() or "/" in n or set(n) <= {"."}
           or any(ord(ch) < 32 or ord(ch) == 127 for ch in n)]
    return [f"{field}: {n!r} is not a hub user name (lowercase, no '/', no surrounding spaces)" for n in bad]


def validate_course(cfg, data: dict) -> dict:
    """A whole course (a new one, or an old one with changes): the schema, then what the schema cannot say."""
    check(openapi.COURSE_CREATE, data)
    filled = config_mod._fill_defaults(openapi.COURSE_CREATE, copy.deepcopy(data))
    probe = {"hub": cfg["hub"], "profiles": cfg["profiles"], "storage": cfg["storage"], "courses": [filled],
             "capacity": {}}  # hub.mode decides what content is deliverable
    problems = [p.replace("courses[0].", "") for p in course_problems(probe)]
    problems += name_problems("participants", filled["participants"])
    problems += name_problems("instructors", filled["instructors"])
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in filled["group"]):
        problems.append(f"group: {filled['group']!r} has control characters")
    content = filled.get("content") or {}
    for key in ("git", "ref"):
        if str(content.get(key, "")).startswith("-"):
            problems.append(f"content.{key}: must not start with '-'")
    if problems:
        raise web.HTTPError(400, "; ".join(problems))
    return filled


def participant_view(c: Course) -> dict:
    d = c.to_dict()
    d.pop("participants")
    return d


class CoursesHandler(Base):
    async def get(self):
        out = []
        for c in self.st.courses().values():
            if self.may_manage(c):
                out.append(c.to_dict())
            elif c.is_participant(self.groups):
                out.append(participant_view(c))
        self.json(out)

    async def post(self):
        if not self.is_admin:
            raise web.HTTPError(403, "only admins create courses")
        data = validate_course(self.st.cfg, self.body(openapi.COURSE_CREATE))  # 400 first, then 409
        if data["name"] in self.st.courses():
            raise web.HTTPError(409, f"name: {data['name']!r} is used by another course")
        await ensure_users(self.st.api, data["instructors"])
        await sync_members(self.st.api, data["group"], data["participants"])
        self.st.store.put_course(data["name"], data)
        await self.sync_access()
        self.json(self.st.courses()[data["name"]].to_dict(), 201)


class CourseHandler(Base):
    async def get(self, name):
        c = self.course(name)
        if self.may_manage(c):
            return self.json(c.to_dict())
        if c.is_participant(self.groups):
            return self.json(participant_view(c))
        raise web.HTTPError(404, f"no course {name!r}")  # not yours: indistinguishable from absent

    async def patch(self, name):
        c = self.course(name)
        self.require_manage(c)
        changes = self.body(openapi.COURSE_PATCH)
        if not self.is_admin:
            bad = sorted(set(changes) - INSTRUCTOR_FIELDS)
            if bad:
                raise web.HTTPError(403, f"instructors cannot change {', '.join(bad)} (ask an admin)")
        current = c.to_dict(secrets=True)
        current.pop("source", None)
        merged = {**current, **changes, "name": c.name}
        merged = {k: v for k, v in merged.items() if v is not None or k in ("password", "window")}
        data = validate_course(self.st.cfg, merged)
        before, after = set(c.participants), set(data["participants"])
        if data["group"] != c.group:  # a new group: everyone named goes there
            await sync_members(self.st.api, data["group"], sorted(after))
        elif before != after:
            await sync_members(self.st.api, data["group"], sorted(after - before), sorted(before - after))
        await ensure_users(self.st.api, set(data["instructors"]) - set(c.instructors))
        self.st.store.put_course(c.name, data)
        await self.sync_access()
        self.json(self.st.courses()[c.name].to_dict())


class JoinHandler(Base):
    async def post(self, name):
        c = self.course(name)
        if self.who.get("kind", "user") != "user":
            raise web.HTTPError(400, "only users join courses")
        given = self.body(openapi.JOIN)["password"]
        if not c.password or not hmac.compare_digest(given.encode(), c.password.encode()):
            raise web.HTTPError(403, f"wrong password for {name}" if c.password else f"{name} has no password; "
                                "ask an instructor to add you")
        await sync_members(self.st.api, c.group, [self.name])
        await self.sync_access()
        self.json({"course": c.name, "group": c.group, "joined": self.name})


class SyncHandler(Base):
    async def post(self, name):
        c = self.course(name)
        self.require_manage(c)
        try:
            src = await asyncio.to_thread(content_source, c, self.st.state_dir, True)
        except CourseError as e:
            raise web.HTTPError(502, str(e)) from None
        if src is None:
            return self.json({"course": name, "merged": {}, "message": "the course has no content"})
        _, group = await self.st.api("GET", f"/groups/{q(c.group)}", ok=(200,))
        members = sorted(set((group or {}).get("users", ())) | set(c.instructors))
        prefix = self.st.cfg["users"]["system_user_prefix"]
        merged = {}
        for u in members:
            try:
                pw = pwd.getpwnam(system_username(u, prefix))
            except KeyError:
                continue  # never spawned: gets the content at first spawn
            dest = os.path.join(pw.pw_dir, c.name)
            try:
                r = await asyncio.to_thread(merge_as_user, str(src), dest, pw.pw_uid, pw.pw_gid)
                merged[u] = r.summary()
            except (CourseError, OSError) as e:
                merged[u] = f"failed: {e}"
        self.json({"course": name, "merged": merged})


class ReservationsHandler(Base):
    async def get(self):
        courses = self.st.courses()
        warm = self.st.store.prewarm_records()
        started = self.st.store.prestart_summaries()
        out = [{**r.to_dict(), "prewarmed_at": (warm.get(r.id) or {}).get("prewarmed_at"),
                "prewarm": warm.get(r.id), "prestart": started.get(r.id)}
               for r in self.st.store.reservations()
               if self.is_admin or (r.course in courses and self.may_manage(courses[r.course]))]
        self.json(out)

    async def post(self):
        data = self.body(openapi.RESERVATION_CREATE)
        courses = self.st.courses()
        c = courses.get(data["course"])
        if c is None:
            raise web.HTTPError(404, f"unknown course {data['course']!r}")
        self.require_manage(c)
        profile = data.get("profile") or (c.profiles[0] if c.profiles else "")
        try:
            new = Reservation.from_dict({**data, "profile": profile, "group": data.get("group") or c.group,
                                         "created_by": self.name})
            for t in (new.start, new.end):
                t.astimezone()  # a time the hub's clock can show (not past the year 9999 in local time)
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            raise web.HTTPError(400, f"a reservation needs course, profile, seats, start and end: {e}") from None
        groups = {c.group for c in courses.values()} | set(self.st.cfg["users"]["groups"])
        decision, saved = self.st.store.reserve(
            new, lambda n, existing: admit(n, existing, self.st.capacity, self.st.catalog, courses, groups))
        if not decision.accepted:
            return self.json({"status": decision.status, "message": decision.reason,
                              "short": list(decision.short)}, decision.status)
        self.json(saved.to_dict(), 201)


class ReservationHandler(Base):
    async def delete(self, rid):
        r = next((r for r in self.st.store.reservations() if r.id == rid), None)
        if r is None:
            raise web.HTTPError(404, f"no reservation {rid!r}")
        c = self.st.courses().get(r.course)
        if not (self.is_admin or (c is not None and self.may_manage(c))):
            raise web.HTTPError(403, f"only admins and the instructors of {r.course} may do this")
        self.st.store.delete_reservation(rid)
        self.set_status(204)
        self.finish()


class CapacityHandler(Base):
    async def get(self):
        if not self.is_admin and not any(self.may_manage(c) for c in self.st.courses().values()):
            raise web.HTTPError(403, "for admins and instructors")
        cap = self.st.capacity
        self.json({"cpu": cap.cpu, "memory": cap.memory, "gpus": cap.gpus, "scratch": cap.scratch})


class PageHandler(Base):
    async def get(self):
        if not self.is_admin and not any(self.may_manage(c) for c in self.st.courses().values()):
            raise web.HTTPError(403, "for admins and instructors")
        esc = web.escape.xhtml_escape
        rows = "".join(
            f"<tr><td>{esc(r.course)}</td><td>{esc(r.profile)}</td><td>{r.seats}</td>"
            f"<td>{r.start:%Y-%m-%d %H:%M}</td><td>{r.end:%H:%M}</td><td>{esc(r.id)}</td></tr>"
            for r in self.st.store.reservations())
        self.finish(f"<!doctype html><title>Esker reservations</title><h1>Reservations</h1><table border=1>"
                    f"<tr><th>course</th><th>profile</th><th>seats</th><th>from</th><th>to</th><th>id</th></tr>"
                    f"{rows}</table>")
