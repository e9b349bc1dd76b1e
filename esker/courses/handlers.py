"""The esker-courses service's REST handlers (docs/courses.md; the API is described in
``esker.courses.openapi``). Every request carries a hub token (``Authorization: token ...``), identified with
``jupyterhub.services.auth.HubAuth``.

Who may do what (decided here from the token's identity, never from the request body):

- admins (and the ``esker-admin`` service): everything;
- a course's instructors: read it, update its participants/content/window/seats/password/idle timeout (not its
  group or instructors), sync its content, reserve and release its seats;
- anyone logged in: see the courses they take, and join a course with its password.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import os
import pwd
from urllib.parse import quote

import jsonschema
from tornado import web

from esker.core import config as config_mod
from esker.core.schema import COURSE
from esker.courses.content import content_source, merge_as_user
from esker.courses.context import ServiceState
from esker.courses.hubsync import sync_members
from esker.courses.model import Course, CourseError, course_problems
from esker.courses.reservations import Reservation, admit
from esker.system.accounts import system_username

INSTRUCTOR_FIELDS = {"display_name", "participants", "content", "window", "seats", "password", "idle_timeout",
                     "profiles"}


class Base(web.RequestHandler):
    @property
    def st(self) -> ServiceState:
        return self.settings["state"]

    def write_error(self, status_code, **kw):
        reason = self._reason
        exc = kw.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": reason}))

    async def prepare(self):
        token = self.st.auth.get_token(self, in_cookie=False)
        model = await self.st.auth.user_for_token(token, sync=False) if token else None
        if not model:
            raise web.HTTPError(403, "a hub token is required (Authorization: token ...)")
        self.who = model
        scopes = set(model.get("scopes", ()))
        self.is_admin = bool(model.get("admin")) or {"admin:users", "admin:groups"} <= scopes
        self.name = model.get("name", "")
        self.groups = set(model.get("groups", ()))

    def body(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
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

    def json(self, data, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


def validate_course(cfg, data: dict, others: list[str]) -> dict:
    try:
        jsonschema.Draft202012Validator(COURSE).validate(data)
    except jsonschema.ValidationError as e:
        where = ".".join(map(str, e.absolute_path)) or "(body)"
        raise web.HTTPError(400, f"{where}: {e.message}") from None
    filled = config_mod._fill_defaults(COURSE, copy.deepcopy(data))
    probe = {"profiles": cfg["profiles"], "storage": cfg["storage"], "courses": [filled], "capacity": {}}
    problems = [p.replace("courses[0].", "") for p in course_problems(probe)]
    if filled["name"] in others:
        problems.append(f"name: {filled['name']!r} is used by another course")
    if problems:
        raise web.HTTPError(400, "; ".join(problems))
    return filled


class CoursesHandler(Base):
    async def get(self):
        out = []
        for c in self.st.courses().values():
            if self.may_manage(c):
                out.append(c.to_dict())
            elif c.is_participant(self.groups):
                d = c.to_dict()
                d.pop("participants")
                out.append(d)
        self.json(out)

    async def post(self):
        if not self.is_admin:
            raise web.HTTPError(403, "only admins create courses")
        data = validate_course(self.st.cfg, self.body(), list(self.st.courses()))
        self.st.store.put_course(data["name"], data)
        await sync_members(self.st.api, data["group"], data.get("participants", []))
        self.json(self.st.courses()[data["name"]].to_dict(), 201)


class CourseHandler(Base):
    async def get(self, name):
        c = self.course(name)
        if self.may_manage(c):
            return self.json(c.to_dict())
        if c.is_participant(self.groups):
            d = c.to_dict()
            d.pop("participants")
            return self.json(d)
        raise web.HTTPError(404, f"no course {name!r}")  # not yours: indistinguishable from absent

    async def patch(self, name):
        c = self.course(name)
        self.require_manage(c)
        changes = self.body()
        if not self.is_admin:
            bad = sorted(set(changes) - INSTRUCTOR_FIELDS)
            if bad:
                raise web.HTTPError(403, f"instructors cannot change {', '.join(bad)} (ask an admin)")
        current = c.to_dict(secrets=True)
        current.pop("source", None)
        merged = {**current, **changes, "name": c.name}
        merged = {k: v for k, v in merged.items() if v is not None or k in ("password", "window")}
        others = [n for n in self.st.courses() if n != c.name]
        data = validate_course(self.st.cfg, merged, others)
        self.st.store.put_course(c.name, data)
        if "participants" in changes:
            before, after = set(c.participants), set(data["participants"])
            await sync_members(self.st.api, data["group"], sorted(after - before), sorted(before - after))
        self.json(self.st.courses()[c.name].to_dict())


class JoinHandler(Base):
    async def post(self, name):
        c = self.course(name)
        if self.who.get("kind", "user") != "user":
            raise web.HTTPError(400, "only users join courses")
        given = str(self.body().get("password", ""))
        if not c.password or not hmac.compare_digest(given.encode(), c.password.encode()):
            raise web.HTTPError(403, f"wrong password for {name}" if c.password else f"{name} has no password; "
                                "ask an instructor to add you")
        await sync_members(self.st.api, c.group, [self.name])
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
        code, group = await self.st.api("GET", f"/groups/{quote(c.group)}", ok=(200,))
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
        out = [{**r.to_dict(), "prewarmed_at": (warm.get(r.id) or {}).get("prewarmed_at"),
                "prewarm": warm.get(r.id)}
               for r in self.st.store.reservations()
               if self.is_admin or (r.course in courses and self.may_manage(courses[r.course]))]
        self.json(out)

    async def post(self):
        data = self.body()
        courses = self.st.courses()
        c = courses.get(str(data.get("course", "")))
        if c is None:
            raise web.HTTPError(404, f"unknown course {data.get('course')!r}")
        self.require_manage(c)
        profile = data.get("profile") or (c.profiles[0] if c.profiles else "")
        try:
            new = Reservation.from_dict({**data, "profile": profile, "group": data.get("group") or c.group,
                                         "created_by": self.name})
        except (KeyError, ValueError, TypeError) as e:
            raise web.HTTPError(400, f"a reservation needs course, profile, seats, start and end: {e}") from None
        groups = {c.group for c in courses.values()} | set(self.st.cfg["users"]["groups"])
        decision, saved = self.st.store.reserve(
            new, lambda n, existing: admit(n, existing, self.st.capacity, self.st.catalog, courses, groups))
        if not decision.accepted:
            self.set_status(decision.status)
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
        cap = self.st.capacity
        self.json({"cpu": cap.cpu, "memory": cap.memory, "gpus": cap.gpus, "scratch": cap.scratch})


class PageHandler(Base):
    async def get(self):
        rows = "".join(
            f"<tr><td>{web.escape.xhtml_escape(r.course)}</td><td>{r.profile}</td><td>{r.seats}</td>"
            f"<td>{r.start:%Y-%m-%d %H:%M}</td><td>{r.end:%H:%M}</td><td>{r.id}</td></tr>"
            for r in self.st.store.reservations())
        if not self.is_admin and not any(self.may_manage(c) for c in self.st.courses().values()):
            raise web.HTTPError(403, "for admins and instructors")
        self.finish(f"<!doctype html><title>Esker reservations</title><h1>Reservations</h1><table border=1>"
                    f"<tr><th>course</th><th>profile</th><th>seats</th><th>from</th><th>to</th><th>id</th></tr>"
                    f"{rows}</table>")

