"""GPUs as plain data, for both modes: what a device is used for right now (:class:`DeviceUsage`, from NVML on one
machine or the DCGM exporter on Kubernetes), which type a product name is, how many of each type are free, and
the GPU policy (idle servers and a maximum runtime) as a pure decision over those samples.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


IDLE_MEMORY = 128 * 1024**2  # below this, a device without a process list counts as holding no context


@dataclass(frozen=True)
class DeviceUsage:
    """One GPU at one moment. ``processes`` is the number of compute processes on it, or None where the source
    cannot tell (the DCGM exporter), in which case memory in use stands for them (a CUDA context takes some)."""

    device: str  # the hub's id of the device: the ledger's item on one machine, the GPU's UUID on Kubernetes
    utilization: float  # percent, 0..100, over NVML's last sample period
    memory_used: int  # bytes
    memory_total: int = 0  # bytes
    processes: int | None = None
    uuid: str = ""
    product: str = ""

    def idle(self) -> bool:
        if self.utilization > 0:
            return False
        if self.processes is not None:
            return self.processes == 0
        # No process list: a CUDA context holds 300-600 MB of device memory; a device nobody uses shows a few MB.
        return self.memory_used < IDLE_MEMORY


@dataclass(frozen=True)
class Gpu:
    """A device this hub hands out (embedded mode)."""

    id: str  # the ledger's item: NVML's index, or the operator's pinned id
    name: str = ""  # NVML's product name
    uuid: str = ""
    memory: int = 0
    type: str | None = None  # the key of gpus.types it belongs to
    minor: int | None = None  # N of /dev/nvidiaN, for the server's device rule

    @property
    def visible_id(self) -> str:
        """What goes into CUDA_VISIBLE_DEVICES: the UUID where NVML gave one, since CUDA's own numbering follows
        neither NVML's index (its default order is fastest first) nor survives a device rule that hides the others."""
        return self.uuid or self.id


def type_of(product: str, types: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The first key of ``gpus.types`` whose products (shell patterns, case ignored; default: its display_name)
    match NVML's product name; None when none does."""
    name = product.strip().lower()
    for key, t in types.items():
        patterns = t.get("products") or ([t["display_name"]] if t.get("display_name") else [])
        if any(fnmatch.fnmatchcase(name, p.strip().lower()) for p in patterns):
            return key
    return None


def pinned_gpus(devices: Iterable[Any]) -> list[Gpu]:
    """``gpus.devices`` as a list: ids ("0") or {id, type}; the id is also the device node's minor."""
    out = []
    for d in devices:
        d = {"id": d} if isinstance(d, str) else dict(d)
        out.append(Gpu(str(d["id"]), type=d.get("type"), minor=int(d["id"]) if str(d["id"]).isdigit() else None))
    return out


@dataclass(frozen=True)
class Availability:
    """GPUs of one type (None: of any type) on this hub: how many exist and how many nobody holds."""

    total: int
    free: int


def availability(gpus: Iterable[Gpu], held: Iterable[str]) -> dict[str | None, Availability]:
    """Per type, and under None for all of them together."""
    held = set(held)
    out: dict[str | None, list[int]] = {None: [0, 0]}
    for g in gpus:
        for key in {None, g.type}:
            n = out.setdefault(key, [0, 0])
            n[0] += 1
            n[1] += g.id not in held
    return {k: Availability(*v) for k, v in out.items()}


def pool(gpus: Iterable[Gpu], gpu_type: str | None) -> list[str]:
    """The ids a server asking for ``gpu_type`` (None: any) may be given."""
    return [g.id for g in gpus if gpu_type is None or g.type == gpu_type]


def describe(gpu_type: str | None, types: Mapping[str, Mapping[str, Any]]) -> str:
    """'NVIDIA A100 GPU' for a type, 'GPU' for any."""
    if gpu_type is None:
        return "GPU"
    return f"{types.get(gpu_type, {}).get('display_name') or gpu_type} GPU"


# -- the GPU policy ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuPolicy:
    idle_timeout: int = 0  # seconds; 0: never
    max_runtime: int = 0  # seconds; 0: no limit

    @classmethod
    def of(cls, hub: Mapping[str, Any], profile: Mapping[str, Any] | None) -> "GpuPolicy":
        """The hub's gpus.policy with the profile's gpu_policy over it, field by field."""
        merged = {**{k: v for k, v in hub.items() if v is not None}, **{k: v for k, v in (profile or {}).items() if v is not None}}
        return cls(int(merged.get("idle_timeout", 0) or 0), int(merged.get("max_runtime", 0) or 0))

    @property
    def active(self) -> bool:
        return bool(self.idle_timeout or self.max_runtime)


@dataclass(frozen=True)
class Verdict:
    reason: str  # idle or max_runtime (the metric's label)
    message: str


def idle_since(previous: float | None, usage: Iterable[DeviceUsage] | None, expected: int, now: float) -> float | None:
    """When the server's GPUs became idle (all of them), carried over from the last sample; None while any is busy
    or while their use is unknown (no NVML or exporter answer for every device): unknown is never idle."""
    usage = list(usage or ())
    if not usage or len(usage) < expected or not all(u.idle() for u in usage):
        return None
    return previous if previous is not None else now


def judge(policy: GpuPolicy, *, started: float | None, idle_from: float | None, now: float) -> Verdict | None:
    """Whether a server holding GPUs is to be stopped now, and why, in words for its user and the hub's log."""
    if policy.max_runtime and started is not None and now - started >= policy.max_runtime:
        return Verdict("max_runtime", f"it ran for {_span(now - started)}, the most a server with GPUs may run "
                                      f"here ({_span(policy.max_runtime)})")
    if policy.idle_timeout and idle_from is not None and now - idle_from >= policy.idle_timeout:
        return Verdict("idle", f"its GPUs were idle (no computation, no process on them) for {_span(now - idle_from)}; "
                               f"the limit is {_span(policy.idle_timeout)}")
    return None


def _span(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s / 3600:.1f} h"
