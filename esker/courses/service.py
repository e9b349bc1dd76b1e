"""The ``esker-courses`` JupyterHub-managed service: a REST API for courses and reservations, and the per-course
idle culler. Served by the hub's proxy at /services/esker-courses/; every request carries a hub token
(``Authorization: token ...``), identified with ``jupyterhub.services.auth.HubAuth``.

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
import logging
import os
import pwd
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import jsonschema
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback

from esker import resources
from esker.core import config as config_mod
from esker.core.catalog import Catalog
from esker.core.schema import COURSE
from esker.courses.content import content_source, merge_as_user
from esker.courses.model import Course, CourseError, course_problems, courses_from_config
from esker.courses.prewarm import (
    PLACEHOLDER_SELECTOR,
    environments_to_build,
    placeholder_changes,
    prewarm_plan,
    prewarm_record,
)
from esker.courses.reservations import Reservation, admit, machine_capacity
from esker.runtime import default_state_dir
from esker.spark.cluster import master_status
from esker.state.coursestore import CourseStore
from esker.system.accounts import system_username
from esker.system.envs import EnvironmentBuilder
from esker.system.gpus import configured_gpus

log = logging.getLogger("esker.courses")

INSTRUCTOR_FIELDS = {"display_name", "participants", "content", "window", "seats", "password", "idle_timeout",
                     "profiles"}


class Api:
    """The hub's REST API with the service's own token."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.token = token
        self.http = AsyncHTTPClient()

    async def __call__(self, method: str, path: str, body=None, ok=(200, 201, 204)):
        req = HTTPRequest(f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"},
                          body=None if body is None else json.dumps(body),
                          allow_nonstandard_methods=True, request_timeout=30)
        try:
            r = await self.http.fetch(req, raise_error=False)
        except OSError as e:
            raise web.HTTPError(502, f"hub API unreachable: {e}") from None
        if r.code not in ok:
            return r.code, None
        return r.code, (json.loads(r.body) if r.body else None)


def default_builder(state_dir: str):
    """The hub's own EnvironmentBuilder (hub/runtime.py): same folder (ESKER_ENVS_DIR or <state>/envs), same
    images/, same interpreter, so what is built here is what the spawner finds ready."""
    return EnvironmentBuilder(os.environ.get("ESKER_ENVS_DIR") or os.path.join(state_dir, "envs"),
                              resources.images_dir())


def spark_master_check(cfg):
    """A callable answering "up (N workers)" or "down: why" for the embedded Spark master (hub/spark.py)."""
    def check() -> str:
        try:
            st = master_status(cfg["spark"]["webui_port"])
        except Exception as e:  # noqa: BLE001 - any failure means "not up"; the record says which
            return f"down: {e}"
        alive = [w for w in st.get("workers", ()) if w.get("state") == "ALIVE"]
        if st.get("status") not in (None, "ALIVE"):
            return f"down: master {st.get('status')}"
        return f"up ({len(alive)} worker{'s' if len(alive) != 1 else ''})"
    return check


class State:
    def __init__(self, cfg, state_dir: str, api: Api, auth, builder=None, spark_check=None, kube=None,
                 backend: str | None = None, lookahead: timedelta | None = None):
        self.cfg = cfg
        self.state_dir = state_dir
        self.catalog = Catalog.from_config(cfg)
        self.store = CourseStore.for_state_dir(state_dir)
        try:
            ngpu = len(configured_gpus(cfg["gpus"]["devices"]))
        except Exception:
            ngpu = 0
        self.capacity = machine_capacity(cfg, state_dir, ngpu)
        self.api = api
        self.auth = auth
        # Pre-warming. embedded: build environments, check Spark; kubernetes: placeholder pods (kube: a
        # kubernetes_asyncio CoreV1Api, made on first use in the hub pod).
        self.backend = backend or os.environ.get("ESKER_COURSES_BACKEND", "embedded")
        self.lookahead = lookahead if lookahead is not None else timedelta(
            seconds=float(os.environ.get("ESKER_COURSES_PREWARM_LOOKAHEAD", "1800")))
        self.builder = builder
        self.spark_check = spark_check if spark_check is not None else spark_master_check(cfg)
        self.kube = kube
        self.placeholders_made: set[str] = set()

    def courses(self) -> dict[str, Course]:
        return {c.name: c for c in self.store.effective_courses(courses_from_config(self.cfg))}


class Base(web.RequestHandler):
    @property
    def st(self) -> State:
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


async def sync_members(st: State, group: str, add: list[str], remove: list[str] = ()) -> None:
    """Make the hub group exist and hold ``add`` (creating the users), without ``remove``."""
    code, _ = await st.api("GET", f"/groups/{quote(group)}", ok=(200,))
    if code == 404:
        await st.api("POST", f"/groups/{quote(group)}", ok=(201, 409))
    if add:
        await st.api("POST", "/users", {"usernames": list(add)}, ok=(201, 409))
        code, _ = await st.api("POST", f"/groups/{quote(group)}/users", {"users": list(add)}, ok=(200,))
        if code != 200:
            raise web.HTTPError(502, f"could not add participants to {group} (hub answered {code})")
    if remove:
        await st.api("DELETE", f"/groups/{quote(group)}/users", {"users": list(remove)}, ok=(200,))


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
        await sync_members(self.st, data["group"], data.get("participants", []))
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
            await sync_members(self.st, data["group"], sorted(after - before), sorted(before - after))
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
        await sync_members(self.st, c.group, [self.name])
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


async def cull_once(st: State, now: datetime | None = None) -> list[str]:
    """Stop participants' servers idle longer than their course's idle_timeout; drop ended reservations."""
    now = now or datetime.now(timezone.utc)
    st.store.expire(now)
    stopped = []
    for c in st.courses().values():
        code, group = await st.api("GET", f"/groups/{quote(c.group)}", ok=(200,))
        for u in (group or {}).get("users", ()):
            code, user = await st.api("GET", f"/users/{quote(u)}", ok=(200,))
            server = ((user or {}).get("servers") or {}).get("")
            if not server or not server.get("ready") or not server.get("last_activity"):
                continue
            idle = (now - datetime.fromisoformat(server["last_activity"].replace("Z", "+00:00"))).total_seconds()
            if idle > c.idle_timeout:
                log.info("stopping %s's server: idle %ds, course %s allows %ds", u, idle, c.name, c.idle_timeout)
                await st.api("DELETE", f"/users/{quote(u)}/server", ok=(202, 204))
                stopped.append(u)
    return stopped


async def apply_placeholders(core, namespace: str, wanted, made: set[str]) -> dict:
    """Create and delete seat placeholder pods (``prewarm_plan``'s) through the Kubernetes API: ``core`` is a
    kubernetes_asyncio ``CoreV1Api`` (the hub's ServiceAccount may manage pods in its namespace: z2jh's hub
    Role). Only pods labelled as placeholders are ever listed or deleted."""
    from kubernetes_asyncio.client.rest import ApiException

    found = await core.list_namespaced_pod(namespace, label_selector=PLACEHOLDER_SELECTOR)
    existing = [p.metadata.name for p in found.items]
    create, delete = placeholder_changes(wanted, existing, made)
    created, deleted = [], []
    for pod in create:
        name = pod["metadata"]["name"]
        try:
            await core.create_namespaced_pod(namespace, pod)
        except ApiException as e:
            if e.status != 409:
                raise
        made.add(name)
        created.append(name)
    for name in delete:
        try:
            await core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise
        made.discard(name)
        deleted.append(name)
    if created or deleted:
        log.info("seat placeholders in %s: created %s, deleted %s", namespace, created or "none", deleted or "none")
    return {"created": created, "deleted": deleted}


def _kube_core():
    from kubernetes_asyncio import client
    from kubernetes_asyncio import config as kconfig

    try:
        kconfig.load_incluster_config()
    except kconfig.ConfigException:
        raise RuntimeError("ESKER_COURSES_BACKEND=kubernetes but not running in a pod") from None
    return client.CoreV1Api()


async def prewarm_once(st: State, now: datetime | None = None) -> dict:
    """One pre-warming pass over the reservations starting within ``st.lookahead`` (or running).

    embedded: build each reserved profile's environment now (as ``esker prepare`` would, into the folder the
    spawner uses), and check the Spark master when a reserved profile uses Spark. kubernetes: keep one
    placeholder pod per seat (the images are already on the nodes: the chart's pre-puller lists every profile's
    image). What was found is recorded per reservation (``GET api/reservations``: ``prewarmed_at``, ``prewarm``)
    and logged."""
    now = now or datetime.now(timezone.utc)
    k8s = st.cfg["kubernetes"]
    plan = prewarm_plan(now, st.store.reservations(), st.lookahead, st.catalog, namespace=k8s["namespace"],
                        gpu_resource=st.cfg["gpus"]["resource_name"])
    out: dict = {"environments": {}, "spark": None, "placeholders": None}
    if st.backend == "kubernetes":
        if st.kube is None:
            st.kube = _kube_core()
        out["placeholders"] = await apply_placeholders(st.kube, k8s["namespace"], plan.placeholders,
                                                       st.placeholders_made)
        status = {e: "ready" for e in plan.environments}  # in the images, pulled by the pre-puller
    else:
        if st.builder is None:
            st.builder = default_builder(st.state_dir)
        status = {}
        ready = []
        for name in plan.environments:
            try:
                if st.builder.get(name).ready():
                    ready.append(name)
            except FileNotFoundError as e:
                status[name] = f"failed: {e}"
        for name in environments_to_build(plan, ready + list(status)):
            log.info("pre-warming: building the %s environment for %s", name,
                     ", ".join(d.reservation.course for d in plan.due if d.environment == name))
            try:
                async for line in st.builder.ensure(name):
                    log.info("pre-warming %s: %s", name, line)
                status[name] = "ready"
            except Exception as e:  # noqa: BLE001 - recorded and logged; the next pass tries again
                status[name] = f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                log.error("pre-warming %s failed: %s", name, e)
        for name in ready:
            status[name] = "ready"
        if plan.spark and st.cfg["spark"]["enabled"]:
            out["spark"] = await asyncio.to_thread(st.spark_check)
            if not out["spark"].startswith("up"):
                log.warning("pre-warming: the Spark master is not up (%s); reserved Spark seats will wait",
                            out["spark"])
    out["environments"] = status
    before = st.store.prewarm_records()
    for d in plan.due:
        rid = d.reservation.id or d.reservation.course
        rec = prewarm_record(d, status, out["spark"] if st.backend != "kubernetes" else None, now, before.get(rid))
        if st.backend == "kubernetes":
            rec["placeholders"] = d.reservation.seats
        if rec["prewarmed_at"] and not (before.get(rid) or {}).get("prewarmed_at"):
            log.info("pre-warmed reservation %s (%s, %d seats of %s from %s): %s", rid, d.reservation.course,
                     d.reservation.seats, d.reservation.profile, d.reservation.start.isoformat(), rec["status"])
        st.store.put_prewarm(rid, rec)
    out["due"] = [d.reservation.id for d in plan.due]
    return out


def make_app(st: State, prefix: str) -> web.Application:
    p = prefix.rstrip("/")
    return web.Application([
        (rf"{p}/?", PageHandler),
        (rf"{p}/api/courses/?", CoursesHandler),
        (rf"{p}/api/courses/([a-z0-9-]+)/?", CourseHandler),
        (rf"{p}/api/courses/([a-z0-9-]+)/join", JoinHandler),
        (rf"{p}/api/courses/([a-z0-9-]+)/sync", SyncHandler),
        (rf"{p}/api/reservations/?", ReservationsHandler),
        (rf"{p}/api/reservations/([a-z0-9]+)", ReservationHandler),
        (rf"{p}/api/capacity", CapacityHandler),
    ], state=st)


def main() -> None:
    from urllib.parse import urlparse

    from jupyterhub.services.auth import HubAuth

    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s esker-courses] %(message)s")
    cfg = config_mod.load(os.environ.get("ESKER_CONFIG") or None)
    state_dir = os.environ.get("ESKER_STATE_DIR") or default_state_dir()
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    api_url = os.environ["JUPYTERHUB_API_URL"]
    auth = HubAuth(api_token=token, api_url=api_url, cache_max_age=30)
    st = State(cfg, state_dir, Api(api_url, token), auth)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/esker-courses/")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:0"))
    app = make_app(st, prefix)
    app.listen(url.port, address=url.hostname or "127.0.0.1", xheaders=True)
    every = float(os.environ.get("ESKER_COURSES_CULL_EVERY", "60"))

    async def cull():
        try:
            await cull_once(st)
        except Exception:
            log.exception("culling failed")

    warming = asyncio.Lock()

    async def prewarm():
        if warming.locked():
            return  # the start-up pass is still building
        async with warming:
            try:
                await prewarm_once(st)
            except Exception:
                log.exception("pre-warming failed")

    async def setup():
        for c in st.courses().values():  # runtime courses' groups (config ones come from load_groups)
            if c.source == "runtime":
                try:
                    await sync_members(st, c.group, list(c.participants))
                except Exception as e:
                    log.warning("group %s: %s", c.group, e)

    PeriodicCallback(cull, every * 1000).start()
    # A separate loop: building an environment takes minutes and must not hold up culling. Tornado awaits a
    # coroutine callback before scheduling the next run, so passes never overlap.
    warm_every = float(os.environ.get("ESKER_COURSES_PREWARM_EVERY", "60"))
    PeriodicCallback(prewarm, warm_every * 1000).start()
    IOLoop.current().add_callback(setup)
    IOLoop.current().add_callback(prewarm)
    log.info("esker-courses on %s%s", url.geturl(), prefix)
    IOLoop.current().start()


if __name__ == "__main__":
    main()
