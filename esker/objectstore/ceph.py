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

    python -m esker.objectstore.ceph run --dir $ESKER_STATE_DIR/ceph --port 7480

runs in the foreground until SIGTERM/SIGINT, then stops the daemons; it exits non-zero when a daemon dies.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from esker.objectstore.cephconf import RADOS_HELPER, RGW_NAME, RGW_POOLS, ceph_conf
from esker.objectstore.s3client import s3_client
from esker.units import parse_size

log = logging.getLogger("esker.ceph")

OBJECTSTORES = ("memstore", "bluestore")
ADMIN_UID = "esker--admin"  # "--" never comes out of esker.objectstore.service.rgw_names for a hub user
HEALTH_BUCKET = "esker--health"
DAEMONS = ("mon", "osd", "rgw")
BINARIES = {"mon": "ceph-mon", "osd": "ceph-osd", "rgw": "radosgw"}
INSTALL_HINT = "install Ceph with scripts/install-ceph.sh (ceph-mon ceph-osd radosgw ceph-common)"

class CephError(RuntimeError):
    """Ceph could not be set up, started or stopped; the message says which step and why."""


def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when there is no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # zombie: it has exited
        return None
    return int(fields[19])


@dataclass
class _Daemon:
    name: str
    pid: int
    start: int  # /proc start time: a reused pid does not match
    proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return _proc_start_time(self.pid) == self.start


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
        self._daemons: dict[str, _Daemon] = {}
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- paths and state
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_keyring(self) -> Path:
        return self.dir / "keys" / "client.admin.keyring"

    def _pidfile(self, name: str) -> Path:
        return self.dir / "run" / f"esker-{name}.pid"

    def _state_file(self) -> Path:
        return self.dir / "cluster.json"

    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_file().read_text())
        except FileNotFoundError:
            return {}

    def _write_state(self, state: dict) -> None:
        tmp = self._state_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self._state_file())

    def _env(self) -> dict:
        env = dict(os.environ)
        env["CEPH_CONF"] = str(self.conf)
        env.pop("CEPH_ARGS", None)
        return env

    # ----------------------------------------------------------------- configuration
    def _write_conf(self, fsid: str) -> None:
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(ceph_conf(self, fsid))
        tmp.replace(self.conf)

    # ----------------------------------------------------------------- helpers
    def _run(self, cmd: list[str], timeout: float = 60, input: str | None = None, check: bool = True):
        try:
            r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self._env())
        except FileNotFoundError:
            raise CephError(f"{cmd[0]} not found: {INSTALL_HINT}") from None
        except subprocess.TimeoutExpired:
            raise CephError(f"{' '.join(cmd[:3])} did not finish within {timeout:.0f} s") from None
        if check and r.returncode != 0:
            raise CephError(f"{' '.join(cmd[:3])} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
        return r

    def _mon_commands(self, commands: list[dict], timeout: float = 30) -> list[dict]:
        """Run monitor commands in one librados session (system python3 with python3-rados)."""
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
        req = json.dumps({"conf": str(self.conf), "timeout": int(timeout), "commands": commands})
        r = self._run([python, "-c", RADOS_HELPER], timeout=timeout + 15, input=req, check=False)
        if r.returncode != 0:
            tail = r.stderr.strip().splitlines()[-1:] or ["?"]
            raise CephError(f"monitor commands failed (is the monitor up on port {self.mon_port}?): {tail[0]}")
        out = json.loads(r.stdout)
        for item, res in zip(commands, out):
            if res["ret"] != 0 and res["ret"] not in item.get("ok", []):
                raise CephError(f"ceph {item['cmd']['prefix']}: {res['err'] or res['ret']}")
        return out

    def _spawn(self, name: str, args: list[str]) -> _Daemon:
        binary = shutil.which(BINARIES[name]) or f"/usr/bin/{BINARIES[name]}"
        if not Path(binary).exists():
            raise CephError(f"{BINARIES[name]} not found: {INSTALL_HINT}")
        out = open(self.dir / "log" / f"{name}.stderr", "ab")
        try:
            proc = subprocess.Popen(
                [binary, "-f", "-c", str(self.conf), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.dir,
                start_new_session=True,  # a Ctrl-C meant for the parent does not kill Ceph mid-write
            )
        finally:
            out.close()
        start = None
        for _ in range(100):
            start = _proc_start_time(proc.pid)
            if start is not None:
                break
            time.sleep(0.01)
        d = _Daemon(name, proc.pid, start or -1, proc)
        self._pidfile(name).write_text(json.dumps({"pid": d.pid, "start": d.start, "cmd": BINARIES[name]}))
        self._daemons[name] = d
        log.info("started %s (pid %d)", BINARIES[name], d.pid)
        return d

    def _adopt(self, name: str) -> _Daemon | None:
        """The daemon named by this directory's pid file, when that exact process is still running."""
        d = self._daemons.get(name)
        if d and d.alive():
            return d
        try:
            info = json.loads(self._pidfile(name).read_text())
        except (OSError, ValueError):
            return None
        d = _Daemon(name, int(info["pid"]), int(info["start"]))
        if not d.alive():
            return None
        try:  # also the same program: a pid reused at the same tick is not ours
            exe = os.path.basename(os.readlink(f"/proc/{d.pid}/exe"))
        except OSError:
            exe = BINARIES[name]  # not ours to inspect (another user): trust pid + start time
        if exe != BINARIES[name]:
            return None
        self._daemons[name] = d
        return d

    def _daemon_died(self, name: str) -> str:
        path = self.dir / "log" / f"{name}.stderr"
        try:
            tail = path.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        return f"{BINARIES[name]} exited; see {self.dir / 'log'} ({' | '.join(tail)[-600:]})"

    # ----------------------------------------------------------------- bootstrap steps
    def _ensure_layout(self) -> dict:
        for sub in ("keys", "mon", "osd", "rgw", "run", "log", "crash", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        os.chmod(self.dir / "keys", 0o700)
        state = self._read_state()
        if not state:
            state = {"fsid": str(uuid.uuid4()), "objectstore": self.objectstore}
            self._write_state(state)
        if state["objectstore"] != self.objectstore:
            raise CephError(
                f"{self.dir} holds a {state['objectstore']} cluster; it cannot be started as {self.objectstore}"
            )
        if state.get("mon_port", self.mon_port) != self.mon_port:
            # The monitor's address is in its monmap: changing it means a monmap edit, not a config change.
            raise CephError(
                f"{self.dir}'s monitor was created on port {state['mon_port']}, not {self.mon_port}: "
                "use the original mon_port (or a new directory)"
            )
        settings = {"port": self.port, "ms_port_min": self.ms_port_min, "ms_port_max": self.ms_port_max,
                    "size": self.size}
        if state.get("settings") != settings:
            state["settings"] = settings
            self._write_state(state)
        self._write_conf(state["fsid"])
        return state

    def _mkfs_mon(self, state: dict) -> None:
        if (self.dir / "mon" / "ceph-a" / "done").exists() and state.get("mon_port"):
            return
        shutil.rmtree(self.dir / "mon" / "ceph-a", ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir / "tmp"))
        try:
            self._run(
                ["ceph-authtool", "--create-keyring", str(self.admin_keyring), "--gen-key", "-n", "client.admin",
                 "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
                 "--cap", "mds", "allow *"]
            )
            os.chmod(self.admin_keyring, 0o600)
            monkey = tmp / "mon.keyring"
            self._run(["ceph-authtool", "--create-keyring", str(monkey), "--gen-key", "-n", "mon.",
                       "--cap", "mon", "allow *"])
            self._run(["ceph-authtool", str(monkey), "--import-keyring", str(self.admin_keyring)])
            monmap = tmp / "monmap"
            self._run(["monmaptool", "--create", "--fsid", state["fsid"],
                       "--addv", "a", f"[v2:{self.host}:{self.mon_port}]", str(monmap)])
            self._run(["ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
                       "--keyring", str(monkey)])
            (self.dir / "mon" / "ceph-a" / "done").touch()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        state["mon_port"] = self.mon_port
        state.pop("osd", None)  # a new monitor knows no OSD
        self._write_state(state)

    def _bootstrap_commands(self, state: dict) -> None:
        """Register the OSD (first time), create radosgw's pools and key: one monitor session."""
        commands: list[dict] = []
        new_osd = "osd" not in state
        if new_osd:
            # Remembered before `osd new` (idempotent for one uuid): a failed first start is retried
            # with the same OSD instead of registering another.
            pending = state.get("osd_pending") or {
                "uuid": str(uuid.uuid4()),
                "secret": self._run(["ceph-authtool", "--gen-print-key"]).stdout.strip(),
            }
            state["osd_pending"] = pending
            self._write_state(state)
            osd_uuid, secret = pending["uuid"], pending["secret"]
            commands.append({"cmd": {"prefix": "osd new", "uuid": osd_uuid, "format": "json"},
                             "inbuf": json.dumps({"cephx_secret": secret})})
        for pool in RGW_POOLS:
            commands.append({"cmd": {"prefix": "osd pool create", "pool": pool, "pg_num": 8, "pgp_num": 8}})
            commands.append({"cmd": {"prefix": "osd pool application enable", "pool": pool, "app": "rgw"}})
        commands.append({"cmd": {"prefix": "auth get-or-create", "entity": RGW_NAME,
                                 "caps": ["mon", "allow rw", "osd", "allow rwx"]}})
        out = self._mon_commands(commands, timeout=min(30, self.start_timeout))
        key = out[-1]["out"]
        rgw_keyring = self.dir / "keys" / f"{RGW_NAME}.keyring"
        rgw_keyring.write_text(key if key.endswith("\n") else key + "\n")
        os.chmod(rgw_keyring, 0o600)
        if new_osd:
            res = out[0]["out"].strip()
            osd_id = json.loads(res)["osdid"] if res.startswith("{") else int(res)
            data = self.dir / "osd" / f"ceph-{osd_id}"
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            self._run(["ceph-authtool", "--create-keyring", str(data / "keyring"), "--name", f"osd.{osd_id}",
                       "--add-key", secret])
            os.chmod(data / "keyring", 0o600)
            if self.objectstore == "bluestore":
                free = shutil.disk_usage(self.dir).free
                if free < self.size:
                    log.warning("bluestore file is %d GiB (sparse) but only %d GiB are free under %s",
                                self.size >> 30, free >> 30, self.dir)
            self._run(["ceph-osd", "-c", str(self.conf), "--mkfs", "-i", str(osd_id), "--osd-uuid", osd_uuid],
                      timeout=120)
            written = (data / "type").read_text().strip() if (data / "type").exists() else "?"
            if written != self.objectstore:
                raise CephError(f"the OSD was created as {written!r}, not {self.objectstore!r}")
            state["osd"] = {"id": osd_id, "uuid": osd_uuid}
            state.pop("osd_pending", None)
            self._write_state(state)

    # ----------------------------------------------------------------- lifecycle
    def running(self) -> dict[str, bool]:
        with self._lock:
            return {name: self._adopt(name) is not None for name in DAEMONS}

    def start(self) -> "CephCluster":
        """Create the cluster on first use, start whatever is not running, wait until a PUT works."""
        with self._lock:
            deadline = time.monotonic() + self.start_timeout
            state = self._ensure_layout()
            if not self._adopt("mon"):
                for name in DAEMONS:  # daemons of the old monitor's generation would not reconnect well
                    if self._adopt(name):
                        raise CephError(f"{BINARIES[name]} is running without its monitor: stop() first")
                self._mkfs_mon(state)
                self._spawn("mon", ["-i", "a"])
            try:
                self._bootstrap_commands(state)
                if not self._adopt("osd"):
                    self._spawn("osd", ["-i", str(state["osd"]["id"])])
                if not self._adopt("rgw"):
                    self._spawn("rgw", ["-n", RGW_NAME])
                self._wait_http(deadline)
                self.admin_credentials()
                self._wait_put(deadline)
            except BaseException:
                log.error("Ceph did not start; logs are in %s", self.dir / "log")
                raise
            return self

    def _check_alive(self) -> None:
        for name in DAEMONS:
            d = self._daemons.get(name)
            if d is None or not d.alive():
                raise CephError(self._daemon_died(name))

    def _wait_http(self, deadline: float) -> None:
        import urllib.error
        import urllib.request

        while True:
            self._check_alive()
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
            self._check_alive()
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
            base = ["radosgw-admin", "-c", str(self.conf), "-n", "client.admin", "--uid", ADMIN_UID]
            r = self._run(base + ["user", "info"], check=False, timeout=60)
            if r.returncode != 0:
                r = self._run(base + ["user", "create", "--display-name", "Esker hub (user management)",
                                      "--caps", "users=*;buckets=*"], timeout=60)
            info = json.loads(r.stdout)
            key = next(k for k in info["keys"] if k["user"] == ADMIN_UID)
            creds = {"uid": ADMIN_UID, "access_key": key["access_key"], "secret_key": key["secret_key"],
                     "endpoint": self.endpoint}
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(creds, f)
            path.with_suffix(".tmp").replace(path)
            return creds

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the daemons this directory started (radosgw and OSD first, then the monitor)."""
        with self._lock:
            for group in (("rgw",), ("osd",), ("mon",)):
                ds = [d for d in (self._adopt(n) for n in group) if d]
                for d in ds:
                    log.info("stopping %s (pid %d)", BINARIES[d.name], d.pid)
                    try:
                        os.kill(d.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                end = time.monotonic() + timeout
                for d in ds:
                    while d.alive() and time.monotonic() < end:
                        time.sleep(0.05)
                    if d.alive():
                        log.warning("%s (pid %d) ignored SIGTERM; SIGKILL", BINARIES[d.name], d.pid)
                        try:
                            os.kill(d.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    if d.proc is not None:
                        try:
                            d.proc.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            pass
                for d in ds:
                    self._pidfile(d.name).unlink(missing_ok=True)
                    self._daemons.pop(d.name, None)

    def stop_daemon(self, name: str) -> None:
        """Stop one daemon (tests use it to take radosgw down)."""
        with self._lock:
            d = self._adopt(name)
            if not d:
                return
            os.kill(d.pid, signal.SIGTERM)
            end = time.monotonic() + 20
            while d.alive() and time.monotonic() < end:
                time.sleep(0.05)
            if d.alive():
                os.kill(d.pid, signal.SIGKILL)
            if d.proc is not None:
                d.proc.wait(timeout=5)
            self._pidfile(name).unlink(missing_ok=True)
            self._daemons.pop(name, None)

    def health(self) -> str:
        out = self._mon_commands([{"cmd": {"prefix": "health", "format": "json"}}], timeout=10)
        return json.loads(out[0]["out"])["status"]

    def memory(self) -> dict[str, int]:
        """Resident memory of each running daemon, in bytes."""
        out = {}
        for name in DAEMONS:
            d = self._adopt(name)
            if d:
                for line in Path(f"/proc/{d.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1]) * 1024
        return out

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
