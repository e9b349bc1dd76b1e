"""The GPUs this server may use: ``CUDA_VISIBLE_DEVICES`` (set by Esker, empty when none were assigned),
with names and memory from NVML when ``nvidia-ml-py`` and a driver are present."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

from ._env import environ

_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+$")


@dataclass(frozen=True)
class GPU:
    id: str  # as written in CUDA_VISIBLE_DEVICES: a host index ("1") or a UUID ("GPU-...")
    index: int  # the device number inside this server's processes (cuda:0, /GPU:0, ...)
    name: Optional[str] = None
    memory_mib: Optional[int] = None
    uuid: Optional[str] = None

    def __str__(self) -> str:
        extra = ", ".join(x for x in (self.name, f"{self.memory_mib} MiB" if self.memory_mib else None) if x)
        return f"cuda:{self.index} (host GPU {self.id}{': ' + extra if extra else ''})"


def visible_device_ids(env: Optional[Mapping[str, str]] = None) -> Optional[List[str]]:
    """The ids in CUDA_VISIBLE_DEVICES; ``[]`` when it is empty, ``None`` when it is not set at all.

    As CUDA does, the list ends at the first entry that is neither an index nor a GPU/MIG UUID.
    """
    raw = environ(env).get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    ids: List[str] = []
    for part in raw.split(","):
        part = part.strip()
        if part.isdigit() or _UUID.match(part):
            ids.append(part)
        else:
            break
    return ids


def _nvml():
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def gpus(env: Optional[Mapping[str, str]] = None, nvml=None) -> List[GPU]:
    """The GPUs visible to this server, in the order processes number them.

    Names and memory come from NVML when it is available; without it only the ids are known. When
    CUDA_VISIBLE_DEVICES is not set (not an Esker server) every GPU NVML sees is listed.
    """
    ids = visible_device_ids(env)
    lib = nvml if nvml is not None else (_nvml() if ids != [] else None)
    if ids is None:
        if lib is None:
            return []
        try:
            ids = [str(i) for i in range(lib.nvmlDeviceGetCount())]
        except Exception:
            return []
    out: List[GPU] = []
    for index, gid in enumerate(ids):
        name = mem = uuid = None
        if lib is not None:
            try:
                handle = (
                    lib.nvmlDeviceGetHandleByIndex(int(gid))
                    if gid.isdigit()
                    else lib.nvmlDeviceGetHandleByUUID(gid)
                )
                name = _text(lib.nvmlDeviceGetName(handle))
                mem = int(lib.nvmlDeviceGetMemoryInfo(handle).total) // 2**20
                uuid = _text(lib.nvmlDeviceGetUUID(handle))
            except Exception:
                pass
        out.append(GPU(gid, index, name, mem, uuid))
    return out
