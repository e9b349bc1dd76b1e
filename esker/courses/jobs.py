"""The esker-courses service's periodic jobs: per-course idle culling (with dropping ended reservations) and
pre-warming before reservation windows (embedded: build the reserved profiles' environments and check that
Spark servers can start their clusters; Kubernetes: seat placeholder pods)."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime, timezone

from esker import resources
from esker.courses.context import ServiceState
from esker.courses.hubsync import q
from esker.courses.prewarm import (
    PLACEHOLDER_SELECTOR,
    environments_to_build,
    placeholder_changes,
    prewarm_plan,
    prewarm_record,
)
from esker.spark.cluster import java_home
from esker.system.envs import EnvironmentBuilder

log = logging.getLogger("esker.courses")


def default_builder(state_dir: str):
    """The hub's own EnvironmentBuilder (hub/runtime.py): same folder (ESKER_ENVS_DIR or <state>/envs), same
    images/, same interpreter, so what is built here is what the spawner finds ready."""
    return EnvironmentBuilder(os.environ.get("ESKER_ENVS_DIR") or os.path.join(state_dir, "envs"),
                              resources.images_dir())


def spark_master_check(cfg):
    """A callable answering "up (...)" or "down: why": can a Spark server start its own cluster here (each
    server runs its own master and worker, esker.spark.cluster)? That needs a Java runtime."""
    def check() -> str:
        jh = java_home()
        if not jh or not os.access(os.path.join(jh, "bin", "java"), os.X_OK):
            return "down: no Java runtime (set JAVA_HOME or install a JRE); Spark servers cannot start their cluster"
        return f"up (each Spark server starts its own cluster; Java at {jh})"
    return check


async def cull_once(st: ServiceState, now: datetime | None = None) -> list[str]:
    """Stop participants' servers idle longer than their course's idle_timeout; drop ended reservations."""
    now = now or datetime.now(timezone.utc)
    st.store.expire(now)
    stopped = []
    for c in st.courses().values():
        code, group = await st.api("GET", f"/groups/{q(c.group)}", ok=(200,))
        for u in (group or {}).get("users", ()):
            code, user = await st.api("GET", f"/users/{q(u)}", ok=(200,))
            server = ((user or {}).get("servers") or {}).get("")
            if not server or not server.get("ready") or not server.get("last_activity"):
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
