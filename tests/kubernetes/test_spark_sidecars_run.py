"""A Spark server's own cluster, run for real from the pod's own pieces: the scratch init container's command
writes spark-defaults.conf from the server's Secret, the master and worker sidecars' commands and environments
start pip pyspark's daemons (the probe decides when the worker may start), and a driver with the notebook's
environment runs a job on the worker's executor. Only the host's ports differ from a pod's (the pod's loopback
is its own; this machine's is shared), and tini (the containers' PID 1) is left out."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from esker.core.catalog import Catalog, UserInfo
from esker.core.config import validate
from esker.core.plan import build_plan, select
from esker.resources import SHIPPED_CONFIG
from esker.spawner import k8s_objects as ko
from esker.spawner import kubernetes as kube

pytestmark = pytest.mark.kubernetes

pyspark = pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("needs Java for Spark", allow_module_level=True)

NAMES = ko.Names("hub", "jupyter-alice", "alice")
BIN = str(Path(sys.executable).parent)  # pip pyspark's spark-class, as on the image's PATH


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remap(value: str, ports: dict[int, int]) -> str:
    """A pod's port, in a URL, a --conf or a probe, as this test's host port."""
    return re.sub(r"(?<=[:=/])(\d+)\b", lambda m: str(ports.get(int(m.group(1)), m.group(1))), value)


def remap_args(args: list[str], ports: dict[int, int]) -> list[str]:
    return [str(ports.get(int(a), a)) if a.isdigit() else remap(a, ports) for a in args]


@pytest.fixture
def pod(tmp_path):
    data = yaml.safe_load(SHIPPED_CONFIG.read_text())
    data["hub"] = {"mode": "kubernetes"}
    data["scratch"]["kubernetes"] = {"storage_class": "local-nvme", "mount_path": str(tmp_path / "scratch")}
    cfg = validate(data).data
    sel = select(Catalog.from_config(cfg), UserInfo("alice", frozenset()), {"profile": "spark"})
    placement = ko.kubernetes_placement(sel, cfg, {"spark": kube.own_cluster_grant()})
    plan = build_plan(sel, placement, ko.kubernetes_site(cfg, NAMES, sel.image))
    (tmp_path / "scratch").mkdir()
    uid, gid = os.getuid(), os.getgid()
    return {"plan": plan, "init": ko.scratch_init_container(plan, cfg, uid, gid, NAMES),
            "sidecars": ko.spark_sidecars(plan, cfg, uid, gid), "secret": ko.server_secret(plan, NAMES),
            "grant": placement.grants["spark"]}


def test_the_sidecars_run_an_authenticated_cluster_of_the_servers_own(pod, tmp_path):
    plan, init, (master, worker) = pod["plan"], pod["init"], pod["sidecars"]
    secrets = {k: base64.b64decode(v).decode() for k, v in pod["secret"]["data"].items()}
    # The scratch init container, as the kubelet runs it: its env resolved from the server's Secret.
    env = {"PATH": os.environ["PATH"]}
    for e in init["env"]:
        env[e["name"]] = secrets[e["valueFrom"]["secretKeyRef"]["key"]]
    subprocess.run(init["command"], env=env, check=True, timeout=30)
    conf = Path(plan.env["SPARK_CONF_DIR"]) / "spark-defaults.conf"
    assert conf.stat().st_mode & 0o777 == 0o600 and pod["grant"]["secret"] in conf.read_text()

    ports = {p: free_port() for p in (ko.SPARK_MASTER_PORT, ko.SPARK_MASTER_UI_PORT, ko.SPARK_WORKER_UI_PORT,
                                      ko.SPARK_DRIVER_PORT, ko.SPARK_BLOCK_MANAGER_PORT, ko.SPARK_UI_PORT)}
    procs, logs = [], {}

    def start(container):
        assert container["command"][:3] == ["tini", "-g", "--"]
        cenv = {e["name"]: e["value"] for e in container["env"]}
        cenv.update(PATH=f"{BIN}:{os.environ['PATH']}", HOME=str(tmp_path))
        logs[container["name"]] = log = open(tmp_path / f"{container['name']}.log", "w+")
        Path(container["workingDir"]).mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(remap_args(container["command"][3:], ports), env=cenv,
                                      cwd=container["workingDir"], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    def probe(container, timeout=90):
        command = [remap(a, ports) for a in container["startupProbe"]["exec"]["command"]]
        deadline = time.monotonic() + timeout
        while subprocess.run(command, capture_output=True).returncode != 0:
            assert procs[-1].poll() is None, open(logs[container["name"]].name).read()
            assert time.monotonic() < deadline, "the master's port never opened"
            time.sleep(container["startupProbe"]["periodSeconds"])

    try:
        start(master)
        probe(master)  # what holds back the worker (and the notebook) in the pod
        start(worker)
        # The notebook's driver, with the notebook's environment (the executor runs on the worker).
        nenv = {k: remap(v, ports) for k, v in plan.env.items()}
        nenv.update(PATH=f"{BIN}:{os.environ['PATH']}", HOME=str(tmp_path), PYSPARK_PYTHON=sys.executable)
        nenv["PYSPARK_SUBMIT_ARGS"] = nenv["PYSPARK_SUBMIT_ARGS"].replace(
            "spark.pyspark.python=python3", f"spark.pyspark.python={sys.executable}")
        job = ("from pyspark.sql import SparkSession; s = SparkSession.builder.getOrCreate(); "
               "print('RESULT', s.range(1000).selectExpr('sum(id)').collect()[0][0], "
               "s.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1); s.stop()")
        r = subprocess.run([sys.executable, "-c", job], env=nenv, capture_output=True, text=True, timeout=180,
                           cwd=tmp_path)
        assert "RESULT 499500 1" in r.stdout, r.stderr[-3000:]  # on the one executor of the pod's worker
        master_log = Path(logs["spark-master"].name).read_text()
        assert "authentication enabled" in master_log and "REST server" not in master_log  # 6066 takes no secret
        # The daemons' web UIs want a token signed with the server's UI key.
        for port in (ports[ko.SPARK_MASTER_UI_PORT], ports[ko.SPARK_WORKER_UI_PORT]):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=10)
            assert e.value.code == 403
        # The executor's work dir is on the user's scratch.
        assert list(Path(worker_env(worker)["SPARK_WORKER_DIR"]).glob("app-*/0/stderr"))
        # A session without the server's secret is refused by the master.
        (tmp_path / "no-conf").mkdir()
        bad = dict(nenv, SPARK_CONF_DIR=str(tmp_path / "no-conf"))
        with open(tmp_path / "bad.log", "w+") as out:
            intruder = subprocess.Popen([sys.executable, "-c", job], env=bad, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=tmp_path, start_new_session=True)
            procs.append(intruder)
            deadline = time.monotonic() + 90
            while "SaslMessage" not in (seen := Path(out.name).read_text() + Path(logs["spark-master"].name).read_text()):
                assert intruder.poll() is None or time.monotonic() < deadline, seen[-3000:]
                assert time.monotonic() < deadline, seen[-3000:]
                time.sleep(0.5)
            assert "RESULT" not in Path(out.name).read_text()
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)


def worker_env(container):
    return {e["name"]: e["value"] for e in container["env"]}
