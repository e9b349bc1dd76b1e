"""Units: byte sizes and CPU amounts as people write them in esker.yaml, and as Spark and Kubernetes want
them. Layer 0: imports nothing of Esker, so every other layer may use it.
"""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGTPkmgtp]?)(i?)[Bb]?$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_size(value: str | int) -> int:
    """'4G' -> 4294967296. Sizes are powers of 1024 whether written 4G or 4Gi."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a size (use e.g. 512M, 4G, 20Gi)")
    number, unit, _ = m.groups()
    return int(float(number) * _UNITS[unit.lower()])


def spark_size(value: str | int) -> str:
    """'1G' -> '1024m': Spark's own size syntax (whole mebibytes), from ours."""
    return f"{parse_size(value) // 1024**2}m"


def cpu_quantity(cores: float) -> str:
    """2.0 -> '2', 0.5 -> '500m': a Kubernetes CPU quantity."""
    return str(int(cores)) if float(cores).is_integer() else f"{round(cores * 1000)}m"
