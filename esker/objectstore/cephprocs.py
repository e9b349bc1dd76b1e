"""The single-node Ceph's processes: its daemons, each named by a pid file that also records the process's
start time (so a reused pid is never taken for one of ours), and its command-line tools, run with a time
limit. What the daemons are and in which order they start is esker.objectstore.ceph's business.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from esker.objectstore.cephconf import RADOS_HELPER

log = logging.getLogger("esker.ceph")

DAEMONS = ("mon", "osd", "rgw")
BINARIES = {"mon": "ceph-mon", "osd": "ceph-osd", "rgw": "radosgw"}
INSTALL_HINT = "install Ceph with scripts/install-ceph.sh (ceph-mon ceph-osd radosgw ceph-common)"


class CephError(RuntimeError):
    """Ceph could not be set up, started or stopped; the message says which step and why."""


def proc_start_time(pid: int) -> int | None:
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
class Daemon:
    name: str
    pid: int
    start: int  # /proc start time: a reused pid does not match
    proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return proc_start_time(self.pid) == self.start


# ----------------------------------------------------------------- tools
def run_tool(cmd: list[str], env: dict, timeout: float = 60, input: str | None = None, check: bool = True):
    """Run one of Ceph's command-line tools; CephError when it is missing, too slow or (``check``) fails."""
    try:
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise CephError(f"{cmd[0]} not found: {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise CephError(f"{' '.join(cmd[:3])} did not finish within {timeout:.0f} s") from None
    if check and r.returncode != 0:
        raise CephError(f"{' '.join(cmd[:3])} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
    return r


def run_mon_commands(conf: Path, env: dict, commands: list[dict], timeout: float = 30,
                     mon_port: int | None = None) -> list[dict]:
    """Run monitor commands in one librados session (system python3 with python3-rados)."""
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
    req = json.dumps({"conf": str(conf), "timeout": int(timeout), "commands": commands})
    r = run_tool([python, "-c", RADOS_HELPER], env, timeout=timeout + 15, input=req, check=False)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or ["?"]
        raise CephError(f"monitor commands failed (is the monitor up on port {mon_port}?): {tail[0]}")
    out = json.loads(r.stdout)
    for item, res in zip(commands, out):
        if res["ret"] != 0 and res["ret"] not in item.get("ok", []):
            raise CephError(f"ceph {item['cmd']['prefix']}: {res['err'] or res['ret']}")
    return out


# ----------------------------------------------------------------- daemons
class Daemons:
    """The daemons started from one cluster directory: ``run/esker-<name>.pid`` names each one (pid, start
    time, program), ``log/<name>.stderr`` holds its output. Not locked: the cluster that owns it is."""

    def __init__(self, directory: Path, conf: Path, env: Callable[[], dict]):
        self.dir = directory
        self.conf = conf
        self._env = env
        self._known: dict[str, Daemon] = {}

    def pidfile(self, name: str) -> Path:
        return self.dir / "run" / f"esker-{name}.pid"

    def spawn(self, name: str, args: list[str]) -> Daemon:
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
            start = proc_start_time(proc.pid)
            if start is not None:
                break
            time.sleep(0.01)
        d = Daemon(name, proc.pid, start or -1, proc)
        self.pidfile(name).write_text(json.dumps({"pid": d.pid, "start": d.start, "cmd": BINARIES[name]}))
        self._known[name] = d
        log.info("started %s (pid %d)", BINARIES[name], d.pid)
        return d

    def adopt(self, name: str) -> Daemon | None:
        """The daemon named by this directory's pid file, when that exact process is still running."""
        d = self._known.get(name)
        if d and d.alive():
            return d
        try:
            info = json.loads(self.pidfile(name).read_text())
        except (OSError, ValueError):
            return None
        d = Daemon(name, int(info["pid"]), int(info["start"]))
        if not d.alive():
            return None
        try:  # also the same program: a pid reused at the same tick is not ours
            exe = os.path.basename(os.readlink(f"/proc/{d.pid}/exe"))
        except OSError:
            exe = BINARIES[name]  # not ours to inspect (another user): trust pid + start time
        if exe != BINARIES[name]:
            return None
        self._known[name] = d
        return d

    def died(self, name: str) -> str:
        """What to tell about a daemon that exited: where its logs are and their last lines."""
        path = self.dir / "log" / f"{name}.stderr"
        try:
            tail = path.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        return f"{BINARIES[name]} exited; see {self.dir / 'log'} ({' | '.join(tail)[-600:]})"

    def check_alive(self) -> None:
        """CephError when a daemon this object started or adopted has exited."""
        for name in DAEMONS:
            d = self._known.get(name)
            if d is None or not d.alive():
                raise CephError(self.died(name))

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the daemons this directory started (radosgw and OSD first, then the monitor)."""
        for group in (("rgw",), ("osd",), ("mon",)):
            ds = [d for d in (self.adopt(n) for n in group) if d]
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
                self.pidfile(d.name).unlink(missing_ok=True)
                self._known.pop(d.name, None)

    def stop_one(self, name: str) -> None:
        d = self.adopt(name)
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
        self.pidfile(name).unlink(missing_ok=True)
        self._known.pop(name, None)

    def memory(self) -> dict[str, int]:
        """Resident memory of each running daemon, in bytes."""
        out = {}
        for name in DAEMONS:
            d = self.adopt(name)
            if d:
                for line in Path(f"/proc/{d.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1]) * 1024
        return out
