"""The spark image as a Spark executor image (spark_mode: kubernetes), without a cluster: its entrypoint
(images/spark/esker-spark-entrypoint.sh) run on this machine with pip's pyspark.

Spark's own scheduler code describes the executor pod: the driver below builds it with pyspark's
BasicExecutorFeatureStep (the class KubernetesClusterSchedulerBackend uses), and the entrypoint is started
with exactly that pod's args and environment, so the contract is the installed pyspark's, not a copy of it.
The executor registers with a real driver and runs its Python tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "images" / "spark" / "esker-spark-entrypoint.sh"
BACKEND = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"

pyspark = pytest.importorskip("pyspark")
SPARK_HOME = Path(pyspark.__file__).parent
needs_java = pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
                                reason="needs a Java runtime for Spark")


def dry_run(args, env, as_uid=None):
    """The command the entrypoint would run (its ESKER_ENTRYPOINT_DRY_RUN output), as a list."""
    prefix = ["setpriv", f"--reuid={as_uid}", "--regid=100", "--clear-groups"] if as_uid is not None else []
    out = subprocess.run([*prefix, "bash", str(ENTRYPOINT), *args], env={**env, "ESKER_ENTRYPOINT_DRY_RUN": "1"},
                         capture_output=True, check=True, timeout=30).stdout
    assert out.endswith(b"\0")
    return out[:-1].decode().split("\0")


def executor_env(**extra):
    env = {"PATH": os.environ["PATH"], "SPARK_HOME": str(SPARK_HOME),
           "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.1.2.3:7078", "SPARK_EXECUTOR_ID": "7",
           "SPARK_EXECUTOR_CORES": "2", "SPARK_EXECUTOR_MEMORY": "1408m", "SPARK_APPLICATION_ID": "spark-0123abcd",
           "SPARK_RESOURCE_PROFILE_ID": "0", "SPARK_EXECUTOR_POD_IP": "10.4.5.6",
           "SPARK_EXECUTOR_POD_NAME": "jupyter-alice-exec-7", "SPARK_CONF_DIR": "/opt/spark/conf"}
    env.update(extra)
    return env


def test_dry_run_builds_the_kubernetes_executor_backend_command():
    env = executor_env(JAVA_HOME="/usr/lib/jvm/esker-java", SPARK_JAVA_OPT_0="-XX:+IgnoreUnrecognizedVMOptions",
                       SPARK_JAVA_OPT_10="-Dlast=10", SPARK_JAVA_OPT_2="-Desker.note=two words",
                       SPARK_JAVA_OPT_1="-Dspark.driver.port=7078", SPARK_CLASSPATH="/opt/extra/*",
                       HADOOP_CONF_DIR="/opt/hadoop/conf", NB_UID="1000", NB_GID="100")
    cmd = dry_run(["executor"], env)
    if os.geteuid() == 0:  # a container started as root runs the executor as the notebook user
        assert cmd[:4] == ["setpriv", "--reuid=1000", "--regid=100", "--init-groups"]
        cmd = cmd[4:]
    i = cmd.index(BACKEND)
    jvm, backend = cmd[:i], cmd[i + 1:]
    assert jvm == ["/usr/lib/jvm/esker-java/bin/java",
                   "-XX:+IgnoreUnrecognizedVMOptions", "-Dspark.driver.port=7078", "-Desker.note=two words",
                   "-Dlast=10",  # SPARK_JAVA_OPT_<n> in numeric order, one argument each
                   "-Xms1408m", "-Xmx1408m",
                   "-cp", f"/opt/spark/conf:/opt/hadoop/conf:/opt/extra/*:{SPARK_HOME}/jars/*"]
    assert backend == ["--driver-url", "spark://CoarseGrainedScheduler@10.1.2.3:7078", "--executor-id", "7",
                       "--cores", "2", "--app-id", "spark-0123abcd", "--resourceProfileId", "0",
                       "--hostname", "10.4.5.6", "--podName", "jupyter-alice-exec-7"]
    # The class is in pyspark's own jars, which the classpath names.
    jars = sorted((SPARK_HOME / "jars").glob("spark-kubernetes_*.jar"))
    assert jars and any(BACKEND.replace(".", "/") + ".class" in zipfile.ZipFile(j).namelist() for j in jars)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to switch users")
def test_dry_run_as_the_notebook_user_runs_java_directly_and_honours_the_library_path():
    env = executor_env(SPARK_EXECUTOR_LIBRARY_PATH="/opt/native", LD_LIBRARY_PATH="/usr/local/lib")
    del env["SPARK_CONF_DIR"], env["SPARK_EXECUTOR_POD_IP"], env["SPARK_EXECUTOR_POD_NAME"]
    cmd = dry_run(["executor"], env, as_uid=1000)
    assert cmd[:3] == ["env", "LD_LIBRARY_PATH=/opt/native:/usr/local/lib", "java"]
    assert cmd[cmd.index("-cp") + 1] == f"{SPARK_HOME}/conf:{SPARK_HOME}/jars/*"  # no empty entries
    assert cmd[-2:] == ["--resourceProfileId", "0"]  # no --hostname / --podName without a pod


def test_executor_without_its_environment_says_what_is_missing():
    env = executor_env()
    del env["SPARK_DRIVER_URL"]
    r = subprocess.run(["bash", str(ENTRYPOINT), "executor"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 64 and "SPARK_DRIVER_URL" in r.stderr
    r = subprocess.run(["bash", str(ENTRYPOINT), "driver", "--class", "x"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 64 and "client mode" in r.stderr


def test_anything_else_goes_to_docker_stacks_start_sh_unchanged(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "start.sh"  # what the base image's entrypoint runs
    fake.write_text('#!/bin/bash\nprintf "%s\\0" "$0" "$@" > "$ESKER_TEST_OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "argv"
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "ESKER_TEST_OUT": str(out)}
    args = ["jupyterhub-singleuser", "--ip=0.0.0.0", "--SingleUserNotebookApp.default_url=/lab", "two words", ""]
    subprocess.run(["bash", str(ENTRYPOINT), *args], env=env, check=True, timeout=30)
    assert out.read_bytes().split(b"\0")[:-1] == [str(fake).encode(), *(a.encode() for a in args)]
    assert dry_run([], env) == ["start.sh"]  # no arguments: start.sh with the image's CMD (start-notebook.py)


# --- a real executor for a real driver --------------------------------------------------------------

DRIVER = r"""
import json, os, sys
from pyspark import SparkConf, SparkContext

out, master = sys.argv[1], sys.argv[2]
conf = (SparkConf().setMaster(master).setAppName("esker-executor-entrypoint")
        .set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1")
        .set("spark.ui.enabled", "false").set("spark.executor.memory", "512m").set("spark.executor.cores", "1")
        .set("spark.kubernetes.container.image", "quay.io/esker/spark-notebook:test")
        .set("spark.executorEnv.ESKER_TEST_MARK", "from-spark.executorEnv"))
sc = SparkContext(conf=conf)
jvm, jsc = sc._jvm, sc._jsc.sc()

# The executor pod exactly as Spark's Kubernetes scheduler would build it (pyspark's own code).
k8s = jvm.org.apache.spark.deploy.k8s
none = getattr(getattr(jvm.scala, "None$"), "MODULE$")
config = getattr(getattr(jvm.org.apache.spark.internal.config, "package$"), "MODULE$")
security = jvm.org.apache.spark.SecurityManager(jsc.conf(), none, config.AUTH_SECRET_FILE())
profile = jsc.resourceProfileManager().defaultResourceProfile()
kconf = k8s.KubernetesConf.createExecutorConf(jsc.conf(), "1", sc.applicationId, none, profile.id())
step = k8s.features.BasicExecutorFeatureStep(kconf, security, profile)
pod = step.configurePod(k8s.SparkPod.initialPod())
container = pod.container()
env = []
for e in container.getEnv():
    ref = e.getValueFrom()
    env.append({"name": e.getName(), "value": e.getValue(),
                "fieldRef": ref.getFieldRef().getFieldPath() if ref is not None and ref.getFieldRef() is not None
                else None})
spec = {"args": list(container.getArgs()), "command": list(container.getCommand() or []), "env": env}
with open(out + ".tmp", "w") as f:
    json.dump(spec, f)
os.rename(out + ".tmp", out)

def where(x):
    return (x * x, os.environ.get("SPARK_EXECUTOR_ID"), os.environ.get("ESKER_TEST_MARK"), os.getuid())

rows = sc.parallelize(range(8), 2).map(where).collect()
print("ROWS " + json.dumps(rows), flush=True)
sc.stop()
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _wait_port(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the Spark master exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Spark master did not listen on {port} in {timeout}s")


def _worker_python(uid):
    """A Python the executor's workers can run as ``uid`` (this test's own, unless it lives where that user
    cannot reach, as under /root; then the system's Python of the same version with these site-packages)."""
    if os.geteuid() != 0:
        return sys.executable, {}
    site = sysconfig.get_paths()["purelib"]
    candidates = [(sys.executable, {}),
                  (f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", {"PYTHONPATH": site})]
    for python, extra in candidates:
        probe = subprocess.run(["setpriv", f"--reuid={uid}", "--regid=100", "--clear-groups", "sh", "-c",
                                '"$0" -c "import pyspark"', python], env={"PATH": os.environ["PATH"], **extra},
                               capture_output=True, timeout=60)
        if probe.returncode == 0:
            return python, extra
    pytest.skip(f"no Python here that uid {uid} can run pyspark with")


@needs_java
def test_entrypoint_starts_a_real_executor_from_the_pod_spark_builds(tmp_path):
    nb_uid = 1000 if os.geteuid() == 0 else os.getuid()  # as root, the entrypoint runs it as NB_UID
    worker_python, worker_env = _worker_python(nb_uid)
    base = {"PATH": os.environ["PATH"], "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": worker_python, "HOME": "/tmp", "LANG": "C.UTF-8"}
    if os.environ.get("JAVA_HOME"):
        base["JAVA_HOME"] = os.environ["JAVA_HOME"]
    port = _free_port()
    spec_file = tmp_path / "executor-pod.json"
    (tmp_path / "driver.py").write_text(DRIVER)
    logs = {n: open(tmp_path / f"{n}.log", "w+") for n in ("master", "driver", "executor")}
    master = driver = executor = None
    try:
        master = subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
             "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(_free_port())],
            env=base, cwd=tmp_path, stdout=logs["master"], stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(port, master, 120)
        driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(spec_file), f"spark://127.0.0.1:{port}"],
                                  env=base, cwd=tmp_path, stdout=logs["driver"], stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.monotonic() + 180
        while not spec_file.exists():
            assert driver.poll() is None, "the driver exited early:\n" + (tmp_path / "driver.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the driver did not describe the executor pod in time"
            time.sleep(0.5)
        spec = json.loads(spec_file.read_text())

        # The contract: no command (the image's ENTRYPOINT runs), the single argument `executor`.
        assert spec["command"] == [] and spec["args"] == ["executor"]
        names = {e["name"] for e in spec["env"]}
        assert {"SPARK_DRIVER_URL", "SPARK_EXECUTOR_ID", "SPARK_EXECUTOR_CORES", "SPARK_EXECUTOR_MEMORY",
                "SPARK_APPLICATION_ID", "SPARK_RESOURCE_PROFILE_ID", "SPARK_EXECUTOR_POD_IP",
                "SPARK_EXECUTOR_POD_NAME", "SPARK_CONF_DIR"} <= names, names
        assert any(n.startswith("SPARK_JAVA_OPT_") for n in names)  # the JVM's module options travel here
        # What the kubelet would put in the container: values, and the downward API's fields.
        fields = {"status.podIP": "127.0.0.1", "metadata.name": "esker-test-exec-1"}
        pod_env = {e["name"]: fields[e["fieldRef"]] if e["fieldRef"] else e["value"]
                   for e in spec["env"] if e["fieldRef"] or e["value"] is not None}
        run_env = {**base, **worker_env, "NB_UID": str(nb_uid), "NB_GID": "100", **pod_env}
        executor = subprocess.Popen(["bash", str(ENTRYPOINT), *spec["args"]], env=run_env, cwd="/tmp",
                                    stdout=logs["executor"], stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while driver.poll() is None:
            # An executor that cannot start or register ends here, not in the driver's wait (once the job is
            # done, the driver's stop ends the executor while the driver is still shutting down).
            if executor.poll() is not None and "ROWS " not in (tmp_path / "driver.log").read_text():
                raise AssertionError(f"the executor exited with {executor.returncode} before the job was done:\n"
                                     + (tmp_path / "executor.log").read_text()[-4000:])
            assert time.monotonic() < deadline, "the job did not finish:\n" + (
                tmp_path / "executor.log").read_text()[-4000:]
            time.sleep(0.5)
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log[-4000:]
        (line,) = [ln for ln in log.splitlines() if ln.startswith("ROWS ")]
        rows = json.loads(line[5:])
        assert sorted(r[0] for r in rows) == [x * x for x in range(8)]
        # Every task ran in this executor's Python workers: its id, the session's executorEnv, the user.
        assert {(r[1], r[2], r[3]) for r in rows} == {("1", "from-spark.executorEnv", nb_uid)}
        # The driver's stop ends the executor.
        assert executor.wait(timeout=60) == 0, (tmp_path / "executor.log").read_text()[-4000:]
    finally:
        for proc in (executor, driver, master):
            _stop(proc)
        for f in logs.values():
            f.close()
