"""CPU and memory limits for embedded servers, with Linux control groups (v2, or v1's memory and cpu
controllers), when the hub may create them. Each server gets a group under the hub's own; the server
process joins it before it execs, so everything it starts (kernels, Spark drivers) is inside.

The group also makes the server's GPUs exclusive (esker.system.devices): v1's devices controller where it is
mounted, otherwise a BPF device program on the server's cgroup2 directory. The rule is in place before any
process joins.

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
from typing import Iterable

from esker.system import devices
from esker.system.devices import DeviceRuleError

log = logging.getLogger(__name__)
ROOT = Path("/sys/fs/cgroup")
PERIOD = 100_000  # microseconds


@dataclass(frozen=True)
class Group:
    """One server's cgroup: a directory per controller (v1) or a single one (v2). ``devices`` names how its GPUs
    are made exclusive: "v1" (a directory of v1's devices controller is among ``paths``), "bpf" (a device
    program on its cgroup2 directory, among ``paths``) or "" (not enforced)."""

    paths: tuple[str, ...]
    version: int
    devices: str = ""

    @classmethod
    def from_state(cls, state: dict) -> "Group":
        """From to_state()'s dict, or the older {"paths", "version"} (devices: "")."""
        return cls(tuple(state["paths"]), int(state["version"]), state.get("devices", ""))

    def to_state(self) -> dict:
        return {"paths": list(self.paths), "version": self.version, "devices": self.devices}

    def devices_dir(self, mechanism: str) -> str | None:
        """The directory that carries the rule of ``mechanism`` ("v1" or "bpf"), if the group has one."""
        marker = "devices.deny" if mechanism == "v1" else "cgroup.controllers"  # only cgroup2 has the latter
        return next((p for p in self.paths if Path(p, marker).exists()), None)

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


def _cgroup2_mount() -> Path | None:
    """Where the cgroup2 hierarchy is mounted: /sys/fs/cgroup (v2) or /sys/fs/cgroup/unified (hybrid)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    return None


def _own_cgroup_dirs() -> dict[str, Path]:
    """controller -> the directory of this process's cgroup for it ("unified" on v2; "cgroup2" on v2 and
    hybrid hosts, for device programs)."""
    dirs: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and (ROOT / "cgroup.controllers").exists():
            dirs["unified"] = ROOT / path.lstrip("/")
        if controllers == "" and (mount := _cgroup2_mount()) is not None:
            dirs["cgroup2"] = mount / path.lstrip("/")
        for c in controllers.split(","):
            if c in ("memory", "cpu", "devices") and (ROOT / c).is_dir():
                dirs[c] = ROOT / c / path.lstrip("/")
    return dirs


class Limiter:
    """Creates the servers' groups. ``devices`` chooses how GPUs are made exclusive: "auto" (v1's devices
    controller where it is mounted, else a BPF program on the server's cgroup2 directory), "bpf" (the program,
    also on a hybrid host that has the v1 controller: tests use it) or "none"."""

    def __init__(self, namespace: str = "esker", devices: str = "auto"):
        if devices not in ("auto", "bpf", "none"):
            raise ValueError(f"devices must be auto, bpf or none, not {devices!r}")
        self.namespace = namespace
        self.version = 0
        self.bases: dict[str, Path] = {}
        self.devices = ""  # the mechanism in use: "v1", "bpf" or "" (GPUs not exclusive)
        if os.environ.get("ESKER_NO_CGROUPS"):  # operator's escape hatch (and for measuring their cost)
            log.warning("ESKER_NO_CGROUPS is set: CPU/memory limits are reported, not enforced, "
                        "and GPU exclusivity is not enforced")
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
                        "they are reported to servers as ESKER_CPU_LIMIT/ESKER_MEM_LIMIT only, "
                        "and GPU exclusivity is not enforced", e)
            self.version, self.bases = 0, {}
        if self.version:
            self._devices_setup(devices, dirs)

    def _devices_setup(self, want: str, dirs: dict[str, Path]) -> None:
        if want == "none":
            log.warning("GPU exclusivity is not enforced (devices='none'): CUDA_VISIBLE_DEVICES only")
            return
        if want == "auto" and self.version == 1 and "devices" in dirs:
            mech, ctrl, base = "v1", "devices", dirs["devices"] / self.namespace
        elif self.version == 2:  # v2 has no devices controller: a program on the server's own directory
            mech, ctrl, base = "bpf", "unified", self.bases["unified"]
        elif "cgroup2" in dirs:  # hybrid: the cgroup2 mount next to v1's controllers
            mech, ctrl, base = "bpf", "cgroup2", dirs["cgroup2"] / self.namespace
        else:
            log.warning("GPU exclusivity is not enforced: neither v1's devices controller nor cgroup2 is mounted")
            return
        try:
            base.mkdir(exist_ok=True)
            if mech == "bpf":
                devices.query_v2(base)  # bpf(2) is usable here: privileges, architecture
        except (OSError, DeviceRuleError) as e:
            log.warning("GPU exclusivity is not enforced (%s): CUDA_VISIBLE_DEVICES only", e)
            return
        self.devices, self.bases[ctrl] = mech, base

    @property
    def enabled(self) -> bool:
        return bool(self.version)

    def _devices_ctrl(self) -> str:
        return {"v1": "devices", "bpf": "unified" if self.version == 2 else "cgroup2"}[self.devices]

    @staticmethod
    def _apply(mechanism: str, d: str | Path, gpu_minors: tuple[int, ...]) -> None:
        if mechanism == "v1":
            devices.apply_v1(d, gpu_minors)  # idempotent
        elif devices.query_v2(d) == 0:  # a program outlives the hub that attached it: attach only where none is
            devices.attach_v2(d, gpu_minors)

    def create(self, key: str, cpu: float, memory: int, gpu_minors: Iterable[int] = ()) -> Group | None:
        """The server's group, its GPUs (the N of /dev/nvidiaN) already its only ones before anyone joins.
        Raises DeviceRuleError (having removed what it made) if the device rule cannot be put in place."""
        if not self.enabled:
            return None
        minors = tuple(gpu_minors)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        paths: list[str] = []
        try:
            for ctrl, base in self.bases.items():
                d = base / name
                try:  # a crashed hub's leftover, empty: start afresh (its device rule may name other GPUs)
                    d.rmdir()
                except OSError:
                    pass
                d.mkdir(exist_ok=True)
                paths.append(str(d))
                if ctrl == "devices":
                    self._apply("v1", d, minors)
                elif ctrl == "cgroup2":
                    pass  # a hybrid host's cgroup2 directory: only the device program below
                elif self.version == 2:
                    (d / "memory.max").write_text(str(memory))
                    (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
                    (d / "cpu.max").write_text(f"{int(cpu * PERIOD)} {PERIOD}")
                elif ctrl == "memory":
                    (d / "memory.limit_in_bytes").write_text(str(memory))
                else:
                    (d / "cpu.cfs_period_us").write_text(str(PERIOD))
                    (d / "cpu.cfs_quota_us").write_text(str(int(cpu * PERIOD)))
            if self.devices == "bpf":
                self._apply("bpf", self.bases[self._devices_ctrl()] / name, minors)
        except BaseException:
            for p in paths:  # nobody has joined yet: empty directories
                try:
                    os.rmdir(p)
                except OSError:
                    pass
            raise
        return Group(tuple(paths), self.version, self.devices)

    def restrict_devices(self, group: Group | None, gpu_minors: Iterable[int] = ()) -> Group | None:
        """Make sure an existing group (say, one restored after a hub restart) has its device rule; idempotent.
        A group from before device rules gets a devices directory, its processes moved in after the rule is
        written. Returns the group as it is now: keep it in place of the old one. A rule already in place is
        kept as it is (a server's GPUs do not change while it runs)."""
        if group is None or not self.devices:
            return group
        minors = tuple(gpu_minors)
        for mech in dict.fromkeys((group.devices, self.devices)):
            d = group.devices_dir(mech) if mech else None
            if d is not None:
                self._apply(mech, d, minors)
                return Group(group.paths, group.version, mech)
        d = self.bases[self._devices_ctrl()] / Path(group.paths[0]).name
        try:
            d.mkdir(exist_ok=True)
            self._apply(self.devices, d, minors)
            moved: set[int] = set()
            while pids := group.procs() - moved:  # one forked meanwhile is in the next round
                for pid in pids:
                    try:
                        Path(d, "cgroup.procs").write_text(str(pid))
                    except ProcessLookupError:
                        pass
                moved |= pids
        except OSError as e:
            raise DeviceRuleError(f"cannot give {group.paths[0]} a device rule: {e}") from e
        return Group(group.paths + (str(d),), group.version, self.devices)

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
