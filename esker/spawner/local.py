"""The embedded backend: launch plans as local processes (JupyterHub's LocalProcessSpawner).

Policy lives in :class:`esker.spawner.base.EskerSpawner`; this class only places and runs: it takes what
the plan needs (environment, account, course content, GPUs, scratch, control group) in that order,
starts the process as the user's account, and gives everything back on stop or on a failed start.
"""

from __future__ import annotations

import asyncio
import os
import time

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Any, Bool, Integer, Unicode, default

from esker import metrics
from esker.core import gpus as gpu_policy
from esker.core.plan import LaunchPlan, OptionError, Placement, Selection, build_plan, select
from esker.courses.content import prepare_course_content
from esker.spark import cluster as spark_cluster
from esker.spark.cluster import java_home
from esker.spawner.base import FUNCTION_SERVER, EskerSpawner
from esker.spawner.embedded import account_name, developer_home, embedded_placement
from esker.spawner.services import (
    BucketMounts,
    Courses,
    FunctionBroker,
    LocalGpus,
    LocalScratch,
    ObjectStorage,
    OwnSpark,
)
from esker.system import accounts, scratch
from esker.system.ports import port_open
from esker.system.cgroups import Group, Limiter
from esker.system.devices import DeviceRuleError


class EskerLocalSpawner(EskerSpawner, LocalProcessSpawner):
    """Run each server as a local process of its own system account, from the profile's environment."""

    developer_mode = Bool(
        help="Run every server as the hub's own account (automatic when the hub is not root). "
        "There is no isolation between users in this mode.",
    ).tag(config=True)
    scratch_check_interval = Integer(
        60, config=True, help="Seconds between measurements of a running server's scratch usage."
    )

    account_name = Unicode("", help="System account the server runs as.")
    gpu_devices = Any((), help="GPU device ids assigned to this server.")
    scratch_dir = Unicode("", help="This server's scratch directory.")
    scratch_used = Integer(0, help="Bytes in scratch at the last measurement.")
    cgroup = Any(None, allow_none=True, help="The control group enforcing this server's CPU/memory limits.")
    spark_cluster = Any(None, allow_none=True, help="This server's own Spark cluster: ports, UI key, daemon pids.")
    bucket_mounts = Any((), help="This server's bucket mounts: [{path, pid, shared?}] (shared: the read-only dataset's "
                        "one mount that path binds; pid: the s3fs daemon serving it).")
    _spark_abort = False  # set by esker_release while esker_spark_start runs
    spark_start_timeout = Integer(
        60, config=True, help="Seconds a server's own Spark master may take to listen before the spawn fails."
    )

    @default("developer_mode")
    def _developer_mode_default(self):
        return os.geteuid() != 0

    @default("env_keep")
    def _env_keep_default(self):
        # PATH and friends come from the profile's environment, not from the hub's.
        return ["LANG", "LC_ALL"]

    # Prepared in this order, released in the reverse one (esker.spawner.services): Spark's executors read the
    # bucket mounts, so they end first.
    esker_services = (FunctionBroker(), Courses(), LocalGpus(), LocalScratch(), ObjectStorage(), BucketMounts(), OwnSpark())
    esker_ids: tuple = (None, None)  # the account's uid and gid; None in developer mode

    def gpu_capacity(self) -> int:
        return len(self.runtime.gpus)

    def gpu_availability(self):
        rt = self.runtime
        try:
            held = rt.ledger.held("gpu")
        except Exception as e:  # an unreadable ledger: everything counts as taken, the assignment then says why
            self.log.warning("GPU ledger unreadable: %s", e)
            held = {g.id: "?" for g in rt.gpus}
        return gpu_policy.availability(rt.gpus, held)

    def esker_gpus_held(self) -> int:
        return len(self.gpu_devices)

    async def esker_gpu_usage(self):
        usage = await asyncio.to_thread(self.runtime.gpu_usage)
        found = [usage[d] for d in self.gpu_devices if d in usage]
        return found or None

    def _limiter(self) -> Limiter:
        """The hub's one Limiter (made at the first spawn or restored server: it probes the cgroup mounts once)."""
        extra = self.runtime.extra
        if "limiter" not in extra:
            extra["limiter"] = Limiter()
        return extra["limiter"]

    def _gpu_minors(self) -> tuple[int, ...]:
        """The device nodes (/dev/nvidiaN) this server's cgroup allows: its own GPUs' only."""
        by_id = {g.id: g for g in self.runtime.gpus}
        return tuple(sorted(by_id[d].minor for d in self.gpu_devices if d in by_id and by_id[d].minor is not None))

    def _account(self) -> accounts.Account:
        cfg = self.esker_config
        name = account_name(cfg, self.user.name)
        if self.developer_mode:
            home = developer_home(self.state_dir, name)
            os.makedirs(home, mode=0o700, exist_ok=True)
            return accounts.Account(os.environ.get("USER", "esker"), os.getuid(), os.getgid(), home)
        return accounts.ensure_account(name, cfg["users"]["home_root"], comment=f"Esker user {self.user.name}")

    # -- placement ------------------------------------------------------------------------------------
    async def esker_prepare(self, sel: Selection) -> None:
        rt = self.runtime
        env = await asyncio.to_thread(rt.builder.get, sel.environment)
        if not env.ready():
            self.esker_event(5, f"First start of {sel.environment}: building its environment (once)")
            n = 5
            async for line in rt.builder.ensure(sel.environment):
                n = min(n + 5, 60)
                self.esker_event(n, line)

        # useradd, chown and mkdir block: keep them off the hub's event loop.
        acct = await asyncio.to_thread(self._account)
        self.account_name, self._home = acct.name, acct.home
        self.esker_ids = (None, None) if self.developer_mode else (acct.uid, acct.gid)
        placement = embedded_placement(sel, rt.config, rt.state_dir, account=account_name(rt.config, self.user.name),
                                       home=acct.home, gpu_devices=(), python=env.python,
                                       server=self.name)
        placement = await self.esker_prepare_services(sel, placement)
        self.plan = build_plan(sel, placement, rt.site)
        uid, gid = self.esker_ids
        for path, text in self.plan.files.items():  # secrets for the user alone: 0600 files, never argv
            await asyncio.to_thread(scratch.write_private, placement.scratch_dir, path, text, uid, gid)
        if not self.developer_mode:
            limiter = self._limiter()
            # Born with its device rule, before anything joins it: this server's GPUs only (none: no GPU at all).
            self.cgroup = await asyncio.to_thread(limiter.create, self.owner_key, self.plan.cpu_limit,
                                                  self.plan.mem_limit, self._gpu_minors())
        # A function's named server runs the function server from the same environment (docs/functions.md).
        self.cmd = ([os.path.join(env.bin, "python"), "-m", FUNCTION_SERVER] if sel.function
                    else [os.path.join(env.bin, "jupyterhub-singleuser")])
        self._env_dir = str(env.path)
        if self.spark_cluster is not None:  # alongside JupyterLab's start: awaited in esker_started
            self.esker_event(78, f"Starting your own Spark master and worker ({rt.site.spark.cores_per_user} "
                             "core(s)), as you, within your limits")
            self._spark_start = asyncio.ensure_future(self.esker_spark_start(sel, env.python))
        what = f"function {sel.function}" if sel.function else "JupyterLab"
        self.esker_event(80, f"Starting {what} ({sel.profile.display_name})")

    async def esker_spark_start(self, sel: Selection, python: str) -> None:
        """Start the server's own master, as the user in the server's cgroup, then its worker once the master
        listens (a worker that finds no master retries only after 5 to 15 s)."""
        c, s = self.spark_cluster, self.runtime.site.spark
        spec = spark_cluster.ClusterSpec(
            spark_home=spark_cluster.spark_home_of(python), conf_dir=f"{self.scratch_dir}/spark/conf",
            base_dir=f"{self.scratch_dir}/spark", master_port=c["master_port"], master_ui_port=c["master_ui_port"],
            worker_ui_port=c["worker_ui_port"], cores=s.cores_per_user, memory=s.executor_memory)
        # No hub token for the daemons and executors; JUPYTERHUB_API_URL stays, so `esker stop` and the test hubs
        # find them (and what they started) as this hub's even if the hub lost their pids.
        env = {k: v for k, v in self.get_env().items() if "TOKEN" not in k and not k.startswith("JPY_")}
        env = spark_cluster.daemon_env(spec, env)
        pre = self.make_preexec_fn(self.user.name)
        self._spark_abort = False
        pid = await asyncio.to_thread(spark_cluster.launch, spark_cluster.master_command(spec), env, spec,
                                      "master.out", pre)
        c["pids"].append(pid)
        deadline = time.monotonic() + self.spark_start_timeout
        while not await asyncio.to_thread(port_open, spec.master_port):
            if self._spark_abort:  # the spawn failed elsewhere and is being released
                return
            if not spark_cluster.alive(pid) or time.monotonic() > deadline:
                why = "exited" if not spark_cluster.alive(pid) else f"did not listen within {self.spark_start_timeout} s"
                raise RuntimeError(f"your Spark master {why} (log: {spec.base_dir}/logs/master.out)")
            await asyncio.sleep(0.1)
        if self._spark_abort:
            return
        pid = await asyncio.to_thread(spark_cluster.launch, spark_cluster.worker_command(spec), env, spec,
                                      "worker.out", pre)
        c["pids"].append(pid)
        if self._spark_abort:
            return
        metrics.spark_cluster_started(self.owner_key, spec.master_ui_port, c["ui_key"])
        self.esker_event(90, f"Spark ready: your own master at {spec.master_url}, a worker with "
                         f"{spec.cores} core(s) and {spec.memory} for executors")

    async def esker_started(self) -> None:
        task = getattr(self, "_spark_start", None)
        if task is not None:
            # Shielded: a start timeout cancels this wait, never the launch (esker_release ends that one).
            await asyncio.shield(task)
            self._spark_start = None

    async def esker_deliver_courses(self, sel: Selection, courses, placement: Placement) -> None:
        uid, gid = self.esker_ids
        for msg in await prepare_course_content(courses, self.state_dir, sel.user, placement.home, uid, gid):
            self.esker_event(62, msg)

    async def start(self):
        url = await super().start()
        if self.gpu_devices:
            metrics.gpu_assigned(self.owner_key, self.gpu_devices)
        return url

    async def esker_exit_status(self) -> int | None:
        proc = getattr(self, "proc", None)
        return proc.poll() if proc is not None else None

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
        if jh and self.selection is not None and self.selection.profile.spark:
            env["JAVA_HOME"] = jh
        return env

    def get_args(self):
        args = super().get_args()
        if self.developer_mode and os.geteuid() == 0 and not self.esker_function:  # Jupyter Server refuses root
            args.append("--allow-root")
        return args

    def user_env(self, env):
        home = getattr(self, "_home", "")
        if not home:
            acct = accounts.lookup(self.account_name) if not self.developer_mode else None
            home = acct.home if acct else developer_home(self.state_dir, account_name(self.esker_config, self.user.name))
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

    def esker_holds(self) -> bool:
        return (super().esker_holds() or bool(self.gpu_devices) or bool(self.scratch_dir) or self.cgroup is not None
                or self.spark_cluster is not None or bool(self.bucket_mounts))

    async def esker_release(self):
        """Give back what esker_prepare took; safe to call twice and after a failed start."""
        task, self._spark_start = getattr(self, "_spark_start", None), None
        if task is not None and not task.done():
            # Not cancelled: a launch already in its thread would start a daemon nobody records. Told to stop,
            # it returns at its next step, and every pid it started is in spark_cluster for the release.
            self._spark_abort = True
            await asyncio.gather(task, return_exceptions=True)
        await super().esker_release()  # the services: storage, Spark, scratch, GPUs, courses
        self.plan = None
        self._home = ""
        group, self.cgroup = self.cgroup, None
        await asyncio.to_thread(Limiter.remove, group)

    # -- state across hub restarts ------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.pid:
            state.update(account=self.account_name, gpus=list(self.gpu_devices), scratch_dir=self.scratch_dir,
                         options=dict(self.user_options or {}))
            if self.spark_cluster is not None:
                state["spark"] = self.spark_cluster
            if self.bucket_mounts:
                state["mounts"] = list(self.bucket_mounts)
            if self.cgroup is not None:
                state["cgroup"] = self.cgroup.to_state()
        return state

    def load_state(self, state):
        super().load_state(state)
        self.account_name = state.get("account", "")
        self.scratch_dir = state.get("scratch_dir", "")
        self.gpu_devices = tuple(state.get("gpus", ()))
        self.spark_cluster = state.get("spark")
        self.bucket_mounts = list(state.get("mounts", ()))
        if self.spark_cluster:
            metrics.spark_cluster_started(self.owner_key, self.spark_cluster["master_ui_port"],
                                          self.spark_cluster["ui_key"])
        if state.get("cgroup"):
            self.cgroup = Group.from_state(state["cgroup"])
        if state.get("options") is not None:
            try:
                self.selection = select(self.catalog, self.esker_user, state["options"])
            except OptionError as e:  # the catalog changed under a running server: keep it running
                self.log.warning("%s: stored options no longer valid (%s)", self._log_name, e)
        if self.gpu_devices:
            conflicts = self.runtime.ledger.claim("gpu", self.owner_key, self.gpu_devices)
            if conflicts:
                self.log.error("%s: GPU(s) %s are recorded for another server", self._log_name, conflicts)
        if self.cgroup is not None and self.pid:
            # The rule outlives the hub (it is the cgroup's); checked, and put back if it is missing, so a restart
            # never leaves a server with every GPU open.
            limiter = self._limiter()
            try:
                self.cgroup = limiter.restrict_devices(self.cgroup, self._gpu_minors())
            except DeviceRuleError as e:
                self.log.error("%s: its GPU device rule could not be checked: %s", self._log_name, e)
