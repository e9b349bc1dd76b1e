"""An environment's class archive for Spark executors (Java's AppCDS), built once, as root, with the environment.

A server's own cluster launches its executor JVM only when a session registers, so the executor's start (about
10,000 classes of Spark, Hadoop and Scala to load and verify) runs alongside the driver's, on the same cores, on
the way to the first result. A dynamic archive of those classes, mapped read-only by every executor of the
environment, takes that work away (measured: docs/embedded.md, "Spawn to first result").

How it is made: a real job (SQL, Parquet, JSON, a Python RDD with a shuffle) on ``local-cluster`` (a master and a
worker in the driver's JVM, the executor a JVM of its own, launched by the same command builder as a standalone
worker's) with ``-XX:ArchiveClassesAtExit``; the executor writes the archive when it stops.

Why it is safe to share: the archive holds class bytes that every executor of the environment runs, so it is
root's and read-only, in the root-owned environment (a user who could write it could put code into every other
user's executors). Java maps it only when the executor's class path starts with the one it was made with, so
executors are given the same (empty, root-owned) ``SPARK_CONF_DIR``; a stale or missing archive is ignored,
never an error (the executor then starts as without one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from esker.core.contributors import SPARK_EXECUTOR_ARCHIVE, SPARK_EXECUTOR_CONF
from esker.spark.cluster import java_home

# Run with the environment's python: the job whose executor classes are archived, then a wait until the
# executor has written the archive (the driver's stop only asks the worker to stop it).
JOB = r'''
import os, sys, tempfile, time
from pyspark.sql import SparkSession

out, conf = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master("local-cluster[1,1,1024]").appName("esker-archive")
         .config("spark.executorEnv.SPARK_CONF_DIR", conf)
         .config("spark.executor.extraJavaOptions", "-XX:ArchiveClassesAtExit=" + out)
         .config("spark.ui.enabled", "false").getOrCreate())
d = tempfile.mkdtemp()
spark.range(100000).selectExpr("id", "id % 7 AS k", "CAST(id AS STRING) AS s").write.parquet(d + "/p")
spark.read.parquet(d + "/p").where("k > 2").groupBy("k").agg({"id": "sum"}).collect()
spark.range(1000).write.json(d + "/j")
spark.read.json(d + "/j").selectExpr("sum(id)").collect()
spark.range(1000).write.option("header", "true").csv(d + "/c")
spark.read.option("header", "true").csv(d + "/c").count()
spark.sparkContext.parallelize(range(10000), 2).map(lambda x: (x % 3, x)).reduceByKey(lambda a, b: a + b).collect()
spark.stop()

def executor_alive():
    for p in os.listdir("/proc"):
        try:
            args = open(f"/proc/{p}/cmdline", "rb").read() if p.isdigit() else b""
        except OSError:
            continue
        # The executor, not the driver's JVM (whose command line has the option too, from pyspark's launcher).
        if b"CoarseGrainedExecutorBackend" in args and ("ArchiveClassesAtExit=" + out).encode() in args:
            return True
    return False

deadline = time.monotonic() + 90
time.sleep(1)
while executor_alive() and time.monotonic() < deadline:
    time.sleep(0.2)
'''


def build_executor_archive(env_path: str | Path, python: str, spark_home: str, timeout: float = 300) -> Path:
    """Make ``<env>/share/esker/spark/executor.jsa`` (0644) and the empty executor conf folder (0755), both root's.
    Raises RuntimeError with the job's last lines when no archive came out."""
    env_path = Path(env_path)
    target, conf = env_path / SPARK_EXECUTOR_ARCHIVE, env_path / SPARK_EXECUTOR_CONF
    conf.mkdir(parents=True, exist_ok=True)
    for d in (conf, target.parent, target.parent.parent):
        os.chmod(d, 0o755)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    work = Path(spark_home) / "work"  # where local-cluster's worker puts the executor's logs
    with tempfile.TemporaryDirectory(prefix="esker-archive-") as tmp:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "TMPDIR": tmp, "SPARK_HOME": spark_home,
               "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": python, "SPARK_LOCAL_DIRS": tmp}
        jh = java_home()
        if jh:
            env["JAVA_HOME"] = jh
        try:
            done = subprocess.run([python, "-c", JOB, str(partial), str(conf)], cwd=tmp, env=env,
                                  capture_output=True, text=True, timeout=timeout)
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            failed = done.returncode != 0
        except subprocess.TimeoutExpired:
            tail, failed = [f"the job did not finish within {timeout:g} s"], True
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if failed or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError("no executor class archive: " + ("\n".join(tail) or "the executor wrote none"))
    os.chmod(partial, 0o644)
    os.replace(partial, target)
    return target
