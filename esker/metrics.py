"""Esker's Prometheus metrics, in prometheus_client's default REGISTRY.

JupyterHub serves that registry at ``/hub/metrics`` (behind its own auth: a token with the ``read:metrics``
scope, unless ``JupyterHub.authenticate_prometheus`` is False), so everything defined here appears next to
JupyterHub's own ``jupyterhub_*`` metrics with no endpoint of our own.

Two kinds of figures:

* **Events** the spawner reports through the small functions below (``spawn_started``,
  ``spawn_finished``, ``spawn_refused``, ``server_running``, ``server_stopped``, ``gpu_assigned``,
  ``gpu_released``, ``scratch_measured``, ``scratch_cleared``, ``s3_provisioning_failed``). They never
  raise: a metrics bug must not fail a spawn.
* **State read at scrape time** by collectors that ``install()`` registers once per hub process: GPU
  assignments from the allocation ledger (so they are right after a hub restart) joined with NVML
  utilisation, running servers per profile, the participants' servers the esker-courses service pre-started
  (from its records in the course store, which that service writes: it is another process, and the store is
  what both share, as the seat check at spawn reads it), and the Spark servers' own masters' ``/json/``
  (fetched in a background thread with a short timeout and cached, so a scrape never waits on Spark).

Label values are bounded: profiles are the catalog's slugs (anything else is reported as ``other``, so a
forged spawn request cannot create series), users are the hub's users.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from typing import Callable, Iterable

from esker import resources
from esker.runtime import default_state_dir, get_runtime
from esker.courses.prestart import FAILED, RUNNING, STARTING
from esker.functions import stats as fn_stats
from esker.functions.roles import SNAPSHOT as FN_SNAPSHOT
from esker.spark.cluster import master_status
from esker.state.coursestore import CourseStore
from esker.core.gpus import DeviceUsage, availability
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("esker.metrics")

# Why a spawn failed. Kept small on purpose: dashboards and alerts group by it.
REASONS = ("options", "no_gpu", "environment", "storage", "timeout", "error")
OUTCOMES = ("success", "failure")
# Spawns take from ~2 s (a warm minimal environment) to minutes (first build of an environment).
SPAWN_BUCKETS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, float("inf"))

SPAWN_DURATION = Histogram(
    "esker_spawn_duration_seconds",
    "Seconds from the start of a spawn to the server answering (success) or the spawn giving up (failure), "
    "per profile. Refusals before anything started (bad options) are not observed here, only counted in "
    "esker_spawn_failures_total.",
    ["profile", "outcome"],
    buckets=SPAWN_BUCKETS,
)
SPAWN_FAILURES = Counter(
    "esker_spawn_failures",
    "Spawns refused or failed, per profile and reason: options (a request the catalog refuses), no_gpu "
    "(no free GPU), environment (building the profile's environment failed), storage (object storage "
    "required and unavailable), timeout, error (anything else).",
    ["profile", "reason"],
)
SPAWNS_IN_PROGRESS = Gauge(
    "esker_spawns_in_progress",
    "Spawns started and not finished yet, per profile.",
    ["profile"],
)
SCRATCH_USED = Gauge(
    "esker_scratch_used_bytes",
    "Bytes a user's scratch directory occupies on disk, at the spawner's last measurement "
    "(every EskerLocalSpawner.scratch_check_interval seconds while the server runs).",
    ["user"],
)
S3_ERRORS = Counter(
    "esker_s3_provisioning_errors",
    "Times preparing a user's object storage (RGW user, keys, bucket) failed during a spawn.",
)
RESERVATIONS = Gauge(
    "esker_reservations",
    "Reservations of seats or GPUs (workshops, courses). Not implemented yet (reservations are a separate "
    "issue): always 0 until they are.",
)
SEATS_IN_USE = Gauge(
    "esker_seats_in_use",
    "Reserved seats currently taken by a running server. Not implemented yet (reservations are a separate "
    "issue): always 0 until they are.",
)
RESERVATIONS.set(0)
SEATS_IN_USE.set(0)

_lock = threading.Lock()
_known_profiles: set[str] = set()
_live_servers: dict[str, str] = {}  # "user/server" -> profile
_gpu_holders: dict[str, tuple[str, ...]] = {}  # "user/server" -> devices, as reported by the spawner
_gpu_pods: dict[str, tuple[str, str]] = {}  # "user/server" -> (namespace, pod) of a Kubernetes server with GPUs
_gpu_idle: dict[str, float] = {}  # "user/server" -> seconds its GPUs have been idle, at its last poll
GPU_STOPS = Counter(
    "esker_gpu_servers_stopped",
    "Servers the GPU policy stopped, by reason: idle (their GPUs idle for the policy's idle_timeout) or "
    "max_runtime (they ran for the policy's max_runtime).",
    ["reason"],
)
for _reason in ("idle", "max_runtime"):
    GPU_STOPS.labels(_reason)
_spark_clusters: dict[str, tuple[int, str]] = {}  # "user/server" -> (master UI port, UI key)
_SAFE_LABEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def profile_label(profile: str | None) -> str:
    """The catalog slug, or ``other`` for anything the catalog does not know (bounded cardinality)."""
    p = (profile or "").strip()
    if _known_profiles:
        return p if p in _known_profiles else "other"
    return p if _SAFE_LABEL.match(p) else "other"


def _safe(fn):
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except Exception:  # noqa: BLE001 - metrics must never break a spawn
            log.exception("metrics: %s failed", fn.__name__)
            return None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


# -- events the spawner reports ---------------------------------------------------------------------
@_safe
def spawn_started(profile: str) -> float:
    """A spawn began; returns its start time (``time.monotonic()``) for ``spawn_finished``."""
    SPAWNS_IN_PROGRESS.labels(profile_label(profile)).inc()
    return time.monotonic()


@_safe
def spawn_finished(profile: str, outcome: str, seconds: float, reason: str | None = None) -> None:
    """A spawn ended: ``outcome`` is success or failure; a failure has a ``reason`` (see REASONS)."""
    p = profile_label(profile)
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
    g = SPAWNS_IN_PROGRESS.labels(p)
    g.set(max(0.0, g._value.get() - 1))  # never below 0, even for a spawn started before a restart
    SPAWN_DURATION.labels(p, outcome).observe(max(0.0, float(seconds)))
    if outcome == "failure":
        SPAWN_FAILURES.labels(p, reason if reason in REASONS else "error").inc()


@_safe
def spawn_refused(profile: str, reason: str) -> None:
    """A spawn refused before it started (e.g. options the catalog rejects): counted, not timed."""
    SPAWN_FAILURES.labels(profile_label(profile), reason if reason in REASONS else "error").inc()


def failure_reason(exc: BaseException) -> str:
    """Map an exception from a spawn to one of REASONS."""
    from tornado import web

    name = type(exc).__name__
    msg = str(getattr(exc, "log_message", None) or exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, asyncio.CancelledError)):
        return "timeout"  # JupyterHub cancels start() when Spawner.start_timeout passes
    if name == "NoCapacity" or "GPU" in msg and ("free" in msg or "cannot start" in msg):
        return "no_gpu"
    if name == "OptionError":
        return "options"
    if name.startswith("Storage") or "bject storage" in msg:
        return "storage"
    if isinstance(exc, web.HTTPError) and 400 <= exc.status_code < 500 and exc.status_code != 408:
        return "options"
    if "environment" in msg.lower() or "requirements" in msg or "lock file" in msg:
        return "environment"  # EnvironmentBuilder: "Creating the X environment failed", "... from requirements.lock"
    return "error"


def watch_ready(spawner, profile: str, started: float, key: str | None = None, poll: float = 0.25) -> "asyncio.Task":
    """After ``Spawner.start()`` returns, JupyterHub still waits for the server to answer over HTTP.

    This task waits for that too (``spawner.pending`` goes from 'spawn' to nothing) and then records the
    spawn's outcome: success when the server is ready, else failure (timeout when it took at least
    ``Spawner.http_timeout``). With ``key`` ("user/server") a ready server is counted as running."""

    async def wait():
        try:
            # _spawn_pending is set by JupyterHub before start() and cleared when the server answers or gives up
            while getattr(spawner, "_spawn_pending", False) or getattr(spawner, "_start_pending", False):
                await asyncio.sleep(poll)
            seconds = time.monotonic() - started
            if spawner.ready:
                spawn_finished(profile, "success", seconds)
                if key:
                    server_running(key, profile)
            else:
                timeout = getattr(spawner, "http_timeout", 0) or 0
                spawn_finished(profile, "failure", seconds,
                               "timeout" if timeout and seconds >= timeout else "error")
        except Exception:  # noqa: BLE001
            log.exception("metrics: watching a spawn failed")

    return asyncio.ensure_future(wait())


@_safe
def server_running(key: str, profile: str) -> None:
    """The server ``user/name`` runs ``profile`` (idempotent: call it on every good poll)."""
    with _lock:
        _live_servers[key] = profile_label(profile)


@_safe
def server_stopped(key: str) -> None:
    """The server ``user/name`` is gone (idempotent)."""
    with _lock:
        _live_servers.pop(key, None)


@_safe
def gpu_assigned(owner: str, devices: Iterable[str]) -> None:
    """``owner`` ("user/server") now holds ``devices``. The ledger is read at scrape time as well (it survives hub
    restarts); this makes an assignment visible even where no ledger is reachable."""
    with _lock:
        _gpu_holders[owner] = tuple(str(d) for d in devices)


@_safe
def gpu_pod(owner: str, namespace: str, pod: str) -> None:
    """A Kubernetes server with GPUs runs as ``pod``: the DCGM exporter's series for that pod are its GPUs."""
    with _lock:
        _gpu_pods[owner] = (namespace, pod)


@_safe
def gpu_released(owner: str) -> None:
    with _lock:
        _gpu_holders.pop(owner, None)
        _gpu_pods.pop(owner, None)
        _gpu_idle.pop(owner, None)


@_safe
def gpu_idle(owner: str, seconds: float) -> None:
    """How long all of ``owner``'s GPUs have been idle, at its last poll (0: busy or unknown)."""
    with _lock:
        _gpu_idle[owner] = float(seconds)


@_safe
def gpu_server_stopped(reason: str) -> None:
    GPU_STOPS.labels(reason if reason in ("idle", "max_runtime") else "idle").inc()


@_safe
@_safe
def spark_cluster_started(owner: str, master_ui_port: int, ui_key: str) -> None:
    with _lock:
        _spark_clusters[owner] = (master_ui_port, ui_key)


@_safe
def spark_cluster_stopped(owner: str) -> None:
    with _lock:
        _spark_clusters.pop(owner, None)


def scratch_measured(user: str, used_bytes: int) -> None:
    SCRATCH_USED.labels(user).set(int(used_bytes))


@_safe
def scratch_cleared(user: str) -> None:
    """The user's server stopped: drop the series (their scratch is no longer measured)."""
    try:
        SCRATCH_USED.remove(user)
    except KeyError:
        pass


@_safe
def s3_provisioning_failed() -> None:
    S3_ERRORS.inc()


# -- state read at scrape time ----------------------------------------------------------------------
def _user_of(owner: str) -> str:
    return owner.split("/", 1)[0]


class ServersCollector(Collector):
    """esker_servers_running{profile}: servers the spawner saw running, every catalog profile listed."""

    def collect(self):
        g = GaugeMetricFamily("esker_servers_running", "User servers running, per profile.", labels=["profile"])
        with _lock:
            counts = {p: 0 for p in _known_profiles}
            for p in _live_servers.values():
                counts[p] = counts.get(p, 0) + 1
        for p, n in sorted(counts.items()):
            g.add_metric([p], n)
        yield g


PRESTART_OUTCOMES = ("started", "failed", "stopped")
PRESTART_STATES = (RUNNING, STARTING, FAILED)


class PrestartCollector(Collector):
    """The esker-courses service's pre-starts, read from the course store at scrape time:
    esker_prestart_total{outcome}, esker_prestart_servers{status}, esker_prestart_over_seats."""

    def __init__(self, store_path: Callable[[], str]):
        self._path = store_path

    def read(self) -> tuple[dict, dict, int]:
        totals = {o: 0 for o in PRESTART_OUTCOMES}
        states = {s: 0 for s in PRESTART_STATES}
        over = 0
        try:
            path = self._path()
            if not os.path.exists(path):  # no course store yet: nothing pre-started (and none created here)
                return totals, states, over
            store = CourseStore(path)
            live = {r.id for r in store.reservations()}
            for o, n in store.prestart_totals().items():
                if o in totals:
                    totals[o] = n
            for rid, entries in store.prestart_entries().items():
                if rid in live:
                    for e in entries.values():
                        if e.status in states:
                            states[e.status] += 1
            over = sum(len(s.get("over_seats") or ()) for rid, s in store.prestart_summaries().items()
                       if rid in live and s.get("phase") == "lead")
        except Exception as e:  # noqa: BLE001 - a scrape never fails on the course store
            log.warning("metrics: cannot read the course store's pre-starts: %s", e)
        return totals, states, over

    def collect(self):
        totals, states, over = self.read()
        c = CounterMetricFamily("esker_prestart", "Participants' servers the esker-courses service pre-started "
                                "before a reservation's window, per outcome: started (the server became ready), "
                                "failed (a start the hub refused or that failed; retried with a backoff), stopped "
                                "(the participant left the course, or the reservation was deleted).",
                                labels=["outcome"])
        for o in PRESTART_OUTCOMES:
            c.add_metric([o], totals[o])
        yield c
        g = GaugeMetricFamily("esker_prestart_servers", "Participants of current reservations by pre-start status: "
                              "running (pre-started and ready), starting, failed (waiting for the next try).",
                              labels=["status"])
        for s_ in PRESTART_STATES:
            g.add_metric([s_], states[s_])
        yield g
        yield GaugeMetricFamily("esker_prestart_over_seats", "Participants of reservations in their lead time who "
                                "are not pre-started because the reservation's seats are taken.", value=over)


class FunctionsCollector(Collector):
    """Functions' counters (docs/functions.md) from the esker-functions service's snapshot: per function and
    version calls, errors, in-flight and the latency histogram (the function servers' own), and cold starts
    (count and seconds, the activator's)."""

    def __init__(self, path: Callable[[], str]):
        self._path = path

    def collect(self):
        data = fn_stats.read(self._path())
        calls = CounterMetricFamily("esker_function_calls", "Calls answered by a function, per version.",
                                    labels=["function", "version"])
        errors = CounterMetricFamily("esker_function_errors", "Calls not answered 200 (timeouts included).",
                                     labels=["function", "version"])
        flight = GaugeMetricFamily("esker_function_in_flight", "Calls running now.", labels=["function", "version"])
        lat = HistogramMetricFamily("esker_function_latency_seconds", "Call latency in the function server.",
                                    labels=["function", "version"])
        cold = CounterMetricFamily("esker_function_cold_starts", "Calls that started a stopped function.",
                                   labels=["function"])
        cold_s = CounterMetricFamily("esker_function_cold_start_seconds", "Seconds calls waited for starts.",
                                     labels=["function"])
        for key, f in data.items():
            for vid, v in (f.get("versions") or {}).items():
                calls.add_metric([key, vid], v.get("calls", 0))
                errors.add_metric([key, vid], v.get("errors", 0))
                flight.add_metric([key, vid], v.get("in_flight", 0))
                buckets = sorted((v.get("latency_buckets") or {}).items(),
                                 key=lambda kv: float("inf") if kv[0] == "+Inf" else float(kv[0]))
                if buckets:
                    lat.add_metric([key, vid], buckets, v.get("latency_sum", 0.0))
            cold.add_metric([key], f.get("cold_starts", 0))
            cold_s.add_metric([key], f.get("cold_start_seconds", 0.0))
        yield from (calls, errors, flight, lat, cold, cold_s)


def _owner_labels(owner: str) -> tuple[str, str]:
    user, _, server = owner.partition("/")
    return user, server


class GpuCollector(Collector):
    """GPUs per user and server: assignments (the ledger, which survives restarts, and the spawners' reports), each
    device's use (NVML on one machine; the DCGM exporter's series of the server's pod on Kubernetes), how long
    each server's GPUs have been idle, and the devices free per type (embedded mode)."""

    def __init__(self, ledger_getter: Callable[[], object | None], usage: Callable[[], dict] | None = None,
                 gpus: Callable[[], list] | None = None, pod_usage: Callable[[str, str], list] | None = None):
        self._ledger = ledger_getter
        self._usage = usage  # () -> {device id: DeviceUsage}
        self._gpus = gpus  # () -> the hub's Gpu list (types, for the labels and the free counts)
        self._pod_usage = pod_usage  # (namespace, pod) -> [DeviceUsage] (Kubernetes)

    def assignments(self) -> set[tuple[str, str]]:
        """(owner "user/server", device id) pairs."""
        pairs: set[tuple[str, str]] = set()
        try:
            ledger = self._ledger()
            if ledger is not None:
                pairs |= {(owner if "/" in owner else owner + "/", item) for item, owner in ledger.held("gpu").items()}
        except Exception as e:  # noqa: BLE001
            log.warning("metrics: cannot read the GPU ledger: %s", e)
        with _lock:
            pairs |= {(o if "/" in o else o + "/", d) for o, devs in _gpu_holders.items() for d in devs}
        return pairs

    def _usage_now(self) -> dict:
        if self._usage is None:
            return {}
        try:
            return self._usage() or {}
        except Exception as e:  # noqa: BLE001
            log.warning("metrics: reading GPU use failed: %s", e)
            return {}

    def collect(self):
        labels = ["user", "server", "device", "type"]
        gpus = list(self._gpus() if self._gpus is not None else ())
        type_of = {g.id: g.type or "" for g in gpus}
        pairs = set(self.assignments())
        # The devices' use: by device id (NVML), or by the server's pod (DCGM exporter, devices named by UUID,
        # which then stand for the in-container numbers the spawner reported).
        used: list[tuple[str, DeviceUsage, str]] = []
        if self._pod_usage is not None:
            with _lock:
                pods = dict(_gpu_pods)
            for owner, (ns, pod) in sorted(pods.items()):
                try:
                    found = list(self._pod_usage(ns, pod) or ())
                except Exception as e:  # noqa: BLE001
                    log.warning("metrics: reading GPU use of %s failed: %s", pod, e)
                    continue
                if found:
                    pairs = {(o, d) for o, d in pairs if o != owner} | {(owner, u.device) for u in found}
                    used += [(owner, u, "") for u in found]
        usage = self._usage_now()
        for owner, dev in sorted(pairs):
            u = usage.get(dev)
            if isinstance(u, dict):  # an older reader's {"utilization", "memory_used"}
                u = DeviceUsage(dev, float(u.get("utilization", 0.0)), int(u.get("memory_used", 0)))
            if u is not None:
                used.append((owner, u, type_of.get(dev, "")))
        pairs = sorted(pairs)
        assigned = GaugeMetricFamily("esker_gpu_assigned", "1 for each GPU device assigned to a user's server.",
                                     labels=labels)
        for owner, dev in pairs:
            assigned.add_metric([*_owner_labels(owner), dev, type_of.get(dev, "")], 1)
        yield assigned
        if used:  # no NVML and no exporter: the series are absent rather than zero
            util = GaugeMetricFamily("esker_gpu_utilization_ratio",
                                     "GPU utilisation (0..1) of devices assigned to a user's server.", labels=labels)
            mem = GaugeMetricFamily("esker_gpu_memory_used_bytes",
                                    "GPU memory used on devices assigned to a user's server.", labels=labels)
            total = GaugeMetricFamily("esker_gpu_memory_total_bytes",
                                      "GPU memory of devices assigned to a user's server.", labels=labels)
            procs = GaugeMetricFamily("esker_gpu_processes", "Compute processes on devices assigned to a user's "
                                      "server (NVML; absent where the source has no process list).", labels=labels)
            for owner, u, t in used:
                key = [*_owner_labels(owner), u.device, t]
                util.add_metric(key, u.utilization / 100.0)
                mem.add_metric(key, u.memory_used)
                if u.memory_total:
                    total.add_metric(key, u.memory_total)
                if u.processes is not None:
                    procs.add_metric(key, u.processes)
            yield from (util, mem, total, procs)
        idle = GaugeMetricFamily("esker_gpu_idle_seconds", "Seconds all of a server's GPUs have been idle "
                                 "(utilisation 0, no compute process), at its last poll; 0 while busy or unknown. "
                                 "The GPU policy stops it at its idle_timeout.", labels=["user", "server"])
        with _lock:
            idles = dict(_gpu_idle)
        for owner, secs in sorted(idles.items()):
            idle.add_metric(list(_owner_labels(owner)), secs)
        yield idle
        if gpus:
            total_f = GaugeMetricFamily("esker_gpus_total", "GPUs this hub hands out, per type ('' untyped).",
                                        labels=["type"])
            free_f = GaugeMetricFamily("esker_gpus_free", "GPUs nobody holds now, per type ('' untyped).",
                                       labels=["type"])
            for t, a in sorted(availability(gpus, {d for _, d in pairs}).items(), key=lambda kv: kv[0] or ""):
                if t is None:
                    continue
                total_f.add_metric([t], a.total)
                free_f.add_metric([t], a.free)
            untyped = [g for g in gpus if not g.type]
            if untyped:
                a = availability(untyped, {d for _, d in pairs})[None]
                total_f.add_metric([""], a.total)
                free_f.add_metric([""], a.free)
            yield total_f
            yield free_f


class SparkCollector(Collector):
    """The Spark servers' own clusters, summed: each master's /json/ (through its UI filter, with the key the
    spawner reported), fetched off the scrape path and cached."""

    def __init__(self, interval: float = 15.0, timeout: float = 2.0,
                 fetch: Callable[[int, str, float], dict] | None = None):
        self.interval = interval
        self.timeout = timeout
        self._fetch = fetch or (lambda port, key, timeout: master_status(port, key, timeout=timeout))
        self._status: dict[str, dict | None] = {}
        self._fetched_at = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        with _lock:
            clusters = dict(_spark_clusters)
        status: dict[str, dict | None] = {}
        for owner, (port, key) in clusters.items():
            try:
                status[owner] = self._fetch(port, key, self.timeout)
            except Exception as e:  # noqa: BLE001 - a down master is a figure, not an error
                log.debug("metrics: Spark master of %s on %s: %s", owner, port, e)
                status[owner] = None
        with self._lock:
            self._status = status
            self._fetched_at = time.monotonic()

    def status(self) -> dict[str, dict | None]:
        """owner -> its master's cached status (None: not answering); refreshed in a background thread when
        older than ``interval``. The first call waits (at most ``timeout`` per master) for figures."""
        with self._lock:
            stale = time.monotonic() - self._fetched_at >= self.interval
            first = self._fetched_at == 0.0
            if stale and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._refresh, name="esker-spark-metrics", daemon=True)
                self._thread.start()
            thread = self._thread
        if first and thread is not None:
            thread.join(self.timeout + 0.5)
        with self._lock:
            return dict(self._status)

    def collect(self):
        st = self.status()
        up = [s for s in st.values() if s and s.get("status", "ALIVE") == "ALIVE"]
        clusters = GaugeMetricFamily("esker_spark_clusters",
                                     "Spark servers' own clusters, per state: up (the master answers ALIVE) "
                                     "or down.", labels=["state"])
        clusters.add_metric(["up"], len(up))
        clusters.add_metric(["down"], len(st) - len(up))
        yield clusters
        workers = GaugeMetricFamily("esker_spark_workers", "Spark workers known to the masters, per state.",
                                    labels=["state"])
        states: dict[str, int] = {"ALIVE": 0, "DEAD": 0}
        for s in up:
            for w in s.get("workers", []):
                states[w.get("state", "UNKNOWN")] = states.get(w.get("state", "UNKNOWN"), 0) + 1
        for state, n in sorted(states.items()):
            workers.add_metric([state.lower()], n)
        yield workers
        for name, key, help_, scale in (
            ("esker_spark_cores", "cores", "Cores of the alive Spark workers.", 1),
            ("esker_spark_cores_used", "coresused", "Cores held by running Spark applications.", 1),
            ("esker_spark_memory_bytes", "memory", "Memory of the alive Spark workers.", 1024 * 1024),
            ("esker_spark_memory_used_bytes", "memoryused", "Memory held by running Spark applications.",
             1024 * 1024),  # the master reports MB
        ):
            g = GaugeMetricFamily(name, help_)
            g.add_metric([], float(sum(s.get(key, 0) for s in up)) * scale)
            yield g
        apps = GaugeMetricFamily("esker_spark_applications",
                                 "Spark applications the masters list as active, per state (running, waiting).",
                                 labels=["state"])
        app_states = {"running": 0, "waiting": 0}
        per_user: dict[str, float] = {}
        done = 0
        for owner, s in st.items():
            if not s:
                continue
            done += len(s.get("completedapps", []))
            for a in s.get("activeapps", []):
                state = str(a.get("state", "RUNNING")).lower()
                app_states[state] = app_states.get(state, 0) + 1
                user = _user_of(owner)
                per_user[user] = per_user.get(user, 0) + float(a.get("cores", 0))
        for state, n in sorted(app_states.items()):
            apps.add_metric([state], n)
        yield apps
        completed = GaugeMetricFamily("esker_spark_applications_completed",
                                      "Completed Spark applications the masters still list.")
        completed.add_metric([], done)
        yield completed
        cores = GaugeMetricFamily("esker_spark_application_cores",
                                  "Cores held by active Spark applications, per hub user.", labels=["user"])
        for user, n in sorted(per_user.items()):
            cores.add_metric([user], n)
        yield cores


# -- installation ---------------------------------------------------------------------------------
_installed: dict[str, Collector] = {}


def _hub_runtime():
    """The runtime jupyterhub_config.py built for this hub process (same arguments, same cached object)."""
    return get_runtime(str(resources.default_config()), default_state_dir())


def install(runtime=None, registry=REGISTRY, spark_interval: float = 15.0) -> dict[str, Collector]:
    """Register the scrape-time collectors once per process and list the catalog's profiles with 0.

    ``runtime`` defaults to the hub's own (from $ESKER_CONFIG and $ESKER_STATE_DIR); idempotent."""
    with _lock:
        if _installed:
            return _installed
    try:
        rt = runtime if runtime is not None else _hub_runtime()
    except Exception as e:  # noqa: BLE001 - no config here: only the event metrics work
        log.warning("metrics: no Esker runtime (%s); collectors not installed", e)
        return {}
    slugs = [p.slug for p in rt.catalog.profiles]
    with _lock:
        _known_profiles.update(slugs)
    for slug in slugs:  # counters and histograms start at 0 so rate() and increase() see the first event
        SPAWNS_IN_PROGRESS.labels(slug)
        for outcome in OUTCOMES:
            SPAWN_DURATION.labels(slug, outcome)
        for reason in REASONS:
            SPAWN_FAILURES.labels(slug, reason)
    collectors: dict[str, Collector] = {
        "servers": ServersCollector(),
        # NVML absent: {} and no usage series. On Kubernetes, no ledger: the spawners' reports and the exporter.
        "gpus": (GpuCollector(lambda: rt.ledger, rt.gpu_usage, lambda: rt.gpus) if rt.mode == "embedded" else
                 GpuCollector(lambda: None, None, None, _dcgm_reader(rt))),
        "prestart": PrestartCollector(lambda: os.path.join(rt.state_dir, "courses.sqlite")),
        "functions": FunctionsCollector(lambda: os.path.join(rt.state_dir, FN_SNAPSHOT)),
    }
    spark = rt.config["spark"]
    if spark["enabled"] and not spark["master_url"]:
        collectors["spark"] = SparkCollector(interval=spark_interval)
    for c in collectors.values():
        registry.register(c)
    with _lock:
        _installed.update(collectors)
    return _installed


def _dcgm_reader(rt):
    """(namespace, pod) -> [DeviceUsage] from the DCGM exporter at gpus.metrics_url (Kubernetes), or None."""
    source = rt.gpu_source()
    return source.usage_for if source is not None else None


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def metric_names(registry=REGISTRY) -> set[str]:
    """Every sample name the registry can expose (histogram _bucket/_sum/_count, counter _total ...),
    including families that have no sample at the moment (no GPU assigned, Spark down)."""
    names = set()
    for fam in registry.collect():
        names.update(fam.name + suffix for suffix in _SUFFIXES.get(fam.type, ("",)))
        names.update(s.name for s in fam.samples)
    return names
