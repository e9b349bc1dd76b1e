"""A server's own Spark standalone cluster: one master and one worker from the environment's pip pyspark,
run as the server's user, inside its control group, with a secret of its own.

Why not one cluster for the hub: Spark standalone has one ``spark.authenticate`` secret per cluster, so every
user who may submit knows the key that also admits him to every other user's driver, executors and blocks;
and without it any account on the host can register a fake executor with another user's driver and receive
its tasks. A cluster per server makes the secret the user's alone, runs executors as the user, counts them in
the user's limits, and makes the share structural: the worker offers the user's cores and nothing else.

pip's pyspark has ``bin/spark-class`` but no sbin scripts, so each daemon is ``spark-class <Main class>``.
The builders here are pure; :func:`launch` and :func:`stop` are the only parts that touch processes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from esker.units import spark_size

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"

# Daemons hold no user data: a small heap and a JIT tuned for start-up keep each near 180 MB resident
# (measured; the defaults, 1 GB heap and C2, cost about 250 MB and a slower start).
DAEMON_MEMORY = "128m"
DAEMON_JAVA_OPTS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k -XX:ReservedCodeCacheSize=32m " \
                   "-XX:MaxMetaspaceSize=96m"


def spark_home_of(python: str) -> str:
    """SPARK_HOME inside an environment: its pyspark package folder."""
    env = Path(python).parent.parent
    found = sorted(env.glob("lib/python3*/site-packages/pyspark"))
    if not found:
        raise FileNotFoundError(f"no pyspark in the environment of {python}")
    return str(found[0])


def java_home() -> str | None:
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if not java:
        return None
    return str(Path(os.path.realpath(java)).parent.parent)


def new_credentials() -> dict[str, str]:
    """A fresh RPC secret and web-UI key. The UI key is base64url without padding: the JWS library Spark's
    filter uses refuses '+', '/' and '=' (and the daemon's UI then fails to bind)."""
    return {
        "secret": secrets.token_hex(32),
        "ui_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
    }


@dataclass(frozen=True)
class ClusterSpec:
    """Where one server's cluster listens and what its worker offers."""

    spark_home: str
    conf_dir: str  # holds spark-defaults.conf (0600: the RPC secret, the UI key)
    base_dir: str  # work/, logs/ and local/ go here: the user's scratch
    master_port: int
    master_ui_port: int
    worker_ui_port: int
    cores: int
    memory: str  # what the worker offers executors

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"


def daemon_env(spec: ClusterSpec, base_env: dict[str, str]) -> dict[str, str]:
    """The daemons' environment (pure): no secret in it, nor in their argv."""
    env = {k: v for k, v in base_env.items() if k not in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")}
    env.update({
        "SPARK_HOME": spec.spark_home,
        "SPARK_CONF_DIR": spec.conf_dir,
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_LOCAL_IP": "127.0.0.1",  # everything on loopback
        "SPARK_MASTER_HOST": "127.0.0.1",
        "SPARK_WORKER_DIR": f"{spec.base_dir}/work",  # executors' stdout, stderr and files: the user's
        "SPARK_LOG_DIR": f"{spec.base_dir}/logs",
        "SPARK_LOCAL_DIRS": f"{spec.base_dir}/local",
        "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
        "SPARK_DAEMON_JAVA_OPTS": DAEMON_JAVA_OPTS,
        # The master's REST submission server (6066) knows no spark.authenticate: any account could submit
        # to this master through it.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    })
    jh = java_home()
    if jh:
        env["JAVA_HOME"] = jh
    return env


def master_command(spec: ClusterSpec) -> list[str]:
    return ["/bin/bash", os.path.join(spec.spark_home, "bin", "spark-class"), MASTER_CLASS,
            "--host", "127.0.0.1", "--port", str(spec.master_port), "--webui-port", str(spec.master_ui_port)]


def worker_command(spec: ClusterSpec) -> list[str]:
    return ["/bin/bash", os.path.join(spec.spark_home, "bin", "spark-class"), WORKER_CLASS,
            "--host", "127.0.0.1", "--port", "0", "--cores", str(spec.cores), "--memory", spark_size(spec.memory),
            "--webui-port", str(spec.worker_ui_port), spec.master_url]


def launch(cmd: list[str], env: dict[str, str], spec: ClusterSpec, log_name: str,
           preexec: Callable[[], None] | None = None) -> int:
    """Start one daemon in a session of its own (so :func:`stop` reaches its executors too); ``preexec`` runs
    in the child first (join the server's cgroup, drop to the user). Its folders and log are made after that,
    so they are the user's."""

    def child() -> None:
        if preexec is not None:
            preexec()
        for sub in ("work", "logs", "local"):
            os.makedirs(os.path.join(spec.base_dir, sub), 0o700, exist_ok=True)
        fd = os.open(os.path.join(spec.base_dir, "logs", log_name), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    proc = subprocess.Popen(cmd, env=env, cwd=spec.base_dir, stdin=subprocess.DEVNULL,
                            preexec_fn=child, start_new_session=True)
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is not alive; reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM each daemon's process group (the worker's has its executors), SIGKILL what is left."""
    groups = []
    for pid in pids:
        try:
            groups.append(os.getpgid(pid))
        except ProcessLookupError:
            continue
    for g in groups:
        try:
            os.killpg(g, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in pids:
        alive(p)  # reap


def ui_token(ui_key: str, lifetime: int = 60) -> str:
    """A JWS (HS256) the UIs' JWSFilter accepts: the hub's way into a user's master UI for its status."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    key = base64.urlsafe_b64decode(ui_key + "=" * (-len(ui_key) % 4))
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "esker-hub", "exp": int(time.time()) + lifetime}).encode())
    sig = b64(hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def master_status(webui_port: int, ui_key: str = "", timeout: float = 2.0) -> dict:
    """A master's JSON status (workers, cores, running applications), through its UI filter."""
    req = urllib.request.Request(f"http://127.0.0.1:{webui_port}/json/")
    if ui_key:
        req.add_header("Authorization", f"Bearer {ui_token(ui_key)}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def running_masters(under: str = "") -> list[dict]:
    """The servers' masters running on this host whose configuration is ``under`` a folder (a hub's scratch
    root), found in /proc (root sees every one): pid, uid, ports and the UI key from the cluster's own
    spark-defaults.conf. For ``esker status``; the hub keeps its own list."""
    return [d for d in running_daemons(under) if d["role"] == "master"]


def running_daemons(under: str = "") -> list[dict]:
    """:func:`running_masters`, and the workers too (``role``: master or worker; ``conf_dir``)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
            role = "master" if MASTER_CLASS.encode() in args else "worker" if WORKER_CLASS.encode() in args else ""
            # The daemon's JVM, not spark-class's bash or the launcher JVM that builds its command line.
            if not role or not args[0].endswith(b"java") or b"org.apache.spark.launcher.Main" in args:
                continue
            args = [a.decode() for a in args]
            environ = dict(kv.split("=", 1) for kv in (d / "environ").read_bytes().decode().split("\0") if "=" in kv)
            uid = d.stat().st_uid
        except (OSError, ValueError):
            continue
        conf_dir = environ.get("SPARK_CONF_DIR", "/nonexistent")
        if under and not conf_dir.startswith(under.rstrip("/") + "/"):
            continue
        opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
        key = ""
        try:
            for line in Path(conf_dir, "spark-defaults.conf").read_text().splitlines():
                if line.startswith("spark.org.apache.spark.ui.JWSFilter.param.secretKey "):
                    key = line.split(" ", 1)[1].strip()
        except OSError:
            pass
        found.append({"role": role, "conf_dir": conf_dir, "pid": int(d.name), "uid": uid,
                      "port": int(opt.get("--port", 0)),
                      "webui_port": int(opt.get("--webui-port", 0)), "ui_key": key})
    return found
