"""A single-node Ceph with a RADOS Gateway, started from Debian's packages, all under one directory.

One monitor, one OSD, one radosgw (beast frontend on 127.0.0.1), cephx, pools of size 1, no manager.
``memstore`` keeps the OSD's data in RAM (throwaway clusters for tests); ``bluestore`` keeps it in a sparse
file inside the directory (the long-running embedded hub). Nothing outside the directory is touched and no
daemon is started by the packages themselves.

    cluster = CephCluster("/var/lib/esker/ceph", objectstore="bluestore", port=7480)
    cluster.start()                 # idempotent; returns once an S3 PUT works
    creds = cluster.admin_credentials()   # {"uid", "access_key", "secret_key", "endpoint"}
    cluster.stop()                  # SIGTERM to the daemons this directory's pid files name

Directory layout::

    ceph.conf  cluster.json  rgw-admin.json (0600)
    keys/      client.admin and client.rgw keyrings (0600)
    mon/ osd/  daemon data (osd/ceph-0/block is the sparse bluestore file)
    rgw/ run/ log/ crash/

As a JupyterHub managed service (embedded mode)::

    python -m esker.objectstore.cephd run --dir $ESKER_STATE_DIR/ceph --port 7480

runs in the foreground until SIGTERM/SIGINT, then stops the daemons; it exits non-zero when a daemon dies.

This module is the cluster's lifecycle (start, wait until S3 works, stop). The one-time creation steps are
in esker.objectstore.cephbootstrap, the daemons' processes and pid files in esker.objectstore.cephprocs,
ceph.conf's text in esker.objectstore.cephconf.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from esker.objectstore import cephbootstrap as bootstrap
from esker.objectstore.cephconf import RGW_NAME
from esker.objectstore.cephprocs import BINARIES, DAEMONS, CephError, Daemons, proc_start_time, run_mon_commands
from esker.objectstore.s3client import s3_client
from esker.units import parse_size

__all__ = ["OBJECTSTORES", "CephCluster", "CephError", "cluster_from_config", "service_commands",
           "write_service_state", "read_service_state", "starting_reason", "embedded_starting"]

OBJECTSTORES = ("memstore", "bluestore")
HEALTH_BUCKET = "esker--health"

log = logging.getLogger("esker.ceph")


class CephCluster:
    """A single-node Ceph cluster (mon, OSD, radosgw) under ``directory``.

    Ports: ``port`` is radosgw's HTTP port, ``mon_port`` the monitor's (msgr2), and the OSD binds inside
    ``ms_port_min``..``ms_port_max``; two clusters side by side need distinct values for all three.
    ``size`` is the bluestore file's (sparse) size, or memstore's advertised capacity.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        objectstore: str = "memstore",
        port: int = 7480,
        mon_port: int = 3300,
        ms_port_min: int = 6800,
        ms_port_max: int = 6830,
        size: str | int = "10G",
        host: str = "127.0.0.1",
        start_timeout: float = 90.0,
        osd_memory_target: str | int = "1G",
    ):
        if objectstore not in OBJECTSTORES:
            # Ceph itself silently falls back to bluestore on a typo: refuse it here.
            raise CephError(f"objectstore must be one of {', '.join(OBJECTSTORES)}, not {objectstore!r}")
        if not (0 < ms_port_min <= ms_port_max < 65536) or ms_port_max - ms_port_min < 7:
            raise CephError("ms_port_min..ms_port_max must span at least 8 ports (the OSD binds several)")
        for p in (port, mon_port):
            if ms_port_min <= p <= ms_port_max:
                raise CephError(f"port {p} lies inside the OSD's range {ms_port_min}-{ms_port_max}")
        if port == mon_port:
            raise CephError("port and mon_port must differ")
        self.dir = Path(directory).resolve()
        self.objectstore = objectstore
        self.port = int(port)
        self.mon_port = int(mon_port)
        self.ms_port_min = int(ms_port_min)
        self.ms_port_max = int(ms_port_max)
        self.size = parse_size(size)
        self.host = host
        self.start_timeout = start_timeout
        self.osd_memory_target = max(parse_size(osd_memory_target), 896 * 1024**2)  # Ceph's minimum
        self.conf = self.dir / "ceph.conf"
        self.daemons = Daemons(self.dir, self.conf, self.env)
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- paths and environment
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_keyring(self) -> Path:
        return self.dir / "keys" / "client.admin.keyring"

    def env(self) -> dict:
        """The environment Ceph's daemons and tools run with: this cluster's ceph.conf, no CEPH_ARGS."""
        env = dict(os.environ)
        env["CEPH_CONF"] = str(self.conf)
        env.pop("CEPH_ARGS", None)
        return env

    # ----------------------------------------------------------------- lifecycle
    def running(self) -> dict[str, bool]:
        with self._lock:
            return {name: self.daemons.adopt(name) is not None for name in DAEMONS}

    def start(self) -> "CephCluster":
        """Create the cluster on first use, start whatever is not running, wait until a PUT works."""
        with self._lock:
            deadline = time.monotonic() + self.start_timeout
            state = bootstrap.ensure_layout(self)
            if not self.daemons.adopt("mon"):
                for name in DAEMONS:  # daemons of the old monitor's generation would not reconnect well
                    if self.daemons.adopt(name):
                        raise CephError(f"{BINARIES[name]} is running without its monitor: stop() first")
                bootstrap.mkfs_mon(self, state)
                self.daemons.spawn("mon", ["-i", "a"])
            try:
                bootstrap.bootstrap_commands(self, state)
                if not self.daemons.adopt("osd"):
                    self.daemons.spawn("osd", ["-i", str(state["osd"]["id"])])
                if not self.daemons.adopt("rgw"):
                    self.daemons.spawn("rgw", ["-n", RGW_NAME])
                self._wait_http(deadline)
                self.admin_credentials()
                self._wait_put(deadline)
            except BaseException:
                log.error("Ceph did not start; logs are in %s", self.dir / "log")
                raise
            return self

    def _wait_http(self, deadline: float) -> None:
        while True:
            self.daemons.check_alive()
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError:
                return  # radosgw answers: it is up
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CephError(f"radosgw did not answer on {self.endpoint} within {self.start_timeout:.0f} s")
            time.sleep(0.1)

    def _wait_put(self, deadline: float) -> None:
        creds = self.admin_credentials()
        last = None
        while True:
            self.daemons.check_alive()
            try:
                s3 = s3_client(self.endpoint, creds["access_key"], creds["secret_key"], timeout=5)
                try:
                    s3.create_bucket(Bucket=HEALTH_BUCKET)
                except s3.exceptions.BucketAlreadyOwnedByYou:
                    pass
                s3.put_object(Bucket=HEALTH_BUCKET, Key="ready", Body=b"ok")
                s3.delete_object(Bucket=HEALTH_BUCKET, Key="ready")
                return
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last = e
            if time.monotonic() > deadline:
                raise CephError(f"no S3 PUT succeeded on {self.endpoint} within {self.start_timeout:.0f} s: {last}")
            time.sleep(0.2)

    def admin_credentials(self) -> dict:
        """Keys of the RGW user the hub manages users with (caps users=*;buckets=*): created once."""
        path = self.dir / "rgw-admin.json"
        try:
            return {**json.loads(path.read_text()), "endpoint": self.endpoint}
        except FileNotFoundError:
            pass
        with self._lock:
            if path.exists():
                return {**json.loads(path.read_text()), "endpoint": self.endpoint}
            return bootstrap.admin_user(self, path)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the daemons this directory started (radosgw and OSD first, then the monitor)."""
        with self._lock:
            self.daemons.stop(timeout)

    def stop_daemon(self, name: str) -> None:
        """Stop one daemon (tests use it to take radosgw down)."""
        with self._lock:
            self.daemons.stop_one(name)

    def health(self) -> str:
        out = run_mon_commands(self.conf, self.env(), [{"cmd": {"prefix": "health", "format": "json"}}],
                               timeout=10, mon_port=self.mon_port)
        return json.loads(out[0]["out"])["status"]

    def memory(self) -> dict[str, int]:
        """Resident memory of each running daemon, in bytes."""
        return self.daemons.memory()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def cluster_from_config(storage_cfg: dict, state_dir: str) -> CephCluster:
    e = storage_cfg.get("embedded", {})
    kw = {k: e[k] for k in ("objectstore", "port", "mon_port", "ms_port_min", "ms_port_max", "size") if k in e}
    return CephCluster(os.path.join(state_dir, "ceph"), **kw)


def service_commands(storage_cfg: dict, state_dir: str, python: str = sys.executable) -> list[dict]:
    """The JupyterHub managed-service entry for the embedded Ceph (pure)."""
    e = storage_cfg.get("embedded", {})
    cmd = [python, "-m", "esker.objectstore.cephd", "run", "--dir", os.path.join(state_dir, "ceph")]
    for flag, key in (("--objectstore", "objectstore"), ("--port", "port"), ("--mon-port", "mon_port"),
                      ("--ms-port-min", "ms_port_min"), ("--ms-port-max", "ms_port_max"), ("--size", "size")):
        if key in e:
            cmd += [flag, str(e[key])]
    return [{"name": "ceph", "command": cmd, "display": False}]


# ----------------------------------------------------------------- the managed service's state
# What the embedded Ceph's managed service is doing, for the hub's spawns (they wait while it is starting) and
# `esker status`: ``run/service.json`` in the cluster directory, {"state", "pid", "start" (its /proc start
# time), "since" (when this run began, epoch seconds), "at" (when it entered this state), "detail"}. States:
# launching (written by the hub as it loads its configuration: it starts the service once it serves), then
# the service's own starting, ready, failed, stopping, stopped.
SERVICE_STATE = Path("run") / "service.json"
STATES = ("launching", "starting", "ready", "failed", "stopping", "stopped")
# Seconds a "launching" record counts as starting: JupyterHub starts its managed services only after the hub
# answers, and the service needs a moment (Python, imports) to say "starting" itself.
LAUNCH_GRACE = 120.0


def write_service_state(directory: str | os.PathLike, state: str, detail: str = "", since: float | None = None) -> dict:
    """Record this process as the cluster's managed service in ``state`` (atomic replace)."""
    if state not in STATES:
        raise ValueError(f"unknown service state {state!r}")
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)  # before the first start made it: root's
    path = Path(directory) / SERVICE_STATE
    path.parent.mkdir(exist_ok=True)
    now = time.time()
    rec = {"state": state, "pid": os.getpid(), "start": proc_start_time(os.getpid()) or -1,
           "since": now if since is None else since, "at": now, "detail": detail}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, path)
    return rec


def read_service_state(directory: str | os.PathLike) -> dict | None:
    try:
        rec = json.loads((Path(directory) / SERVICE_STATE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("state") in STATES else None


def starting_reason(record: dict | None, alive: bool, now: float, launch_grace: float = LAUNCH_GRACE) -> str | None:
    """Why the embedded gateway will be up soon (a spawn waits for it), or None when it is ready, down or
    unknown (a spawn does not wait). Pure: ``record`` is :func:`read_service_state`'s, ``alive`` whether the
    process that wrote it still runs."""
    if record is None or not alive:
        return None  # never started here, or the process that was starting it has gone: down
    state, since = record["state"], float(record.get("since") or now)
    if state == "launching" and now - float(record.get("at") or 0) < launch_grace:
        return "the hub is starting the embedded Ceph"
    if state == "starting":
        return f"the embedded Ceph has been starting for {max(0.0, now - since):.0f} s"
    return None


def embedded_starting(directory: str | os.PathLike, launch_grace: float = LAUNCH_GRACE) -> str | None:
    """:func:`starting_reason` for the cluster in ``directory``, from its service record and /proc."""
    rec = read_service_state(directory)
    alive = False
    if rec is not None:
        try:
            alive = proc_start_time(int(rec["pid"])) == int(rec["start"])
        except (KeyError, TypeError, ValueError):
            alive = False
    return starting_reason(rec, alive, time.time(), launch_grace)
