"""Stopping an embedded hub for certain: `esker stop`, `make stop` and the test and benchmark hubs' teardown.

What is Esker's is found from the state directory only, never by a process's name:

- the hub: ``run/jupyterhub.pid`` (a jupyterhub process);
- its managed services: ``services/<name>.pid`` (esker.system.supervise: the supervisor, the group it leads,
  everything below it) and Ceph's daemons (``ceph/run/esker-<daemon>.pid``, pid + start time + program);
- with ``everything``: the notebook servers (the pids and control groups in the hub's database) and the proxy
  (``run/proxy.pid``);
- and anything else whose environment names this hub's API (``JUPYTERHUB_API_URL`` on this hub's port: services
  and servers of a hub that was killed, kernels) or, for a proxy, whose command line points at this hub's port.

The hub goes first and is waited for (SIGTERM, ``hub_timeout`` seconds, SIGKILL): a live hub restarts a proxy it
loses. Then everything else gets SIGTERM, ``grace`` seconds, SIGKILL. The outcome says what was stopped, what
needed SIGKILL, and what is still running or still holds a port: the caller says "stopped" only when that is
empty.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from esker.app.configurer import services_dir
from esker.app.deployment import run_dir
from esker.objectstore.cephprocs import BINARIES, DAEMONS, Daemons
from esker.objectstore import mounts
from esker.system import procs, scratch


@dataclass
class Outcome:
    stopped: list[str] = field(default_factory=list)  # "the hub (pid 12)", ...
    killed: list[str] = field(default_factory=list)  # the ones that needed SIGKILL
    left: list[str] = field(default_factory=list)  # still running, or a port still held

    @property
    def ok(self) -> bool:
        return not self.left


def _ports(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / "ports.json").read_text())
    except (OSError, ValueError):
        return {}


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _describe(pid: int) -> str:
    args = procs.cmdline(pid)
    text = " ".join(args)
    return f"pid {pid} ({text[:120]}{'...' if len(text) > 120 else ''})" if args else f"pid {pid}"


class Stopper:
    def __init__(self, state_dir: str | os.PathLike, hub_port: int | None = None, proxy_api_port: int | None = None):
        self.state = Path(state_dir)
        self.run = Path(run_dir(state_dir))
        ports = _ports(self.state)
        self.hub_port = hub_port or ports.get("hub")
        self.proxy_api_port = proxy_api_port or ports.get("proxy_api")
        self.out = Outcome()
        self.watched_ports: dict[int, str] = {}  # port -> what listened on it before the stop

    # ---------------------------------------------------------------- identity
    def _hub_api_marker(self) -> str | None:
        return f"127.0.0.1:{self.hub_port}/" if self.hub_port else None

    def by_environment(self) -> tuple[set[int], set[int]]:
        """(services, servers): live processes whose environment names this hub's API."""
        marker = self._hub_api_marker()
        services, servers = set(), set()
        if not marker:
            return services, servers
        for pid in procs.all_pids():
            if pid == os.getpid():
                continue
            env = procs.environ(pid)
            if not env or marker not in env.get("JUPYTERHUB_API_URL", ""):
                continue
            (services if "JUPYTERHUB_SERVICE_NAME" in env else servers).add(pid)
        return services, servers

    def proxies(self) -> set[int]:
        """The proxy of ``proxy.pid`` and any other configurable-http-proxy that routes to this hub (one a hub
        restarted while it was being stopped)."""
        found = set()
        pid = _pid_in(self.run / "proxy.pid")
        if pid and self._is_our_proxy(procs.cmdline(pid)):
            found.add(pid)
        if self.hub_port:
            for p in procs.all_pids():
                if p not in found and self._is_our_proxy(procs.cmdline(p), strict=True):
                    found.add(p)
        return {p for p in found if procs.alive(p)}

    def _is_our_proxy(self, args: list[str], strict: bool = False) -> bool:
        """A configurable-http-proxy whose error target is this hub (``strict``), or (the one ``proxy.pid``
        names) whose API port is this hub's proxy API port."""
        if "--api-port" not in args or "--error-target" not in args:
            return False
        if self.hub_port and f"127.0.0.1:{self.hub_port}/" in " ".join(args):
            return True
        return not strict and bool(self.proxy_api_port) and \
            args[args.index("--api-port") + 1:][:1] == [str(self.proxy_api_port)]

    def server_members(self) -> set[int]:
        """The notebook servers in the hub's database (each with its process tree, the group it leads and its
        control group), when each is one of this hub's (its environment names this hub, or it is in the control
        group recorded for it)."""
        db = self.state / "jupyterhub.sqlite"
        if not db.exists():
            return set()
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                rows = conn.execute("SELECT state FROM spawners WHERE state IS NOT NULL").fetchall()
        except sqlite3.Error:
            return set()
        table = procs.table()
        marker = self._hub_api_marker()
        found: set[int] = set()
        for (raw,) in rows:
            try:
                state = json.loads(raw or "{}")
            except ValueError:
                continue
            cg: set[int] = set()
            for path in (state.get("cgroup") or {}).get("paths", []):
                try:
                    cg |= {int(x) for x in Path(path, "cgroup.procs").read_text().split()}
                except (OSError, ValueError):
                    pass
            pid = state.get("pid")
            if pid and pid in table:
                env = procs.environ(pid) or {}
                if pid in cg or (marker and marker in env.get("JUPYTERHUB_API_URL", "")):
                    found |= {pid} | procs.descendants(pid, table)
                    if table[pid][1] == pid:  # it leads its group (LocalProcessSpawner starts a session)
                        found |= procs.group_members(pid, table)
            for spid in (state.get("spark") or {}).get("pids", []):  # the server's own Spark, with its executors
                if spid in table and any(c in " ".join(procs.cmdline(spid)) for c in ("deploy.master", "deploy.worker")):
                    found |= {spid} | procs.descendants(spid, table) | procs.group_members(spid, table)
            found |= cg
        return found & set(table)

    # ---------------------------------------------------------------- steps
    def _watch(self, pids, what: str) -> None:
        for port in procs.listening_ports(pids):
            self.watched_ports.setdefault(port, what)

    def _terminate(self, pids: set[int], what: str, grace: float) -> None:
        pids = {p for p in pids if procs.alive(p)}
        if not pids:
            return
        self._watch(pids, what)
        killed, left = procs.terminate(pids, grace=grace)
        self.out.stopped.append(f"{what} ({len(pids)} process{'es' if len(pids) != 1 else ''})")
        if killed:
            self.out.killed.append(f"{what}: {len(killed)} process(es) ignored SIGTERM for {grace:g} s")
        self.out.left += [f"{what}: {_describe(p)}" for p in sorted(left)]

    def stop_hub(self, timeout: float) -> None:
        pidfile = self.run / "jupyterhub.pid"
        pid = _pid_in(pidfile)
        if not pid or not procs.alive(pid):
            pidfile.unlink(missing_ok=True)
            return
        if not any("jupyterhub" in os.path.basename(a) for a in procs.cmdline(pid)[:3]):
            self.out.left.append(f"jupyterhub.pid names {_describe(pid)}, not a hub: left alone")
            return
        self._watch({pid}, "the hub")
        killed, left = procs.terminate({pid}, grace=timeout)
        self.out.stopped.append(f"the hub (pid {pid})")
        if killed:
            self.out.killed.append(f"the hub (pid {pid}) did not exit within {timeout:g} s of SIGTERM")
        if left:
            self.out.left.append(f"the hub: {_describe(pid)}")
        else:
            pidfile.unlink(missing_ok=True)

    def stop_services(self, grace: float) -> None:
        folder = Path(services_dir(str(self.state)))
        for path in sorted(folder.glob("*.pid")) if folder.is_dir() else []:
            rec = procs.PidFile.read(path)
            if rec is None:
                continue
            members = rec.members()
            self._terminate(members, f"service {rec.name or path.stem}", grace)
            if not rec.members():
                rec.remove()
        daemons = Daemons(self.state / "ceph", self.state / "ceph" / "ceph.conf", dict)
        found = {n: d for n in DAEMONS if (d := daemons.adopt(n))}
        for group in (("rgw",), ("osd",), ("mon",)):  # the order Ceph stops in
            pids = {found[n].pid for n in group if n in found}
            self._terminate(pids, f"Ceph {', '.join(BINARIES[n] for n in group)}", grace)
        for name in found:
            if not daemons.adopt(name):
                daemons.pidfile(name).unlink(missing_ok=True)
        services, _ = self.by_environment()
        self._terminate(services, "processes of this hub's services", grace)

    def stop_servers_and_proxy(self, grace: float) -> None:
        servers = self.server_members() | self.by_environment()[1]
        proxies = self.proxies()
        self._watch(proxies, "the proxy")
        self._terminate(servers, "notebook servers", grace)
        self._terminate(proxies, "the proxy", grace)
        if not self.proxies():
            (self.run / "proxy.pid").unlink(missing_ok=True)
        self.unmount_buckets()
        self.unmount_scratch()

    def unmount_buckets(self) -> None:
        """The servers are gone: their bucket mounts (s3fs daemons marked with this hub's state dir) go too."""
        for pid, path in mounts.running(os.path.realpath(self.state)):
            mounts.unmount(path, pid)
            self.out.stopped.append(f"bucket mount at {path} (s3fs pid {pid})")

    def scratch_dirs(self) -> set[str]:
        """The scratch folders recorded in the hub's database for its servers, and every filesystem still
        mounted under the state dir once the bucket mounts are gone (a spawn cut off before the hub stored
        its state leaves its scratch mounted and unrecorded)."""
        base = os.path.realpath(self.state) + os.sep
        found = {m for m in scratch.mounts() if m.startswith(base)}
        return found | self._recorded_scratch_dirs()

    def _recorded_scratch_dirs(self) -> set[str]:
        try:
            with sqlite3.connect(f"file:{self.state / 'jupyterhub.sqlite'}?mode=ro", uri=True) as conn:
                rows = conn.execute("SELECT state FROM spawners WHERE state IS NOT NULL").fetchall()
        except sqlite3.Error:
            return set()
        dirs = set()
        for (raw,) in rows:
            try:
                d = json.loads(raw or "{}").get("scratch_dir")
            except (ValueError, AttributeError):
                continue
            if d:
                dirs.add(d)
        return dirs

    def unmount_scratch(self) -> None:
        """The servers are gone, their scratch filesystems stay mounted: unmount them (their images stay
        until the hub's next start gives each server back, by its profile's scratch_keep)."""
        for d in sorted(self.scratch_dirs()):
            if not scratch.mounted(d):
                continue
            try:
                scratch.unmount(d)
                self.out.stopped.append(f"scratch filesystem at {d} (unmounted)")
            except scratch.QuotaError as e:
                self.out.left.append(f"scratch filesystem at {d} is still mounted: {e}")

    def verify(self, everything: bool) -> None:
        """What is still running, and which ports that Esker's processes held are still held."""
        pid = _pid_in(self.run / "jupyterhub.pid")
        if pid and procs.alive(pid) and not any(s.startswith("the hub") for s in self.out.left):
            self.out.left.append(f"the hub: {_describe(pid)}")
        services, servers = self.by_environment()
        self.out.left += [f"a service process: {_describe(p)}" for p in sorted(services)
                          if not any(f"pid {p} " in s for s in self.out.left)]
        if everything:
            self.out.left += [f"bucket mount at {path}: s3fs pid {pid}"
                              for pid, path in mounts.running(os.path.realpath(self.state))]
            rest = (servers | self.proxies() | self.server_members())
            self.out.left += [f"still running: {_describe(p)}" for p in sorted(rest)
                              if not any(f"pid {p} " in s for s in self.out.left)]
        holders = procs.port_holders(self.watched_ports)
        for port in sorted(procs.listening(self.watched_ports)):
            who = _describe(holders[port]) if port in holders else "a process this user cannot inspect"
            self.out.left.append(f"port {port} (was {self.watched_ports[port]}) is still held by {who}")


def stop(state_dir: str | os.PathLike, everything: bool = False, hub_timeout: float = 90.0, grace: float = 10.0,
         hub_port: int | None = None, proxy_api_port: int | None = None) -> Outcome:
    """Stop the hub of ``state_dir`` and its services (and, with ``everything``, its notebook servers and the
    proxy), verify, and say what is left (``Outcome.ok`` when nothing is)."""
    s = Stopper(state_dir, hub_port, proxy_api_port)
    if everything:  # what the proxy listens on, before the hub goes (it can restart a lost proxy)
        s._watch(s.proxies(), "the proxy")
    s.stop_hub(hub_timeout)
    if any(x.startswith("the hub") for x in s.out.left):
        return s.out  # a hub still running would restart what we stop
    s.stop_services(grace)
    if everything:
        s.stop_servers_and_proxy(grace)
    s.verify(everything)
    return s.out

