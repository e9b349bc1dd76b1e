"""The esker-courses service's periodic jobs: per-course idle culling (with dropping ended reservations),
pre-warming before reservation windows (embedded: build the reserved profiles' environments and check that
Spark servers can start their clusters; Kubernetes: seat placeholder pods) and pre-starting the booked
participants' servers through the hub's REST API (both backends: the hub's spawner does the work)."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from datetime import datetime, timezone

from esker import resources
from esker.courses.context import ServiceState
from esker.courses.hubsync import _bounded, group_members, q, spawn_failure
from esker.courses.model import parse_when
from esker.courses.prestart import (
    STARTING,
    STOPPED,
    Server,
    Window,
    after_start,
    after_stop,
    orphan_stops,
    outcomes,
    plan_prestart,
    protected_users,
    reconcile,
    summary,
    vanished,
)
from esker.courses.prewarm import (
    PLACEHOLDER_SELECTOR,
    environments_to_build,
    placeholder_changes,
    prewarm_plan,
    prewarm_record,
)
from esker.spark.cluster import java_home
from esker.system.envs import EnvironmentBuilder, cuda_wanted

log = logging.getLogger("esker.courses")


def default_builder(state_dir: str):
    """The hub's own EnvironmentBuilder (hub/runtime.py): same folder (ESKER_ENVS_DIR or <state>/envs), same
    images/, same interpreter, same CUDA decision (cuda_wanted: NVML, or ESKER_CUDA, which the service is given),
    so what is built here is what the spawner finds ready."""
    return EnvironmentBuilder(os.environ.get("ESKER_ENVS_DIR") or os.path.join(state_dir, "envs"),
                              resources.images_dir(), cuda=cuda_wanted())


def spark_master_check(cfg):
    """A callable answering "up (...)" or "down: why": can a Spark server start its own cluster here (each
    server runs its own master and worker, esker.spark.cluster)? That needs a Java runtime."""
    def check() -> str:
        jh = java_home()
        if not jh or not os.access(os.path.join(jh, "bin", "java"), os.X_OK):
            return "down: no Java runtime (set JAVA_HOME or install a JRE); Spark servers cannot start their cluster"
        return f"up (each Spark server starts its own cluster; Java at {jh})"
    return check


async def ready_servers(api) -> dict[str, dict]:
    """User name -> their ready default server's model, for every user who has one: the hub's user list filtered
    to ready servers, a few pages per pass (200 users a page). Asking for each participant instead was one
    request per member per pass: for a 1,000-seat course, 1,000 requests a minute, more than all the servers'
    activity reports together (docs/scale.md)."""
    out = {}
    async for user in api.paginated("/users?state=ready"):
        server = (user.get("servers") or {}).get("")
        if server:
            out[user["name"]] = server
    return out


async def cull_once(st: ServiceState, now: datetime | None = None) -> list[str]:
    """Stop participants' servers idle longer than their course's idle_timeout; drop ended reservations. A server
    this service pre-started is left alone until its window's start plus the course's prestart_grace."""
    now = now or datetime.now(timezone.utc)
    st.store.expire(now)
    protected = protected_users(now, st.store.prestart_entries())
    stopped = []
    courses = list(st.courses().values())
    if not courses:
        return stopped
    ready = await ready_servers(st.api)
    for c in courses:
        code, group = await st.api("GET", f"/groups/{q(c.group)}", ok=(200,))
        for u in (group or {}).get("users", ()):
            if u in protected:
                continue
            server = ready.get(u)
            if not server or not server.get("last_activity") or u in stopped:
                continue
            idle = (now - datetime.fromisoformat(server["last_activity"].replace("Z", "+00:00"))).total_seconds()
            if idle > c.idle_timeout:
                log.info("stopping %s's server: idle %ds, course %s allows %ds", u, idle, c.name, c.idle_timeout)
                await st.api("DELETE", f"/users/{q(u)}/server", ok=(202, 204))
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


async def prewarm_once(st: ServiceState, now: datetime | None = None) -> dict:
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
        if st.spark_check is None:
            st.spark_check = spark_master_check(st.cfg)
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
                log.warning("pre-warming: Spark servers cannot start their clusters (%s)",
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


# ------------------------------------------------------------------------------------------------ pre-start
def activity_body(now: datetime) -> dict:
    """``POST /users/<name>/activity``'s body: the user's and the default server's last activity at ``now``."""
    t = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"last_activity": t, "servers": {"": {"last_activity": t}}}


async def _servers(st: ServiceState, users) -> dict[str, Server]:
    """Each user's default server as the hub has it now (the truth the records are reconciled with)."""
    async def one(u):
        code, data = await st.api.request("GET", f"/users/{q(u)}")
        if code == 200:
            return u, Server.from_user(data)
        if code == 404:
            return u, Server()
        raise RuntimeError(f"reading user {u}: the hub answered {code}")

    return dict(await _bounded(one(u) for u in sorted(set(users))))


async def _start(st: ServiceState, user: str, profile: str) -> tuple[int, str]:
    try:
        code, data = await st.api.request("POST", f"/users/{q(user)}/server", {"profile": profile})
    except Exception as e:  # noqa: BLE001 - the hub did not answer: recorded as a failure, retried later
        return 502, str(getattr(e, "log_message", "") or e)
    return code, (data or {}).get("message", "") if isinstance(data, dict) else ""


async def _stop(st: ServiceState, user: str) -> tuple[int, str]:
    try:
        code, data = await st.api.request("DELETE", f"/users/{q(user)}/server")
    except Exception as e:  # noqa: BLE001
        return 502, str(getattr(e, "log_message", "") or e)
    return code, (data or {}).get("message", "") if isinstance(data, dict) else ""


async def _report_activity(st: ServiceState, user: str, now: datetime) -> None:
    """The hub's last_activity of a protected server moved to now, so the hub-wide idle culler (which decides
    on it) leaves it alone; after the grace nothing is reported and it decays like any other."""
    code, data = await st.api.request("POST", f"/users/{q(user)}/activity", activity_body(now))
    if code not in (200, 204):
        log.warning("pre-start: could not report activity for %s's server: the hub answered %s %s", user, code,
                    (data or {}).get("message", "") if isinstance(data, dict) else "")


async def prestart_once(st: ServiceState, now: datetime | None = None) -> dict:
    """One pre-start pass: for each reservation in its lead or grace period (esker.courses.prestart), read the
    course group's members and their servers from the hub, reconcile the records, then start, stop and report
    activity as the plan says, and record the result (``GET api/reservations``: ``prestart``; the hub's metrics
    read the same records). Servers of a deleted reservation whose window had not opened are stopped."""
    now = now or datetime.now(timezone.utc)
    courses = st.courses()
    reservations = {r.id: r for r in st.store.reservations()}
    records = st.store.prestart_entries()
    before_summaries = st.store.prestart_summaries()
    base, cap = st.prestart_backoff
    out: dict = {}
    for r in reservations.values():
        c = courses.get(r.course)
        if c is None:
            continue
        w = Window.of(r, c.prestart_lead, c.prestart_grace)
        if w.phase(now) in ("waiting", "after"):
            continue
        group = r.group or c.group
        entries = records.get(r.id, {})
        members = (await group_members(st.api, [group]))[group]
        servers = await _servers(st, set(members) | set(entries))
        failures = {}
        for u in vanished(entries, servers):
            failures[u] = await spawn_failure(st.api, u)
        plan = plan_prestart(now, r, w, sorted(members), c.participants, servers, entries, failures, base, cap)
        after = dict(plan.entries)
        answers = await _bounded(_start(st, u, r.profile) for u in plan.start)
        for u, (code, msg) in zip(plan.start, answers):
            after[u] = after_start(after.get(u), u, w, code, msg, now, base, cap)
            if code not in (201, 202):
                log.warning("pre-start of %s's server for %s failed (attempt %d): %s", u, r.course,
                            after[u].attempts, after[u].message)
        stops = await _bounded(_stop(st, u) for u in plan.stop)
        for u, (code, msg) in zip(plan.stop, stops):
            after[u] = after_stop(after[u], code, msg)
        await _bounded(_report_activity(st, u, now) for u in plan.keep_alive)
        final = replace(plan, entries=after)
        rec = summary(final, w, now, c.prestart_lead, c.prestart_grace)
        st.store.put_prestart(r.id, after, rec, outcomes(entries, after))
        prev = before_summaries.get(r.id) or {}
        if plan.start or plan.stop:
            log.info("pre-start for %s (reservation %s, %d seats of %s from %s): starting %s; stopping %s", r.course,
                     r.id, r.seats, r.profile, r.start.isoformat(), ", ".join(plan.start) or "none",
                     ", ".join(plan.stop) or "none")
        if plan.over_seats and prev.get("over_seats") != list(plan.over_seats):
            log.warning("pre-start for %s: %d participants for %d seats; not pre-started: %s", r.course,
                        len(plan.over_seats) + r.seats, r.seats, ", ".join(plan.over_seats))
        out[r.id] = rec
    for rid, entries in records.items():
        if rid in reservations:
            continue
        servers = await _servers(st, entries)
        after = {u: e2 for u, e in entries.items() if (e2 := reconcile(e, servers.get(u, Server()))) is not None}
        stop = orphan_stops(now, after, servers)
        for u, (code, msg) in zip(stop, await _bounded(_stop(st, u) for u in stop)):
            after[u] = after_stop(after[u], code, msg, "the reservation was deleted")
        if stop:
            log.info("pre-start: reservation %s is gone; stopped %s", rid, ", ".join(stop))
        # kept: a stop the hub refused, and starts still pending before the window (stopped once ready)
        left = {u: e for u, e in after.items()
                if (u in stop and e.status != STOPPED) or (e.status == STARTING and e.start and now < parse_when(e.start))}
        st.store.put_prestart(rid, left, None, outcomes(entries, after))
    return out
