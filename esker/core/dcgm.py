"""GPU use per pod from NVIDIA's DCGM exporter (Kubernetes), as plain data. Pure: the text in, the samples out;
esker.system.dcgm_source fetches the text.

The exporter (deployed by the GPU Operator, with its Kubernetes pod mapping) writes the Prometheus text
exposition, one series per GPU and field, labelled with the GPU (``gpu``, ``UUID``, ``pci_bus_id``, ``device``,
``modelName``, ``Hostname``) and, where a pod holds the GPU, that pod (``namespace``, ``pod``, ``container``).
:func:`parse` turns it into :class:`~esker.core.gpus.DeviceUsage` per ``(namespace, pod)``:

- utilisation: ``DCGM_FI_DEV_GPU_UTIL`` (percent); where a device has none (MIG instances do not report it), the
  profiling field ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (a ratio) times 100;
- memory used: ``DCGM_FI_DEV_FB_USED`` (MiB, in bytes here); total: ``DCGM_FI_DEV_FB_TOTAL`` where exported,
  else used + ``DCGM_FI_DEV_FB_FREE`` (0 when neither is there);
- ``device`` and ``uuid``: the ``UUID`` label (a MIG instance: ``<UUID>/<GPU_I_ID>``, its GPU's UUID in ``uuid``);
  ``product``: ``modelName``; ``processes``: None, the exporter has no process count (``DeviceUsage.idle`` then
  reads memory in use as a CUDA context).

Decisions:

- GPUs no pod holds (no ``pod`` label, or an empty one) are kept, under the key ``("", "")``: ``all()`` shows the
  cluster's unused GPUs, and no server's pod can be named "" (so no server is ever handed them).
- A device without a utilisation series or without ``DCGM_FI_DEV_FB_USED`` is left out: its use is unknown, and
  unknown is never "idle" (the policy stops nothing on a guess). So is a series without a ``UUID`` label.
- Series re-exported by Prometheus (its ``/federate`` endpoint, or a ServiceMonitor without honorLabels) carry
  the exporter pod's own ``pod``/``namespace`` and the GPU user's as ``exported_pod``/``exported_namespace``:
  the ``exported_`` labels win where present.
- A line that does not parse is skipped (counted in ``bad`` when asked), the rest of the text still counts;
  NaN and infinite values are no reading.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from esker.core.gpus import DeviceUsage

UTIL = "DCGM_FI_DEV_GPU_UTIL"  # percent
GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"  # ratio, 0..1
FB_USED = "DCGM_FI_DEV_FB_USED"  # MiB
FB_FREE = "DCGM_FI_DEV_FB_FREE"  # MiB
FB_TOTAL = "DCGM_FI_DEV_FB_TOTAL"  # MiB
FIELDS = (UTIL, GR_ENGINE_ACTIVE, FB_USED, FB_FREE, FB_TOTAL)
MIB = 1024 * 1024
UNUSED = ("", "")  # the key of GPUs no pod holds

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class _Malformed(ValueError):
    pass


def _parse_line(line: str) -> Sample:
    m = _NAME.match(line)
    if not m:
        raise _Malformed("no metric name")
    name, i, n = m.group(), m.end(), len(line)
    labels: dict[str, str] = {}
    braced = i < n and line[i] == "{"
    if braced:
        i += 1
        while True:
            while i < n and line[i] in " \t":
                i += 1
            if i < n and line[i] == "}":
                i += 1
                break
            lm = _LABEL.match(line, i)
            if not lm:
                raise _Malformed("bad label name")
            key, i = lm.group(), lm.end()
            if line[i:i + 2] != '="':
                raise _Malformed("label without a quoted value")
            i += 2
            chars = []
            while True:
                if i >= n:
                    raise _Malformed("unterminated label value")
                c = line[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    if i + 1 >= n or line[i + 1] not in _ESCAPES:
                        raise _Malformed("bad escape")
                    chars.append(_ESCAPES[line[i + 1]])
                    i += 2
                    continue
                chars.append(c)
                i += 1
            if key in labels:
                raise _Malformed(f"label {key} twice")
            labels[key] = "".join(chars)
            while i < n and line[i] in " \t":
                i += 1
            if i < n and line[i] == ",":
                i += 1
                continue
            if i < n and line[i] == "}":
                i += 1
                break
            raise _Malformed("expected , or }")
    rest = line[i:].split()
    if not rest or len(rest) > 2 or (not braced and line[i:i + 1] not in (" ", "\t")):
        raise _Malformed("expected a value (and at most a timestamp)")
    try:
        value = float(rest[0])  # Python reads NaN, +Inf and -Inf as Prometheus writes them
        if len(rest) == 2:
            int(rest[1])
    except ValueError as e:
        raise _Malformed(str(e)) from None
    return Sample(name, labels, value)


def samples(text: str, bad: list[int] | None = None) -> Iterator[Sample]:
    """Every sample of a Prometheus text exposition, in order. Comments (HELP, TYPE) and blank lines are
    skipped; so is a line that does not parse, its 1-based number appended to ``bad`` when given."""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            yield _parse_line(line)
        except _Malformed:
            if bad is not None:
                bad.append(number)


def pod_key(labels: dict[str, str]) -> tuple[str, str]:
    """(namespace, pod) of the pod that holds the GPU of a series; ("", "") when none does."""
    if "exported_pod" in labels:
        pod, ns = labels["exported_pod"], labels.get("exported_namespace", "")
    else:
        pod, ns = labels.get("pod", ""), labels.get("namespace", "")
    return (ns, pod) if pod else UNUSED


def device_of(labels: dict[str, str]) -> str:
    """The device id of a series: its UUID, with the MIG instance after a slash; "" without a UUID."""
    uuid = labels.get("UUID", "")
    instance = labels.get("GPU_I_ID", "")
    return f"{uuid}/{instance}" if uuid and instance else uuid


def _gpu_index(labels: dict[str, str]) -> int:
    try:
        return int(labels.get("gpu", ""))
    except ValueError:
        return 1 << 30


def usage_by_pod(series: Iterable[Sample]) -> dict[tuple[str, str], list[DeviceUsage]]:
    """DeviceUsage per (namespace, pod) from the exporter's samples (the module's docstring has the rules).
    Each list is in the exporter's GPU order (the ``gpu`` label, then the device id)."""
    fields: dict[tuple[tuple[str, str], str], dict[str, float]] = {}
    meta: dict[tuple[tuple[str, str], str], tuple[int, str, str]] = {}
    for s in series:
        if s.name not in FIELDS or math.isnan(s.value) or math.isinf(s.value):
            continue
        device = device_of(s.labels)
        if not device:
            continue
        key = (pod_key(s.labels), device)
        fields.setdefault(key, {})[s.name] = s.value
        if key not in meta or not meta[key][2]:
            meta[key] = (_gpu_index(s.labels), s.labels.get("UUID", ""), s.labels.get("modelName", ""))
    out: dict[tuple[str, str], list[tuple[tuple[int, str], DeviceUsage]]] = {}
    for (pod, device), f in fields.items():
        if UTIL in f:
            util = f[UTIL]
        elif GR_ENGINE_ACTIVE in f:
            util = f[GR_ENGINE_ACTIVE] * 100.0
        else:
            continue
        if FB_USED not in f:
            continue
        used = int(f[FB_USED] * MIB)
        if FB_TOTAL in f:
            total = int(f[FB_TOTAL] * MIB)
        elif FB_FREE in f:
            total = used + int(f[FB_FREE] * MIB)
        else:
            total = 0
        index, uuid, product = meta[(pod, device)]
        usage = DeviceUsage(device=device, utilization=min(max(util, 0.0), 100.0), memory_used=max(used, 0),
                            memory_total=max(total, 0), processes=None, uuid=uuid, product=product)
        out.setdefault(pod, []).append(((index, device), usage))
    return {pod: [u for _, u in sorted(items, key=lambda t: t[0])] for pod, items in sorted(out.items())}


def parse(text: str, bad: list[int] | None = None) -> dict[tuple[str, str], list[DeviceUsage]]:
    """The DCGM exporter's metrics text -> DeviceUsage per (namespace, pod); GPUs no pod holds under ("", "")."""
    return usage_by_pod(samples(text, bad))
