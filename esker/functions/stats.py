"""The functions' counters for the hub's metrics: the service merges each running function server's ``GET
stats`` (esker_client.functions.stats) and its own cold starts into one 0600 JSON snapshot in the state dir;
the hub's scrape-time collector (esker.metrics.FunctionsCollector) reads it."""

from __future__ import annotations

import json
import os


def snapshot(servers: dict, cold_starts: dict) -> dict:
    """``servers``: "owner/name" -> the server's stats JSON; ``cold_starts``: "owner/name" -> [count, seconds]."""
    out = {}
    for key in sorted(set(servers) | set(cold_starts)):
        n, s = cold_starts.get(key, [0, 0.0])
        out[key] = {"versions": (servers.get(key) or {}).get("versions") or {}, "cold_starts": n,
                    "cold_start_seconds": s}
    return {"functions": out}


def busy(server_stats: dict | None) -> bool:
    """Whether a function server's ``GET stats`` shows a call or task in flight (unknown: not busy)."""
    return any((v or {}).get("in_flight") for v in ((server_stats or {}).get("versions") or {}).values())


def write(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f).get("functions") or {}
    except (OSError, ValueError):
        return {}
