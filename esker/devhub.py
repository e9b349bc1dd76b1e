"""A throwaway embedded hub for the tests and the benchmarks: `esker run` as a subprocess with its own
state directory, free loopback ports and account prefix, driven through the package's REST client
(:mod:`esker.hubapi`), and torn down with everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from esker import resources
from esker.app import shutdown
from esker.hubapi import Hub

# The `esker` command of this interpreter's environment (the venv the tests and benchmarks run in).
ESKER = str(Path(sys.executable).with_name("esker"))
# Built environments are shared between test runs (rebuilt only when a lock file changes).
ENVS_DIR = os.environ.get("ESKER_TEST_ENVS_DIR", "/tmp/esker-test-envs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config(prefix: str, home_root: str, ceph=None, **overrides) -> dict:
    cfg = yaml.safe_load(Path(resources.default_config()).read_text())
    cfg["hub"].update(port=free_port(), log_level="DEBUG" if os.environ.get("ESKER_TEST_DEBUG") else "INFO")
    cfg["auth"] = {"type": "dummy"}
    cfg["users"] = {"system_user_prefix": prefix, "home_root": home_root,
                    "groups": {"gpu-users": ["gpu-user"], "instructors": []}}
    cfg["gpus"]["devices"] = ["0", "1"]  # pinned ids: exercises the allocator without a GPU
    # A root hub reserves each server's scratch_size on the disk (a filesystem image per server): the shipped
    # 5-50 GB would fill a test machine's disk with a few concurrent servers.
    for p in cfg["profiles"]:
        p["scratch_size"] = os.environ.get("ESKER_TEST_SCRATCH_SIZE", "512M")
    if ceph is not None:  # the test session's throwaway Ceph, as an external gateway
        cfg["storage"] = {"enabled": True, "endpoint": ceph.endpoint, "region": ceph.region,
                          "admin_access_key": ceph.access_key, "admin_secret_key": ceph.secret_key,
                          "bucket_prefix": f"{prefix.rstrip('-')}-", "timeout": 5,
                          "datasets": [{"name": "weather", "bucket": f"{prefix.rstrip('-')}x-data", "prefix": "weather/"}]}
    else:
        cfg["storage"] = {"enabled": False}
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    return cfg


class RunningHub:
    """A hub started with `esker run`; restartable with the same state."""

    def __init__(self, cfg: dict | None = None, state_dir: str | None = None, ceph=None, extra_config: str = ""):
        """``extra_config``: Python appended to Esker's jupyterhub_config.py (traitlets a test sets, such as
        another spawner class); the hub then runs as `esker run` would run it, from a wrapper file."""
        self.prefix = f"esk{secrets.token_hex(2)}-"
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="esker-test-", dir="/tmp")
        os.chmod(self.state_dir, 0o755)
        self.home_root = os.path.join(self.state_dir, "homes")
        self.cfg = cfg or test_config(self.prefix, self.home_root, ceph=ceph)
        self.cfg["users"]["system_user_prefix"] = self.prefix
        self.cfg["users"]["home_root"] = self.home_root
        self.config_file = os.path.join(self.state_dir, "esker.yaml")
        # The config may carry the RGW admin keys: root's alone, like the rest of the state dir.
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(yaml.safe_dump(self.cfg))
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.state_dir, "hub.log")
        self.extra_config = extra_config
        self.last_stop = shutdown.Outcome()
        os.makedirs(ENVS_DIR, exist_ok=True)
        os.chmod(ENVS_DIR, 0o755)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.cfg['hub']['port']}"

    @property
    def hub(self) -> Hub:
        return Hub(self.url, self.token)

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(ESKER_CONFIG=self.config_file, ESKER_STATE_DIR=self.state_dir, ESKER_ADMIN_TOKEN=self.token,
                   ESKER_ENVS_DIR=ENVS_DIR, ESKER_PORT=str(self.cfg["hub"]["port"]))
        return env

    def start(self, timeout: float = 300) -> "RunningHub":
        log = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")  # the hub's log: root's
        cmd = [ESKER, "run", "--prepare", "none"]
        if self.extra_config:  # JupyterHub takes one -f: a wrapper that loads Esker's config first
            wrapper = Path(self.state_dir) / "jupyterhub_config_test.py"
            hub_config = Path(__file__).with_name("jupyterhub_config.py")
            wrapper.write_text(f"load_subconfig({str(hub_config)!r})\n{self.extra_config}\n")
            cmd = [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(wrapper)]
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.state_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/hub/api/", headers={"Authorization": f"token {self.token}"}, timeout=2)
                if r.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"hub did not answer in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop_hub(self, timeout: float = 90) -> None:
        """Stop the hub and its services only (servers and proxy stay up, as on a real restart); a hub that does
        not exit in ``timeout`` seconds is killed, and its services with it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.last_stop = shutdown.stop(self.state_dir, everything=False, hub_timeout=timeout)

    def server_pids(self) -> list[int]:
        db = os.path.join(self.state_dir, "jupyterhub.sqlite")
        if not os.path.exists(db):
            return []
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT state FROM spawners").fetchall()
        pids = []
        for (state,) in rows:
            try:
                pid = json.loads(state or "{}").get("pid")
            except ValueError:
                continue
            if pid:
                pids.append(int(pid))
        return pids

    def teardown(self) -> None:
        """Stop everything this hub started: servers, hub, its services (Spark, the courses service, the culler),
        proxy; remove its accounts and state. Raises when a process or port of it is still there afterwards."""
        if self.proc and self.proc.poll() is None:
            try:
                users = self.hub.request("GET", "/users", timeout=10).json()
                for u in users:
                    if u.get("servers"):
                        self.hub.request("DELETE", f"/users/{u['name']}/server", timeout=30)
            except Exception:
                pass
        self.stop_hub()
        out = shutdown.stop(self.state_dir, everything=True)
        if os.geteuid() == 0:
            for line in Path("/etc/passwd").read_text().splitlines():
                name = line.split(":", 1)[0]
                if name.startswith(self.prefix):
                    subprocess.run(["userdel", "--remove", name], capture_output=True)
                    subprocess.run(["groupdel", name], capture_output=True)
        if not os.environ.get("ESKER_TEST_KEEP"):
            shutil.rmtree(self.state_dir, ignore_errors=True)
        left = self.last_stop.left + out.left
        if left:
            raise RuntimeError(f"the hub in {self.state_dir} left processes or ports behind:\n" + "\n".join(left))


def prepare_environments(names: list[str]) -> None:
    """Build environments into the shared test cache before hubs start (progress on stdout)."""
    with tempfile.TemporaryDirectory(prefix="esker-prep-") as state_dir:  # only the shared cache is kept
        subprocess.run([ESKER, "prepare", *names],
                       env={**os.environ, "ESKER_ENVS_DIR": ENVS_DIR, "ESKER_STATE_DIR": state_dir}, check=True)

