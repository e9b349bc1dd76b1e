"""Local TCP ports: free ones to listen on (loopback), and ports picked once and remembered in the state
directory so a restarted hub finds the proxy and services it left running.
"""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_range(count: int, host: str = "127.0.0.1", start: int = 20000, stop: int = 60000) -> int:
    """The first port of ``count`` consecutive ports that are free now (random start)."""
    for _ in range(200):
        base = random.randrange(start, stop - count)
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no {count} consecutive free ports on {host}")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stable_port(state_dir: str, name: str, wanted: int = 0) -> int:
    """``wanted`` if set, else a port picked once and kept in ``<state_dir>/ports.json`` (root's only)."""
    if wanted:
        return wanted
    path = Path(state_dir) / "ports.json"
    ports = json.loads(path.read_text()) if path.exists() else {}
    if name not in ports:
        ports[name] = free_port()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(ports, f, indent=1)
        os.replace(tmp, path)
    return ports[name]
