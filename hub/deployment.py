"""Facts about one installation that esker.yaml does not hold: its state directory, stable ports,
generated secrets, the proxy binary and the Spark home. Impure on purpose; traits.py stays pure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

from . import config as config_mod
from .traits import Deployment

REPO_ROOT = config_mod.REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stable_port(state_dir: str, name: str, wanted: int) -> int:
    """A port picked once and remembered, so a restarted hub finds the proxy it left running."""
    if wanted:
        return wanted
    path = Path(state_dir) / "ports.json"
    ports = json.loads(path.read_text()) if path.exists() else {}
    if name not in ports:
        ports[name] = free_port()
        path.write_text(json.dumps(ports, indent=1))
    return ports[name]


def secret(state_dir: str, name: str, nbytes: int = 24, env: str | None = None) -> str:
    """Read a secret from $env or secrets/<name>, generating it (mode 0600) on first use."""
    if env and os.environ.get(env):
        return os.environ[env]
    d = Path(state_dir) / "secrets"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    path = d / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


def proxy_command() -> list[str]:
    for cand in (REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy",):
        if cand.exists():
            return [str(cand)]
    found = shutil.which("configurable-http-proxy")
    if found:
        return [found]
    raise FileNotFoundError("configurable-http-proxy not found: run `make install` (npm install)")


def deployment(cfg: config_mod.EskerConfig, state_dir: str, config_file: str, spark_home: str = "") -> Deployment:
    os.makedirs(state_dir, exist_ok=True)
    hub = cfg["hub"]
    port = int(os.environ.get("ESKER_PORT") or hub["port"])
    os.environ["CONFIGPROXY_AUTH_TOKEN"] = secret(state_dir, "proxy_auth_token", 32, env="CONFIGPROXY_AUTH_TOKEN")
    return Deployment(
        state_dir=state_dir,
        config_file=config_file,
        port=port,
        hub_port=stable_port(state_dir, "hub", hub["hub_port"]),
        proxy_api_port=stable_port(state_dir, "proxy_api", hub["proxy_api_port"]),
        proxy_command=proxy_command(),
        user_password=secret(state_dir, "shared-password", 12) if cfg["auth"]["type"] == "shared-password" else "",
        admin_password=secret(state_dir, "admin-password", 32) if cfg["auth"]["type"] == "shared-password" else "",
        admin_token=os.environ.get("ESKER_ADMIN_TOKEN", ""),
        spark_home=spark_home,
        python=sys.executable,
    )
