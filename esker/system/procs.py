"""Processes Esker started, found again and stopped for certain: pid files that also record the process's start
time (a reused pid is never taken for ours), process groups and trees read from /proc, listening ports, and one
bounded SIGTERM -> SIGKILL escalation that says what is still alive afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state is [0]), None when there is no such process
    or it is a zombie (it has exited; only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when it is not running."""
    f = stat_fields(pid)
    return int(f[19]) if f else None


def alive(pid: int, start: int | None = None) -> bool:
    """Running (not a zombie), and, given ``start``, the very process that started then."""
    t = start_time(pid)
    return t is not None and (start is None or t == start)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def environ(pid: int) -> dict[str, str] | None:
    """The process's environment at exec; None when it cannot be read (gone, or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, start time) of every live process."""
    out = {}
    for pid in all_pids():
        f = stat_fields(pid)
        if f:
            out[pid] = (int(f[1]), int(f[2]), int(f[19]))
    return out


def descendants(root: int, procs: dict | None = None) -> set[int]:
    """Every live process below ``root`` (children, their children, ...), not ``root`` itself."""
    procs = table() if procs is None else procs
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def group_members(pgid: int, procs: dict | None = None) -> set[int]:
    procs = table() if procs is None else procs
    return {pid for pid, (_, g, _) in procs.items() if g == pgid}


# ----------------------------------------------------------------- pid files
@dataclass(frozen=True)
class PidFile:
    """``{"pid", "start", "pgid", "name", "cmd"}`` as JSON: what a process of ours was when it started."""

    path: Path
    pid: int
    start: int
    pgid: int
    name: str = ""
    cmd: tuple[str, ...] = ()

    @classmethod
    def write(cls, path: str | Path, name: str = "", pid: int | None = None) -> "PidFile":
        pid = os.getpid() if pid is None else pid
        rec = cls(Path(path), pid, start_time(pid) or -1, os.getpgid(pid), name, tuple(cmdline(pid)))
        rec.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = rec.path.with_name(rec.path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": rec.pid, "start": rec.start, "pgid": rec.pgid, "name": name,
                                   "cmd": list(rec.cmd)}))
        os.replace(tmp, rec.path)
        return rec

    @classmethod
    def read(cls, path: str | Path) -> "PidFile | None":
        try:
            d = json.loads(Path(path).read_text())
            return cls(Path(path), int(d["pid"]), int(d["start"]), int(d.get("pgid", d["pid"])), d.get("name", ""),
                       tuple(d.get("cmd", ())))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        return alive(self.pid, self.start)

    def members(self, procs: dict | None = None) -> set[int]:
        """The live processes that are this record's: the process itself (same pid and start time), its
        descendants, and what is left of the process group it led. A group whose leader has exited is still ours:
        its number cannot be given to a new process while any member lives; a leader that is another process (the
        pid was reused) makes the group someone else's, and so does a group the process did not lead."""
        procs = table() if procs is None else procs
        found: set[int] = set()
        leader = procs.get(self.pid)
        if leader and leader[2] == self.start:
            found |= {self.pid} | descendants(self.pid, procs)
        if self.pgid == self.pid and (leader is None or leader[2] == self.start):
            found |= {p for p in group_members(self.pgid, procs) if procs[p][2] >= self.start}
        found.discard(os.getpid())
        return found

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------- ports
def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out


def _listening() -> dict[str, int]:
    """socket inode -> port, for every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A":
                out[f[9]] = int(f[1].rsplit(":", 1)[1], 16)
    return out


def listening_ports(pids) -> dict[int, int]:
    """port -> pid, for the TCP ports these processes listen on."""
    lst = _listening()
    out = {}
    for pid in pids:
        for inode in _socket_inodes(pid):
            if inode in lst:
                out[lst[inode]] = pid
    return out


def listening(ports) -> set[int]:
    """Which of ``ports`` some process (anyone's) listens on now."""
    return set(ports) & set(_listening().values())


def port_holders(ports) -> dict[int, int]:
    """port -> pid of a process that listens on it (the ones this user may inspect: all of them as root)."""
    want = listening(ports)
    if not want:
        return {}
    return {p: pid for p, pid in listening_ports(all_pids()).items() if p in want}


# ----------------------------------------------------------------- stopping
def signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pids, timeout: float, starts: dict[int, int] | None = None) -> set[int]:
    """Wait up to ``timeout`` seconds for these processes to exit; the ones still alive."""
    starts = starts if starts is not None else {p: start_time(p) for p in pids}
    deadline = time.monotonic() + timeout
    left = {p for p in pids if alive(p, starts.get(p))}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in left if alive(p, starts.get(p))}
    return left


def terminate(pids, grace: float = 10.0, first: int = signal.SIGTERM, kill_wait: float = 5.0) -> tuple[set, set]:
    """``first`` (SIGTERM) to each process, up to ``grace`` seconds for them to exit, then SIGKILL to the rest and
    up to ``kill_wait`` more. Returns (killed: the ones that needed SIGKILL, left: the ones still alive, which
    only a process stuck in the kernel or not ours to signal can be)."""
    pids = {p for p in pids if p != os.getpid()}
    starts = {p: start_time(p) for p in pids}
    pids = {p for p in pids if starts[p] is not None}
    if not pids:
        return set(), set()
    signal_all(pids, first)
    stubborn = wait_gone(pids, grace, starts)
    if not stubborn:
        return set(), set()
    signal_all(stubborn, signal.SIGKILL)
    return stubborn, wait_gone(stubborn, kill_wait, starts)
