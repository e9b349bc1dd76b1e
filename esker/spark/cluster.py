"""The embedded Spark standalone cluster: a master and a worker from the pip pyspark package.

pip's pyspark has `bin/spark-class` but no sbin scripts, so each daemon is `spark-class <Main class>`,
run by JupyterHub as a managed service (JupyterHub restarts a managed service that exits). Both run as an
unprivileged service account when the hub is root: executors run user code, and must not run it as root.

`python -m esker.spark.cluster master|worker ...` is the service command; it sets up directories and the
environment, drops privileges, then execs spark-class so signals reach the JVM directly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from esker.system.accounts import ensure_service_account
from esker.units import spark_size

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


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


def service_commands(spark_cfg: dict, spark_home: str, state_dir: str, python: str = sys.executable) -> list[dict]:
    """JupyterHub managed-service entries for the master and the worker (pure)."""
    master = f"spark://127.0.0.1:{spark_cfg['master_port']}"
    common = [python, "-m", "esker.spark.cluster", "--spark-home", spark_home, "--state-dir", state_dir,
              "--user", spark_cfg["system_user"]]
    return [
        {
            "name": "spark-master",
            "command": common + ["master", "--port", str(spark_cfg["master_port"]),
                                 "--webui-port", str(spark_cfg["webui_port"])],
            "display": False,
        },
        {
            "name": "spark-worker",
            "command": common + ["worker", "--master", master,
                                 "--cores", str(spark_cfg["worker_cores"]),
                                 "--memory", str(spark_cfg["worker_memory"]),
                                 "--webui-port", str(spark_cfg["worker_webui_port"])],
            "display": False,
        },
    ]


def master_status(webui_port: int, timeout: float = 2.0) -> dict:
    """The master's JSON status (workers, cores, running applications)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=timeout) as r:
        return json.load(r)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m esker.spark.cluster",
                                description="Run the embedded Spark master or worker in the foreground.")
    p.add_argument("--spark-home", required=True, help="pyspark package folder (has bin/spark-class)")
    p.add_argument("--state-dir", required=True, help="Esker state directory (logs, work dirs)")
    p.add_argument("--user", default="esker-spark", help="account to run as when started as root")
    sub = p.add_subparsers(dest="role", required=True)
    m = sub.add_parser("master", help="the standalone master")
    m.add_argument("--port", type=int, default=7077)
    m.add_argument("--webui-port", type=int, default=8080)
    w = sub.add_parser("worker", help="a worker attached to the master")
    w.add_argument("--master", required=True)
    w.add_argument("--cores", type=int, default=2)
    w.add_argument("--memory", default="4G")
    w.add_argument("--webui-port", type=int, default=8081)
    args = p.parse_args(argv)
    base = Path(args.state_dir) / "spark"
    dirs = {"SPARK_LOG_DIR": base / "logs", "SPARK_WORKER_DIR": base / "work", "SPARK_LOCAL_DIRS": base / "local"}
    env = dict(os.environ)
    env.update({k: str(v) for k, v in dirs.items()})
    env.update({
        "SPARK_HOME": args.spark_home,
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_LOCAL_IP": "127.0.0.1",  # everything on loopback
        "SPARK_MASTER_HOST": "127.0.0.1",
        "SPARK_CONF_DIR": str(base / "conf"),
    })
    jh = java_home()
    if jh:
        env["JAVA_HOME"] = jh
    for k in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"):
        env.pop(k, None)  # user code in executors must not see the hub's service token
    os.makedirs(base / "conf", exist_ok=True)
    # The web UIs bind SPARK_LOCAL_IP; spark-env.sh repeats it for anything spark-class starts.
    (base / "conf" / "spark-env.sh").write_text("export SPARK_LOCAL_IP=127.0.0.1\n")
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)

    if args.role == "master":
        cmd = [MASTER_CLASS, "--host", "127.0.0.1", "--port", str(args.port), "--webui-port", str(args.webui_port)]
    else:
        cmd = [WORKER_CLASS, "--host", "127.0.0.1", "--cores", str(args.cores), "--memory",
               spark_size(args.memory), "--webui-port", str(args.webui_port), args.master]
    if os.geteuid() == 0:

        acct = ensure_service_account(args.user, str(base))
        for d in [base, *dirs.values(), base / "conf"]:
            os.chown(d, acct.uid, acct.gid)
        env["HOME"] = str(base)
        env["USER"] = acct.name
        os.setgroups([acct.gid])
        os.setgid(acct.gid)
        os.setuid(acct.uid)
    os.chdir(base)
    spark_class = os.path.join(args.spark_home, "bin", "spark-class")
    os.execve("/bin/bash", ["/bin/bash", spark_class, *cmd], env)


if __name__ == "__main__":
    main()
