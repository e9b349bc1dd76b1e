"""Which GPUs this machine has: NVML when the driver is there, else none, or the operator's list."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    id: str  # the value that goes into CUDA_VISIBLE_DEVICES
    name: str = ""
    uuid: str = ""
    memory: int = 0


def detect_nvml() -> list[Gpu]:
    """GPUs NVML reports; an empty list when there is no driver (the normal case on a laptop or CI)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.info("no NVIDIA GPUs (NVML: %s)", e)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            gpus.append(Gpu(str(i), name if isinstance(name, str) else name.decode(),
                            uuid if isinstance(uuid, str) else uuid.decode(), int(mem)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def usage_by_device() -> dict[str, dict[str, float]]:
    """Utilisation (%) and memory used (bytes) per device id, for metrics; empty without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out[str(i)] = {"utilization": float(util.gpu), "memory_used": float(mem.used)}
        return out
    finally:
        pynvml.nvmlShutdown()


def configured_gpus(setting) -> list[Gpu]:
    """gpus.devices from esker.yaml: 'auto' (NVML) or an explicit list of device ids."""
    if setting == "auto":
        return detect_nvml()
    return [Gpu(str(d)) for d in setting]
