"""Facts about one installation that esker.yaml does not hold: its state directory, stable ports,
generated secrets, the proxy binary and the Spark home. Impure on purpose; traits.py stays pure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from esker.system.ports import stable_port

from esker.core import config as config_mod



@dataclass(frozen=True)
class Deployment:
    """Facts about this installation that are not in esker.yaml."""

    state_dir: str
    config_file: str
    port: int
    hub_port: int
    proxy_api_port: int
    proxy_command: list[str]
    user_password: str = ""
    admin_password: str = ""
    admin_token: str = ""
    python: str = sys.executable
    extra_services: list[dict] = field(default_factory=list)



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
    """$ESKER_PROXY, else configurable-http-proxy on PATH (`make` puts node_modules/.bin there), else the one
    npm installed beside the virtual environment this Python runs from."""
    if os.environ.get("ESKER_PROXY"):
        return [os.environ["ESKER_PROXY"]]
    beside_venv = Path(sys.prefix).parent / "node_modules" / ".bin"
    found = shutil.which("configurable-http-proxy") or shutil.which("configurable-http-proxy", path=str(beside_venv))
    if found:
        return [found]
    raise FileNotFoundError("configurable-http-proxy not found: run `make install` (npm install)")


# Files of the hub's that JupyterHub and the proxy create with the process's umask: made (or tightened) 0600
# first, so no other account opens them. SQLite gives its journal the mode of the database file.
HUB_PRIVATE_FILES = ("jupyterhub.sqlite", "jupyterhub.sqlite-journal", "jupyterhub_cookie_secret")


def run_dir(state_dir: str) -> str:
    """Pid files (the hub's, the proxy's, each supervised service's): a 0700 folder, since JupyterHub
    re-creates the proxy's pid file with the process's umask each time it restarts the proxy."""
    return os.path.join(state_dir, "run")


def private_state(state_dir: str) -> None:
    """The state directory is root's: others may pass through it (0711) to what is theirs, never list it,
    and the hub's own files in it are 0600."""
    os.makedirs(state_dir, exist_ok=True)
    os.chmod(state_dir, os.stat(state_dir).st_mode & 0o755 & ~0o044)
    os.makedirs(run_dir(state_dir), mode=0o700, exist_ok=True)
    os.chmod(run_dir(state_dir), 0o700)
    for name in HUB_PRIVATE_FILES:
        path = os.path.join(state_dir, name)
        if name == "jupyterhub.sqlite" or os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            os.chmod(path, 0o600)


def deployment(cfg: config_mod.EskerConfig, state_dir: str, config_file: str) -> Deployment:
    private_state(state_dir)
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
        python=sys.executable,
    )
