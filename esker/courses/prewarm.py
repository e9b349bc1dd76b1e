"""Pre-warming before a reservation's window: which environments to build (embedded) and which placeholder
pods hold room for the seats (Kubernetes, lowest priority so real servers evict them). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Mapping

from esker.courses.reservations import Reservation

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
        problems.append(f"spark: {spark_status}")
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
