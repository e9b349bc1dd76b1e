"""The embedded backend: launch plans as local processes (JupyterHub's LocalProcessSpawner).

Policy lives in the catalog and the plan; this class only validates the request before anything is
taken, takes what the plan needs (environment, account, GPUs, scratch, S3 keys) in that order, starts
the process, and gives everything back on stop or on a failed start.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import jinja2
from jupyterhub.spawner import LocalProcessSpawner
from tornado import web
from traitlets import Any, Bool, Integer, Unicode, default

from esker import metrics
from esker.core.catalog import UserInfo
from esker.core.plan import (
    LaunchPlan,
    OptionError,
    Placement,
    Selection,
    build_plan,
    select,
    with_grants,
)
from esker.courses.content import course_grant, prepare_course_content
from esker.courses.reservations import machine_capacity
from esker.courses.seats import SeatRefused, active_promises, check_seat, running_from_db
from esker.state.coursestore import CourseStore, effective_courses
from esker.runtime import Runtime, get_runtime
from esker.spark.cluster import java_home
from esker.state.ledger import NoCapacity
from esker.system import accounts, scratch
from esker.system.cgroups import Group, Limiter

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=True,
)


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


class EskerLocalSpawner(LocalProcessSpawner):
    """Run each server as a local process of its own system account, from the profile's environment."""

    esker_config = Unicode(
        "",
        config=True,
        help="Path of esker.yaml (default: $ESKER_CONFIG, else the shipped esker.yaml).",
    )
    state_dir = Unicode(
        "",
        config=True,
        help="Esker state directory: environments, scratch, secrets, allocation ledger "
        "(default: $ESKER_STATE_DIR, else /var/lib/esker as root).",
    )
    developer_mode = Bool(
        help="Run every server as the hub's own account (automatic when the hub is not root). "
        "There is no isolation between users in this mode.",
    ).tag(config=True)
    scratch_check_interval = Integer(
        60, config=True, help="Seconds between measurements of a running server's scratch usage."
    )

    selection = Any(None, allow_none=True, help="The validated request (set before start).")
    plan = Any(None, allow_none=True, help="The launch plan of the running server.")
    account_name = Unicode("", help="System account the server runs as.")
    gpu_devices = Any((), help="GPU device ids assigned to this server.")
    scratch_dir = Unicode("", help="This server's scratch directory.")
    scratch_used = Integer(0, help="Bytes in scratch at the last measurement.")
    cgroup = Any(None, allow_none=True, help="The control group enforcing this server's CPU/memory limits.")

    @default("developer_mode")
    def _developer_mode_default(self):
        return os.geteuid() != 0

    @default("options_form")
    def _options_form_default(self):
        return self._render_options_form

    @default("options_from_form")
    def _options_from_form_default(self):
        return options_from_form

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return EskerLocalSpawner._validate_user_options

    @default("env_keep")
    def _env_keep_default(self):
        # PATH and friends come from the profile's environment, not from the hub's.
        return ["LANG", "LC_ALL"]

    # -- shared state -------------------------------------------------------------------------------
    @property
    def runtime(self) -> Runtime:
        return get_runtime(self.esker_config, self.state_dir)

    @property
    def owner_key(self) -> str:
        return f"{self.user.name}/{self.name}"

    def user_info(self) -> UserInfo:
        return UserInfo(
            name=self.user.name,
            groups=frozenset(g.name for g in getattr(self.user, "groups", []) or []),
            admin=bool(getattr(self.user, "admin", False)),
        )

    def _account(self) -> accounts.Account:
        cfg = self.runtime.config["users"]
        if self.developer_mode:
            home = os.path.join(self.runtime.state_dir, "homes",
                                accounts.system_username(self.user.name, cfg["system_user_prefix"]))
            os.makedirs(home, mode=0o700, exist_ok=True)
            return accounts.Account(os.environ.get("USER", "esker"), os.getuid(), os.getgid(), home)
        name = accounts.system_username(self.user.name, cfg["system_user_prefix"])
        return accounts.ensure_account(name, cfg["home_root"], comment=f"Esker user {self.user.name}")

    # -- the spawn form -----------------------------------------------------------------------------
    def _render_options_form(self, spawner=None):
        profiles = self.runtime.catalog.profile_list(self.user_info(), gpus_available=len(self.runtime.gpus))
        return _TEMPLATES.get_template("profiles.html").render(profiles=profiles)

    def _validate_user_options(self, user_options):
        """Runs before anything is allocated: a forged request is refused with a 4xx and a reason."""
        try:
            sel = select(self.runtime.catalog, self.user_info(), user_options)
        except OptionError as e:
            metrics.spawn_refused((user_options or {}).get("profile", ""), "options")
            raise web.HTTPError(e.status, str(e)) from None
        if sel.gpus > len(self.runtime.gpus):
            metrics.spawn_refused(sel.profile.slug, "no_gpu")
            raise web.HTTPError(
                409, f"{sel.profile.display_name} with {sel.gpus} GPU(s) cannot start here: "
                f"this hub has {len(self.runtime.gpus)} GPU(s)")
        self.selection = sel
        # Seats promised to a course in its window are kept for its participants.
        rt = self.runtime
        booked = CourseStore.for_state_dir(rt.state_dir).reservations()
        if not active_promises(booked, datetime.now(timezone.utc)):
            return  # nothing promised now: skip the course list, the capacity probe and the server query
        try:
            check_seat(self.user_info(), sel, catalog=rt.catalog,
                       courses=effective_courses(rt.config, rt.state_dir), reservations=booked,
                       capacity=machine_capacity(rt.config, rt.state_dir, len(rt.gpus)),
                       running_by_profile=running_from_db(self.user.db, rt.catalog, exclude=self.user.name))
        except SeatRefused as e:
            raise web.HTTPError(e.status, str(e)) from None

    # -- progress -----------------------------------------------------------------------------------
    def _event(self, progress: int, message: str) -> None:
        self._events.append({"progress": progress, "message": message})
        self.log.info("%s: %s", self._log_name, message)

    async def progress(self):
        sent = 0
        while True:
            events = getattr(self, "_events", [])
            while sent < len(events):
                yield events[sent]
                sent += 1
            if getattr(self, "_prepared", True):
                break
            await asyncio.sleep(0.2)
        async for event in super().progress():
            yield event

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self):
        self._events = []
        self._prepared = False
        rt = self.runtime
        started = None
        try:
            sel: Selection = self.selection or select(rt.catalog, self.user_info(), self.user_options)
            self.selection = sel
            started = metrics.spawn_started(sel.profile.slug)
            self._event(2, f"Preparing {sel.profile.display_name} for {self.user.name}")

            env = await asyncio.to_thread(rt.builder.get, sel.environment)
            if not env.ready():
                self._event(5, f"First start of {sel.environment}: building its environment (once)")
                n = 5
                async for line in rt.builder.ensure(sel.environment):
                    n = min(n + 5, 60)
                    self._event(n, line)

            # useradd, chown and mkdir block: keep them off the hub's event loop.
            acct = await asyncio.to_thread(self._account)
            self.account_name = acct.name
            uid, gid = (None, None) if self.developer_mode else (acct.uid, acct.gid)
            courses = await asyncio.to_thread(effective_courses, rt.config, rt.state_dir)
            for msg in await prepare_course_content(courses, rt.state_dir, sel.user, acct.home, uid, gid):
                self._event(62, msg)

            if sel.gpus:
                try:
                    pool = [g.id for g in rt.gpus]
                    self.gpu_devices = await asyncio.to_thread(rt.ledger.assign, "gpu", self.owner_key, sel.gpus, pool)
                except NoCapacity as e:
                    raise web.HTTPError(503, f"No GPU is free for {sel.profile.display_name}: {e}. "
                                        "Try the CPU-only choice or come back later.") from None
                self._event(65, f"GPU(s) {', '.join(self.gpu_devices)} assigned")

            self.scratch_dir = scratch.scratch_path(rt.scratch_root, acct.name)
            free = await asyncio.to_thread(scratch.free_bytes, rt.scratch_root)
            await asyncio.to_thread(scratch.prepare, self.scratch_dir, None if self.developer_mode else acct.uid,
                                    None if self.developer_mode else acct.gid)
            if free < sel.scratch_size:
                self.log.warning("scratch for %s: %d bytes free under %s, profile allows %d",
                                 self.user.name, free, rt.scratch_root, sel.scratch_size)
            self._event(70, f"Scratch ready at {self.scratch_dir}")

            placement = Placement(scratch_dir=self.scratch_dir, gpu_devices=tuple(self.gpu_devices), python=env.python,
                                  home=acct.home)
            placement = with_grants(placement, courses=course_grant(courses, sel.user))
            placement = await self._prepare_storage(sel, placement)
            self.plan = build_plan(sel, placement, rt.site)
            if not self.developer_mode:
                limiter = rt.extra.setdefault("limiter", Limiter())
                self.cgroup = await asyncio.to_thread(limiter.create, self.owner_key, self.plan.cpu_limit,
                                                      self.plan.mem_limit)
            self.cmd = [os.path.join(env.bin, "jupyterhub-singleuser")]
            self._env_dir = str(env.path)
            self._event(80, f"Starting JupyterLab ({sel.profile.display_name})")
            self._prepared = True
            url = await super().start()
            metrics.watch_ready(self, sel.profile.slug, started, key=self.owner_key)
            if self.gpu_devices:
                metrics.gpu_assigned(self.owner_key, self.gpu_devices)
            return url
        except BaseException as e:
            if started is not None:
                metrics.spawn_finished(sel.profile.slug, "failure", time.monotonic() - started,
                                       metrics.failure_reason(e))
            self._prepared = True
            await self._release()
            raise

    async def _prepare_storage(self, sel: Selection, placement: Placement) -> Placement:
        storage = self.runtime.storage
        if storage is None or sel.profile.storage == "none":
            if sel.profile.storage == "required":
                raise web.HTTPError(503, f"{sel.profile.display_name} needs object storage, "
                                    "which is not configured on this hub")
            return placement
        try:
            grant = await storage.prepare(self.user.name, groups=sel.user.groups, admin=sel.user.admin)
        except Exception as e:
            metrics.s3_provisioning_failed()
            if sel.profile.storage == "required":
                raise web.HTTPError(503, f"Object storage is unavailable, and {sel.profile.display_name} "
                                    f"needs it: {e}") from None
            self.log.warning("starting %s without object storage: %s", self._log_name, e)
            self._event(75, f"Object storage is unavailable ({e}); starting without it")
            return placement
        self._event(75, f"Object storage ready: bucket {grant['bucket']}")
        return with_grants(placement, storage=grant)

    def get_env(self):
        env = super().get_env()
        plan: LaunchPlan | None = self.plan
        if plan is None:
            return env
        env_dir = getattr(self, "_env_dir", "")
        env.update(plan.env)
        env["PATH"] = f"{env_dir}/bin:/usr/local/bin:/usr/bin:/bin"
        env["VIRTUAL_ENV"] = env_dir
        jh = java_home()
        if jh and plan.profile and self.selection is not None and self.selection.profile.spark:
            env["JAVA_HOME"] = jh
        return env

    def user_env(self, env):
        acct = accounts.lookup(self.account_name) if not self.developer_mode else None
        home = acct.home if acct else os.path.join(self.runtime.state_dir, "homes",
                                                   accounts.system_username(self.user.name))
        env["USER"] = self.account_name or self.user.name
        env["HOME"] = home
        env["SHELL"] = "/bin/bash"
        return env

    def make_preexec_fn(self, name):
        if self.developer_mode:
            home = self.user_env({})["HOME"]

            def preexec():
                os.makedirs(home, 0o700, exist_ok=True)
                os.chdir(home)

            return preexec
        acct = accounts.lookup(self.account_name)
        if acct is None:
            raise RuntimeError(f"system account {self.account_name} is missing")
        demote, group = accounts.demote(acct), self.cgroup

        def preexec():
            Limiter.join(group)  # while still root: the server and all it starts stay inside
            demote()

        return preexec

    async def poll(self):
        status = await super().poll()
        if status is None and self.selection is not None:
            metrics.server_running(self.owner_key, self.selection.profile.slug)
        elif status is not None:
            metrics.server_stopped(self.owner_key)
        if status is None and self.scratch_dir:
            now = time.monotonic()
            if now - getattr(self, "_scratch_checked", 0) >= self.scratch_check_interval:
                self._scratch_checked = now
                self.scratch_used = await asyncio.to_thread(scratch.usage, self.scratch_dir)
                metrics.scratch_measured(self.user.name, self.scratch_used)
                limit = self.selection.scratch_size if self.selection else 0
                if limit and self.scratch_used > limit:
                    self.log.warning("%s uses %d bytes of scratch, over its %d", self._log_name,
                                     self.scratch_used, limit)
        return status

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            await self._release()

    async def _release(self):
        """Give back what start took; safe to call twice and after a failed start."""
        rt = self.runtime
        await asyncio.to_thread(rt.ledger.release, "gpu", self.owner_key)
        self.gpu_devices = ()
        metrics.server_stopped(self.owner_key)
        metrics.gpu_released(self.owner_key)
        metrics.scratch_cleared(self.user.name)
        keep = self.selection.scratch_keep if self.selection is not None else True
        if self.scratch_dir and not keep:
            await asyncio.to_thread(scratch.wipe, self.scratch_dir)
        self.scratch_dir = ""
        self.plan = None
        group, self.cgroup = self.cgroup, None
        await asyncio.to_thread(Limiter.remove, group)

    # -- state across hub restarts ------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.pid:
            state.update(account=self.account_name, gpus=list(self.gpu_devices), scratch_dir=self.scratch_dir,
                         options=dict(self.user_options or {}))
            if self.cgroup is not None:
                state["cgroup"] = {"paths": list(self.cgroup.paths), "version": self.cgroup.version}
        return state

    def load_state(self, state):
        super().load_state(state)
        self.account_name = state.get("account", "")
        self.scratch_dir = state.get("scratch_dir", "")
        self.gpu_devices = tuple(state.get("gpus", ()))
        if state.get("cgroup"):
            self.cgroup = Group(tuple(state["cgroup"]["paths"]), state["cgroup"]["version"])
        if state.get("options") is not None:
            try:
                self.selection = select(self.runtime.catalog, self.user_info(), state["options"])
            except OptionError as e:  # the catalog changed under a running server: keep it running
                self.log.warning("%s: stored options no longer valid (%s)", self._log_name, e)
        if self.gpu_devices:
            conflicts = self.runtime.ledger.claim("gpu", self.owner_key, self.gpu_devices)
            if conflicts:
                self.log.error("%s: GPU(s) %s are recorded for another server", self._log_name, conflicts)
