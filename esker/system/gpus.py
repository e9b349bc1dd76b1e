"""This machine's GPUs, from NVML: the one place Esker talks to the driver, kept to reading a *snapshot* (plain
data, the same shape `esker gpus --json` prints), so everything after it is pure and is tested with snapshots
recorded from real devices.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

from esker.core.gpus import DeviceUsage, Gpu, pinned_gpus, type_of

log = logging.getLogger(__name__)

__all__ = ["Gpu", "NvmlUnavailable", "read_nvml", "gpus_from_snapshot", "usage_from_snapshot", "configured_gpus",
           "UsageReader"]


class NvmlUnavailable(RuntimeError):
    """NVML cannot answer: no library, no driver, or the driver failed. ``absent`` is True for the normal case of a
    machine without NVIDIA's driver, False for a driver that is there and failing."""

    def __init__(self, reason: str, absent: bool):
        super().__init__(reason)
        self.absent = absent


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_nvml() -> dict[str, Any]:
    """Every device NVML reports, with its use now: {"driver", "devices": [{index, name, uuid, minor,
    memory_total, memory_used, utilization, processes: [pid, ...]}]}."""
    try:
        import pynvml
    except ImportError as e:
        raise NvmlUnavailable(f"the NVML bindings are not installed ({e})", absent=True) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        absent = isinstance(e, (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded))
        raise NvmlUnavailable(f"NVML: {e}", absent=absent) from None
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            devices.append({
                "index": i,
                "name": _text(pynvml.nvmlDeviceGetName(h)),
                "uuid": _text(pynvml.nvmlDeviceGetUUID(h)),
                "minor": int(pynvml.nvmlDeviceGetMinorNumber(h)),
                "memory_total": int(mem.total),
                "memory_used": int(mem.used),
                "utilization": float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                "processes": [int(p.pid) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)],
            })
        return {"driver": _text(pynvml.nvmlSystemGetDriverVersion()), "devices": devices}
    except pynvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML failed while listing devices: {e}", absent=False) from None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def gpus_from_snapshot(snapshot: Mapping[str, Any], types: Mapping[str, Mapping[str, Any]]) -> list[Gpu]:
    """The hub's devices, typed by gpus.types' product names."""
    return [Gpu(str(d["index"]), d["name"], d.get("uuid", ""), int(d.get("memory_total", 0)),
                type_of(d["name"], types), d.get("minor", d["index"]))
            for d in snapshot.get("devices", ())]


def usage_from_snapshot(snapshot: Mapping[str, Any]) -> dict[str, DeviceUsage]:
    """Device id -> its use at the snapshot's moment."""
    return {str(d["index"]): DeviceUsage(str(d["index"]), float(d.get("utilization", 0.0)), int(d.get("memory_used", 0)),
                                         int(d.get("memory_total", 0)), len(d.get("processes", ())),
                                         d.get("uuid", ""), d.get("name", ""))
            for d in snapshot.get("devices", ())}


def configured_gpus(setting, types: Mapping[str, Mapping[str, Any]] | None = None,
                    read=read_nvml) -> tuple[list[Gpu], str | None]:
    """gpus.devices: "auto" (NVML) or the operator's list. Returns the devices and, when there are none to hand
    out, why (for the spawn page and `esker status`); a failing driver is logged, never fatal."""
    if setting != "auto":
        return pinned_gpus(setting), None
    try:
        gpus = gpus_from_snapshot(read(), types or {})
    except NvmlUnavailable as e:
        (log.info if e.absent else log.error)("GPUs unavailable: %s", e)
        return [], (f"no NVIDIA driver on this machine ({e})" if e.absent else f"the NVIDIA driver failed: {e}")
    return gpus, (None if gpus else "NVML reports no GPU")


class UsageReader:
    """NVML's answer for every device, read at most once per ``interval`` however many servers and scrapes ask
    (each server's poll and /hub/metrics share it); {} while NVML cannot answer."""

    def __init__(self, interval: float = 30.0, read=read_nvml):
        self.interval = interval
        self._read = read
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._usage: dict[str, DeviceUsage] = {}
        self._failing = False

    def __call__(self) -> dict[str, DeviceUsage]:
        with self._lock:
            if time.monotonic() - self._at < self.interval / 2:
                return self._usage
            self._at = time.monotonic()
            try:
                self._usage = usage_from_snapshot(self._read())
                self._failing = False
            except NvmlUnavailable as e:
                if not self._failing:
                    log.warning("GPU use unknown: %s", e)
                self._failing, self._usage = True, {}
            return self._usage
