"""CPU and memory limits for embedded servers, with Linux control groups (v2, or v1's memory and cpu
controllers), when the hub may create them. Each server gets a group under the hub's own; the server
process joins it before it execs, so everything it starts (kernels, Spark drivers) is inside.

Where no writable cgroup hierarchy exists (an unprivileged hub, some containers) limits are reported in
the environment only, and the hub says so once at start.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path("/sys/fs/cgroup")
PERIOD = 100_000  # microseconds


@dataclass(frozen=True)
class Group:
    """One server's cgroup: a directory per controller (v1) or a single one (v2)."""

    paths: tuple[str, ...]
    version: int

    def procs(self) -> set[int]:
        pids = set()
        for p in self.paths:
            try:
                pids.update(int(x) for x in Path(p, "cgroup.procs").read_text().split())
            except OSError:
                pass
        return pids

    def memory_limit(self) -> int | None:
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        for p in self.paths:
            f = Path(p, name)
            if f.exists():
                v = f.read_text().strip()
                return None if v == "max" else int(v)
        return None


def _own_cgroup_dirs() -> dict[str, Path]:
    """controller -> the directory of this process's cgroup for it."""
    dirs: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and (ROOT / "cgroup.controllers").exists():
            dirs["unified"] = ROOT / path.lstrip("/")
        for c in controllers.split(","):
            if c in ("memory", "cpu") and (ROOT / c).is_dir():
                dirs[c] = ROOT / c / path.lstrip("/")
    return dirs


class Limiter:
    def __init__(self, namespace: str = "esker"):
        self.namespace = namespace
        self.version = 0
        self.bases: dict[str, Path] = {}
        if os.environ.get("ESKER_NO_CGROUPS"):  # operator's escape hatch (and for measuring their cost)
            log.warning("ESKER_NO_CGROUPS is set: CPU/memory limits are reported, not enforced")
            return
        dirs = _own_cgroup_dirs()
        if "unified" in dirs and {"memory", "cpu"} <= set(
            (ROOT / "cgroup.controllers").read_text().split()
        ):
            self.version, self.bases = 2, {"unified": dirs["unified"] / namespace}
        elif "memory" in dirs and "cpu" in dirs:
            self.version, self.bases = 1, {c: dirs[c] / namespace for c in ("memory", "cpu")}
        try:
            for base in self.bases.values():
                base.mkdir(exist_ok=True)
            if self.version == 2:
                # A process cannot live in an inner node: servers go in leaves, limits need delegation.
                (self.bases["unified"] / "cgroup.subtree_control").write_text("+memory +cpu")
        except OSError as e:
            log.warning("CPU/memory limits are not enforced (cgroups not writable: %s); "
                        "they are reported to servers as ESKER_CPU_LIMIT/ESKER_MEM_LIMIT only", e)
            self.version, self.bases = 0, {}

    @property
    def enabled(self) -> bool:
        return bool(self.version)

    def create(self, key: str, cpu: float, memory: int) -> Group | None:
        if not self.enabled:
            return None
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        paths = []
        for ctrl, base in self.bases.items():
            d = base / name
            d.mkdir(exist_ok=True)
            if self.version == 2:
                (d / "memory.max").write_text(str(memory))
                (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
                (d / "cpu.max").write_text(f"{int(cpu * PERIOD)} {PERIOD}")
            elif ctrl == "memory":
                (d / "memory.limit_in_bytes").write_text(str(memory))
            else:
                (d / "cpu.cfs_period_us").write_text(str(PERIOD))
                (d / "cpu.cfs_quota_us").write_text(str(int(cpu * PERIOD)))
            paths.append(str(d))
        return Group(tuple(paths), self.version)

    @staticmethod
    def join(group: Group | None) -> None:
        """Move the calling process into the group (run in the child, before it drops root)."""
        if group is None:
            return
        for p in group.paths:
            with open(os.path.join(p, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    @staticmethod
    def remove(group: Group | None) -> None:
        """Kill what is left in the group (orphaned kernels) and delete it."""
        if group is None:
            return
        for pid in group.procs():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in group.paths:
            for _ in range(50):
                try:
                    os.rmdir(p)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    import time

                    time.sleep(0.1)
