"""EskerSpawner: every spawn policy, written once, for both backends.

The spawn form and its parser, request validation (one ``select()`` per ``user_options``, refused with
its HTTP status before anything is taken), the GPU count check, the seat check, the courses a user
takes, the object-storage policy (required / optional / none), progress messages, spawn metrics and the
release after a failed start all live here. A backend (``EskerLocalSpawner``, ``EskerKubeSpawner``) is
this class in front of its JupyterHub spawner and adds only placement and lifecycle:

- ``esker_services``: its services in order (:mod:`esker.spawner.services`), prepared by
  :meth:`esker_prepare_services` and released in reverse by :meth:`esker_release`;
- :meth:`esker_prepare` places the server: runs the services and sets ``self.plan`` (before it starts);
- :meth:`esker_release` gives back what was taken (after stop, or after a failed start; safe to call twice);
- :meth:`gpu_capacity` says how many GPUs exist (``None``: the cluster's scheduler decides), and
  :meth:`gpu_availability` how many of each type, and how many are free;
- :meth:`esker_gpu_usage` reads the use of the server's GPUs, for the GPU policy (:meth:`esker_gpu_policy_check`,
  run at every poll: servers whose GPUs stay idle, or that run past the policy's maximum, are stopped).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import replace
from typing import Any, Mapping

import jinja2
from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Unicode, default

from esker import metrics, resources
from esker.core.catalog import Catalog, UserInfo
from esker.core.config import EskerConfig
from esker.core import gpus as gpu_policy
from esker.core.functions import FUNCTION_SERVER, function_of_server, split_options  # noqa: F401 (FUNCTION_SERVER: for backends)
from esker.core.plan import OptionError, Placement, Selection, select
from esker.core.services import Service
from esker.courses.model import Course
from esker.courses.reservations import machine_capacity
from esker.courses.seats import SeatRefused, check_seat, may_hold, running_from_db
from esker.functions.broker import BrokerError
from esker.objectstore.errors import StorageError, StorageUnavailable
from esker.runtime import Runtime, default_state_dir, get_runtime
from esker.spawner import readiness
from esker.state.coursestore import CourseStore, effective_courses

STORAGE_WAIT_EVERY = 2.0  # seconds between "Waiting for object storage" progress messages
STORAGE_WAIT_POLL = 0.25  # seconds between looks at whether the gateway is still starting

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=True,
)


# "user/server" -> why the GPU policy stopped it (see EskerSpawner.esker_policy_stop).
_POLICY_STOPS: dict[str, dict] = {}


def options_from_form(form_data: dict) -> dict:
    """KubeSpawner's form convention -> user_options: ``profile`` and ``profile-option-<slug>--<opt>``.

    Only the chosen profile's options are kept; validation happens later, against the catalog.
    """
    def one(v):
        return v[0] if isinstance(v, list) and v else v

    slug = one(form_data.get("profile", ""))
    opts: dict = {"profile": slug} if slug else {}
    prefix = f"profile-option-{slug}--"
    for key, value in form_data.items():
        if key.startswith(prefix):
            opts[key[len(prefix):]] = one(value)
    return opts


def _apply_user_options(spawner: "EskerSpawner", user_options: Any) -> None:
    spawner.esker_validate(user_options)


class EskerSpawner(Spawner):
    """Esker's policy in front of a JupyterHub spawner; backends subclass it with their spawner class."""

    mode = "embedded"  # the backend's mode: which runtime, site and placement it uses

    config_file = Unicode(
        config=True,
        help="Esker configuration file (esker.yaml). Default: $ESKER_CONFIG, else the shipped esker.yaml.",
    )
    state_dir = Unicode(
        config=True,
        help="Esker state directory: courses changed at run time (courses.sqlite), the encrypted S3 keys "
        "(secrets/) and, in embedded mode, environments, scratch and the allocation ledger. Default: "
        "$ESKER_STATE_DIR, else /var/lib/esker as root in embedded mode and /srv/jupyterhub/esker (the hub's "
        "persistent volume in z2jh) on Kubernetes.",
    )

    selection = AnyTrait(None, allow_none=True, help="The validated request (set before start).")
    plan = AnyTrait(None, allow_none=True, help="The launch plan of the running server.")
    esker_no_storage = AnyTrait(None, allow_none=True, help="{reason, since} when this server started without "
                                "the object storage its profile asks for (the gateway was down); kept in the "
                                "server's state for `esker status`, cleared at its next start.")

    @default("config_file")
    def _default_config_file(self):
        return str(resources.default_config())

    @default("state_dir")
    def _default_state_dir(self):
        return default_state_dir(self.mode)

    @default("options_form")
    def _default_options_form(self):
        return self._render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return _apply_user_options

    # -- what the hub knows ---------------------------------------------------------------------------
    @property
    def runtime(self) -> Runtime:
        return get_runtime(self.config_file, self.state_dir, self.mode)

    @property
    def esker_config(self) -> EskerConfig:
        return self.runtime.config

    @property
    def catalog(self) -> Catalog:
        return self.runtime.catalog

    @property
    def esker_user(self) -> UserInfo:
        groups = getattr(self.user, "groups", None) or ()
        return UserInfo(
            name=self.user.name,
            groups=frozenset(getattr(g, "name", g) for g in groups),
            admin=bool(getattr(self.user, "admin", False)),
        )

    @property
    def owner_key(self) -> str:
        return f"{self.user.name}/{self.name}"

    def gpu_capacity(self) -> int | None:
        """GPUs this hub hands out; ``None`` when a scheduler elsewhere decides (Kubernetes)."""
        return None

    def gpu_availability(self) -> Mapping[str | None, gpu_policy.Availability] | None:
        """GPUs per type (None: all types) and how many are free now; ``None`` when a scheduler decides."""
        return None

    def esker_courses(self) -> list[Course]:
        """Every course: esker.yaml's, with the courses service's run-time changes."""
        return effective_courses(self.esker_config, self.state_dir)

    # -- the spawn form -------------------------------------------------------------------------------
    def _render_options_form(self, spawner=None):
        rt = self.runtime
        profiles = self.catalog.profile_list(self.esker_user, gpus_available=self.gpu_availability(),
                                             gpu_types=rt.config["gpus"]["types"], gpu_problem=rt.gpu_problem)
        return _TEMPLATES.get_template("profiles.html").render(profiles=profiles, notice=self._esker_notice())

    def _esker_notice(self) -> str:
        """Why this user's last server was stopped by the GPU policy, while it is recent news (a day)."""
        stop = self.esker_policy_stop
        if not stop or time.time() - stop["at"] > 86400:
            return ""
        at = datetime.fromtimestamp(stop["at"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return f"Your last {stop['profile']} server was stopped at {at} by this hub's GPU policy: {stop['message']}."

    # -- validation: before anything is taken ---------------------------------------------------------
    def esker_select(self, user_options: Any) -> Selection:
        """The validated request, computed once per ``user_options`` (and catalog); a forged or stale one
        is refused with the catalog's 4xx, or 409 when it asks for more GPUs than exist."""
        if user_options is not None and not isinstance(user_options, Mapping):
            metrics.spawn_refused("", "options")
            raise web.HTTPError(400, "user_options must be an object")
        key = (self.name, json.dumps(dict(user_options or {}), sort_keys=True, default=str), id(self.catalog))
        cached = getattr(self, "_esker_selected", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            # Named servers are functions' only (fn-<name>, whose options name the function); the rest of the
            # options are a profile's, checked as any spawn's.
            function, options = split_options(self.name, user_options)
            sel = select(self.catalog, self.esker_user, options)
            if function is not None:
                sel = replace(sel, function=function)
        except OptionError as e:
            metrics.spawn_refused((user_options or {}).get("profile", ""), "options")
            raise web.HTTPError(e.status, str(e)) from None
        avail = self.gpu_availability() if sel.gpus else None
        if avail is not None:
            a = avail.get(sel.gpu_type, gpu_policy.Availability(0, 0))
            if sel.gpus > a.total:
                metrics.spawn_refused(sel.profile.slug, "no_gpu")
                what = gpu_policy.describe(sel.gpu_type, self.esker_config["gpus"]["types"])
                why = f" ({self.runtime.gpu_problem})" if self.runtime.gpu_problem and not a.total else ""
                raise web.HTTPError(409, f"{sel.profile.display_name} with {sel.gpus} {what}(s) cannot start here: "
                                    f"this hub has {a.total} {what}(s), {a.free} free{why}")
        self._esker_selected = (key, sel)
        self.selection = sel
        return sel

    @property
    def esker_function(self) -> str | None:
        """The function this named server runs (``fn-<name>``), or None for a notebook server."""
        return self.selection.function if self.selection is not None else None

    def get_args(self):
        # Spawner.args are jupyterhub-singleuser's; the function server takes everything from its environment.
        return [] if self.esker_function else super().get_args()

    def esker_validate(self, user_options: Any) -> Selection:
        """JupyterHub's ``apply_user_options``: the request, then the seat check."""
        sel = self.esker_select(user_options)
        self.esker_check_seat(sel)
        return sel

    def esker_check_seat(self, sel: Selection) -> None:
        """Seats promised to a course in its window and its pre-start lead are kept for its participants (503
        otherwise)."""
        store = os.path.join(self.state_dir, "courses.sqlite")
        booked = CourseStore(store).reservations() if os.path.exists(store) else []
        if not may_hold(booked, datetime.now(timezone.utc)):
            return  # nothing promised now: skip the course list, the capacity probe and the server query
        rt = self.runtime
        try:
            check_seat(self.esker_user, sel, catalog=rt.catalog, courses=self.esker_courses(), reservations=booked,
                       capacity=machine_capacity(rt.config, rt.state_dir, self.gpu_capacity()),
                       running_by_profile=running_from_db(self.user.db, rt.catalog, exclude=self.user.name))
        except SeatRefused as e:
            raise web.HTTPError(e.status, str(e)) from None

    # -- services -------------------------------------------------------------------------------------
    esker_services: tuple[Service, ...] = ()  # the backend's, in the order they are prepared
    esker_course_list: list[Course] | None = None  # the courses as read for this start (Courses service)

    async def esker_prepare_services(self, sel: Selection, placement: Placement) -> Placement:
        for service in self.esker_services:
            placement = await service.prepare(self, sel, placement)
        return placement

    async def esker_deliver_courses(self, sel: Selection, courses: list[Course], placement: Placement) -> None:
        """Put course content in place before start (embedded: merged into the home); on Kubernetes the
        pod's init containers do it."""

    async def esker_storage_grant(self, sel: Selection) -> Mapping[str, str] | None:
        """The user's S3 identity and bucket, by the profile's policy: ``required`` refuses to start without
        it (503), ``optional`` starts without it and says so (recorded in the server's state, for `esker
        status`), ``none`` never asks. While the gateway is starting (the embedded Ceph at hub start) the spawn
        waits for it, up to ``storage.start_wait`` seconds, with a progress message every couple of seconds."""
        self.esker_no_storage = None
        if sel.profile.storage == "none":
            return None
        storage = self.runtime.storage
        if storage is None:
            if sel.profile.storage == "required":
                raise web.HTTPError(503, f"{sel.profile.display_name} needs object storage, "
                                    "which is not configured on this hub")
            return None
        try:
            grant = await self._esker_storage_prepare(storage, sel)
        except Exception as e:
            metrics.s3_provisioning_failed()
            if sel.profile.storage == "required":
                raise web.HTTPError(503, f"Object storage is unavailable, and {sel.profile.display_name} "
                                    f"needs it: {e}") from None
            self.log.warning("starting %s without object storage: %s", self._log_name, e)
            self.esker_event(75, f"Object storage is unavailable ({e}); starting without it "
                             "(it is set up again at the next start)")
            self.esker_no_storage = {"reason": str(e), "since": datetime.now(timezone.utc).isoformat()}
            return None
        self.esker_event(75, f"Object storage ready: bucket {grant['bucket']}")
        return grant

    async def _esker_storage_prepare(self, storage, sel: Selection) -> Mapping[str, str]:
        """``storage.prepare``, waiting first while the gateway says it is starting (bounded by its start_wait;
        a progress message every ``STORAGE_WAIT_EVERY`` seconds); a gateway that is down fails at once."""
        starting = getattr(storage, "starting", None) or (lambda: None)
        budget = float(getattr(storage, "start_wait", 0) or 0)
        t0 = time.monotonic()
        said = -STORAGE_WAIT_EVERY
        while True:
            why = starting() if time.monotonic() - t0 < budget else None
            if why is None:
                try:
                    return await storage.prepare(self.user.name, groups=sel.user.groups, admin=sel.user.admin)
                except Exception as e:
                    waited = time.monotonic() - t0
                    # Ready a moment ago and restarting now (or not answering yet): keep waiting, within budget.
                    why = starting() if waited < budget else None
                    if why is None:
                        if said >= 0:  # it was waited for: say so
                            kind = type(e) if isinstance(e, StorageError) else StorageUnavailable
                            raise kind(f"{e} (after waiting {waited:.0f} s for it to start)") from e
                        raise
            waited = time.monotonic() - t0
            if waited - said >= STORAGE_WAIT_EVERY:
                said = waited
                self.esker_event(72, f"Waiting for object storage, {waited:.0f} s: {why}")
            await asyncio.sleep(STORAGE_WAIT_POLL)

    # -- progress -------------------------------------------------------------------------------------
    def esker_event(self, progress: int, message: str) -> None:
        self._esker_events = [*self._esker_events, {"progress": progress, "message": message}]
        self.log.info("%s: %s", self._log_name, message)

    async def progress(self):
        """Esker's own messages while it prepares, then the backend's (process or pod events)."""
        sent = 0
        while True:
            events = self._esker_events
            while sent < len(events):
                yield events[sent]
                sent += 1
            if self._esker_prepared:
                break
            await asyncio.sleep(0.2)
        async for event in super().progress():
            yield event

    _esker_events: list | tuple = ()  # this start's messages (a new list per message: progress re-reads it)
    _esker_prepared = True

    # -- lifecycle ------------------------------------------------------------------------------------
    async def esker_prepare(self, sel: Selection) -> None:
        """The backend's placement: take what the plan needs and set ``self.plan``."""
        raise NotImplementedError

    async def esker_release(self) -> None:
        """Every service's release, in reverse order, each attempted even when another fails; a backend
        extends it with ``super()`` for what it placed itself."""
        for service in reversed(self.esker_services):
            try:
                await service.release(self)
            except Exception:
                self.log.exception("%s: releasing %s failed", self._log_name, service.name)
        metrics.server_stopped(self.owner_key)

    async def start(self):
        self._esker_events, self._esker_prepared = [], False
        started = sel = None
        try:
            sel = self.esker_select(self.user_options)
            started = metrics.spawn_started(sel.profile.slug)
            notice = self._esker_notice()
            if notice:
                self.esker_event(1, notice)
                self.esker_policy_stop = None  # said once
            self.esker_event(2, f"Preparing {sel.profile.display_name} for {self.user.name}")
            url = await self._esker_start_within(sel, self._esker_start(sel))
            metrics.watch_ready(self, sel.profile.slug, started, key=self.owner_key)
            return url
        except BaseException as e:
            self._esker_prepared = True
            if started is not None:  # refused requests took nothing
                metrics.spawn_finished(sel.profile.slug, "failure", time.monotonic() - started,
                                       metrics.failure_reason(e))
                await self.esker_release()
            if isinstance(e, Exception) and not isinstance(e, web.HTTPError):
                # JupyterHub shows an HTTPError's message on the spawn page and in the API's answer; any other
                # error there reads "Internal Server Error" or "Spawn failed: " with nothing after it.
                what = sel.profile.display_name if sel is not None else "The server"
                raise web.HTTPError(500, f"{what} could not start: {e or type(e).__name__}") from e
            raise

    async def _esker_start(self, sel: Selection):
        t0 = time.monotonic()
        await self.esker_prepare(sel)
        self._esker_prepared = True
        url = await super().start()
        await self.esker_started()
        await self._esker_wait_answering(url, t0)
        return url

    async def _esker_wait_answering(self, url, t0: float) -> None:
        """Return the moment the server answers, so the hub's first readiness check succeeds (readiness.py says
        why); within what is left of start_timeout, after which JupyterHub's own polling takes over."""
        if self.internal_ssl or self.server is None:
            return  # the hub's client certificates are JupyterHub's business
        if isinstance(url, tuple):
            url = f"http://{url[0] or '127.0.0.1'}:{url[1]}"
        left = (self.start_timeout - 2 - (time.monotonic() - t0)) if self.start_timeout else self.http_timeout
        budget = min(left, self.http_timeout)
        if budget <= 0:
            return
        if not await readiness.wait_answering(f"{url.rstrip('/')}{self.server.base_url}api", budget,
                                              self.esker_exit_status) and budget >= self.http_timeout:
            # JupyterHub's own wait would end the same way, http_timeout later again.
            raise readiness.NotAnswering(f"JupyterLab started but didn't respond within {self.http_timeout:g} s")

    async def esker_exit_status(self) -> int | None:
        """The server's exit status if its process (or pod) has ended, else None; a backend that can tell
        cheaply says so, and a start that ends early then fails at once with the reason."""
        return None

    async def esker_started(self) -> None:
        """After the backend started the server, before it counts as started: wait for what was started beside
        it (the embedded backend's own Spark cluster). A failure here fails the spawn and releases it all."""

    async def _esker_start_within(self, sel: Selection, work):
        """JupyterHub's start_timeout ends a slow start with an empty TimeoutError ("Spawn failed: "); give up
        a moment earlier and say what was slow instead."""
        budget = self.start_timeout
        if not budget:
            return await work
        try:
            return await asyncio.wait_for(work, max(budget - 1, budget * 0.9))
        except asyncio.TimeoutError:
            last = self._esker_events[-1]["message"] if self._esker_events else "preparing"
            raise asyncio.TimeoutError(f"{sel.profile.display_name} did not start within {budget:g} s "
                                       f"(the last step was: {last})") from None

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            await self.esker_release()

    async def delete_forever(self):
        """A function's named server removed for good (`esker fn delete`): its tasks leave the broker too."""
        await super().delete_forever()
        admin, function = self.runtime.broker, function_of_server(self.name)
        if admin is not None and function is not None:
            try:
                n = await asyncio.to_thread(admin.forget, self.user.name, function)
                self.log.info("%s: deleted %d task key(s) of function %s from the broker", self._log_name, n, function)
            except BrokerError as e:  # they expire on their own (the result TTL)
                self.log.warning("%s: %s", self._log_name, e)

    # -- state across hub restarts (a backend extends these with super()) -------------------------------
    def get_state(self):
        state = super().get_state()
        if self.esker_no_storage:
            state["no_storage"] = dict(self.esker_no_storage)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.esker_no_storage = state.get("no_storage") or None

    def clear_state(self):
        super().clear_state()
        self.esker_no_storage = None

    def esker_holds(self) -> bool:
        """Whether this server holds something :meth:`esker_release` gives back."""
        return self.plan is not None

    # -- the GPU policy -------------------------------------------------------------------------------
    @property
    def esker_policy_stop(self) -> dict | None:
        """{at, reason, message, profile} when the GPU policy stopped this server last: shown on the next spawn page
        and in its progress. Kept by the hub process, not the spawner object, which JupyterHub may make anew."""
        return _POLICY_STOPS.get(self.owner_key)

    @esker_policy_stop.setter
    def esker_policy_stop(self, value: dict | None) -> None:
        if value is None:
            _POLICY_STOPS.pop(self.owner_key, None)
        else:
            _POLICY_STOPS[self.owner_key] = value

    _esker_gpu_idle_from: float | None = None  # wall clock; from the first idle sample (a hub restart starts over)

    def esker_gpus_held(self) -> int:
        """How many GPUs this server holds (the backend knows)."""
        if self.plan is not None:
            return self.plan.gpus
        return self.selection.gpus if self.selection is not None else 0  # after a hub restart, from the stored options

    async def esker_gpu_usage(self) -> list[gpu_policy.DeviceUsage] | None:
        """The use of this server's GPUs now; None when nothing reads it (no NVML, no exporter)."""
        return None

    def esker_gpu_policy(self) -> gpu_policy.GpuPolicy:
        p = self.selection.profile if self.selection is not None else None
        return gpu_policy.GpuPolicy.of(self.esker_config["gpus"]["policy"],
                                       {"idle_timeout": p.gpu_idle_timeout, "max_runtime": p.gpu_max_runtime} if p else None)

    async def esker_gpu_policy_check(self) -> gpu_policy.Verdict | None:
        """One look at the server's GPUs (at each poll, while it runs): the verdict when the policy says stop."""
        held = self.esker_gpus_held()
        policy = self.esker_gpu_policy()
        if not held or not policy.active:
            self._esker_gpu_idle_from = None
            return None
        now = time.time()
        usage = await self.esker_gpu_usage() if policy.idle_timeout else None
        self._esker_gpu_idle_from = gpu_policy.idle_since(self._esker_gpu_idle_from, usage, held, now)
        metrics.gpu_idle(self.owner_key, now - self._esker_gpu_idle_from if self._esker_gpu_idle_from else 0.0)
        return gpu_policy.judge(policy, started=self.esker_started_at(), idle_from=self._esker_gpu_idle_from, now=now)

    def esker_started_at(self) -> float | None:
        """When this server's start began (JupyterHub's record, which outlives a hub restart), as a timestamp."""
        started = getattr(self.orm_spawner, "started", None) if self.orm_spawner is not None else None
        return started.replace(tzinfo=timezone.utc).timestamp() if started is not None else None

    async def _esker_enforce_gpu_policy(self) -> int | None:
        """Stop the server when the GPU policy says so; its exit status then (the hub cleans up as for a server
        that ended), else None."""
        try:
            verdict = await self.esker_gpu_policy_check()
        except Exception:  # a failing reader must not stop anyone
            self.log.exception("%s: checking the GPU policy failed", self._log_name)
            return None
        if verdict is None:
            return None
        profile = self.selection.profile.display_name if self.selection is not None else "notebook"
        self.log.warning("%s: stopped by the GPU policy (%s): %s", self._log_name, verdict.reason, verdict.message)
        self.esker_policy_stop = {"at": time.time(), "reason": verdict.reason, "message": verdict.message,
                                  "profile": profile}
        metrics.gpu_server_stopped(verdict.reason)
        self._esker_gpu_idle_from = None
        await self.stop()
        status = await super().poll()
        return status if status is not None else 0

    async def poll(self):
        status = await super().poll()
        if status is None and self.selection is not None and not getattr(self, "_spawn_pending", False):
            status = await self._esker_enforce_gpu_policy()
        if status is None and self.selection is not None:
            metrics.server_running(self.owner_key, self.selection.profile.slug)
        elif status is not None:
            metrics.server_stopped(self.owner_key)
            starting = getattr(self, "_spawn_pending", False) and not getattr(self, "_waiting_for_response", False)
            if self.esker_holds() and not starting:
                # The server ended on its own; JupyterHub calls stop() only on a live one, so give back here.
                await self.esker_release()
        return status
