"""What each service adds to a server's environment: pure functions of the selection, its placement and
the site, the same in both modes (a test compares the two for every profile and choice).

A contributor is ``(selection, placement, site) -> {VAR: value}``. Services that prepare something before
start (S3 keys, course content, GPUs) hand it over as a *grant* in ``placement.grants[<service>]``; the
contributor turns the grant into variables, so what a server sees never depends on which backend ran it.
"""

from __future__ import annotations

import posixpath
import shlex
from typing import TYPE_CHECKING, Callable, Mapping

from esker.units import spark_size

if TYPE_CHECKING:  # the plan's types, for annotations only: plan.py imports this module
    from esker.core.plan import Placement, Selection, Site

# A contributor adds environment variables for a selection and its placement. Services (Spark, scratch,
# GPUs, object storage, courses) each provide one; they must be pure.
Contributor = Callable[["Selection", "Placement", "Site"], Mapping[str, str]]


def spark_grant(placement: "Placement") -> "Mapping[str, str]":
    """The server's own Spark cluster, when its backend started one (``grants["spark"]``): ``master`` (the
    URL), ``secret`` (``spark.authenticate``'s shared secret), ``ui_key`` (the web UIs' JWS key) and the UIs'
    ports, ``ui_port`` (a session's driver), ``master_ui_port`` and ``worker_ui_port``."""
    return placement.grants.get("spark") or {}


def spark_conf(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    """The spark defaults a session gets, so ``SparkSession.builder.getOrCreate()`` needs no config."""
    s = site.spark
    assert s is not None
    own = spark_grant(placement)
    if not (own.get("master") or s.master_url):
        raise ValueError("a Spark profile with neither its own cluster nor an external spark.master_url")
    conf = {
        "spark.master": own.get("master") or s.master_url,
        "spark.driver.host": s.driver_host,
        "spark.driver.bindAddress": s.driver_host if site.mode == "embedded" else "0.0.0.0",
        "spark.local.dir": f"{placement.scratch_dir}/spark",
        "spark.executor.memory": spark_size(s.executor_memory),
        "spark.driver.memory": spark_size(s.driver_memory),
        "spark.app.name": f"esker-{sel.user.name}",
        "spark.pyspark.python": placement.python,
        # The driver's UI: on a machine shared by many users only behind the own cluster's UI filter (its key),
        # on loopback (SPARK_LOCAL_IP), at the port the grant picked; JupyterLab proxies it (_spark_ui_vars).
        "spark.ui.enabled": "true" if site.mode != "embedded" or own.get("ui_key") else "false",
    }
    if own.get("ui_port"):
        conf["spark.ui.port"] = own["ui_port"]
    if own.get("master") and site.mode == "embedded" and posixpath.isabs(placement.python):
        conf.update(executor_archive_conf(placement.python))
    if not own:
        # A cluster shared with others (an external master): the share is the client's default. A server's
        # own cluster needs none: its worker offers only the user's cores.
        conf["spark.cores.max"] = str(s.cores_per_user)
        conf["spark.executor.cores"] = str(min(s.cores_per_user, 1) or 1)
    storage = placement.grants.get("storage")
    if storage:
        conf.update(
            {
                "spark.hadoop.fs.s3a.endpoint": storage["endpoint"],
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": str(storage["endpoint"].startswith("https")).lower(),
            }
        )
    conf.update(viewfs_conf(placement.grants.get("mounts")))
    conf.update(s.extra_conf)
    return conf


# An environment's class archive for its executors (esker.spark.archive builds it with the environment), and the
# empty folder their class path must start with for Java to map it: relative to the environment's root.
SPARK_EXECUTOR_ARCHIVE = "share/esker/spark/executor.jsa"
SPARK_EXECUTOR_CONF = "share/esker/spark/executor-conf"


def executor_archive_conf(python: str) -> dict[str, str]:
    """The settings that make a server's own executors map their environment's class archive (a faster start,
    docs/embedded.md). ``defaultJavaOptions`` is the administrator's half of the executor's options: a user's own
    ``spark.executor.extraJavaOptions`` adds to it. The executor's ``SPARK_CONF_DIR`` only heads its class path
    (it reads no file there). A missing or stale archive is ignored by Java."""
    env = posixpath.dirname(posixpath.dirname(python))
    return {
        "spark.executor.defaultJavaOptions": f"-XX:SharedArchiveFile={env}/{SPARK_EXECUTOR_ARCHIVE}",
        "spark.executorEnv.SPARK_CONF_DIR": f"{env}/{SPARK_EXECUTOR_CONF}",
    }


def viewfs_conf(mounts: "Mapping[str, str] | None") -> dict[str, str]:
    """Embedded mode has the buckets as files (grant ``mounts``: ``root``, ``buckets``); pip's pyspark has no
    hadoop-aws, so ``s3a://<bucket>/<key>`` is resolved onto ``<root>/<bucket>/<key>`` by Hadoop's
    ViewFileSystemOverloadScheme, a mount table per bucket. Executors run as the user on this machine and read
    the same files. On Kubernetes there is no such grant: the image's hadoop-aws reads S3 itself."""
    if not mounts or not mounts.get("buckets"):
        return {}
    root = mounts["root"].rstrip("/")
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.viewfs.ViewFileSystemOverloadScheme",
        # An s3a:// bucket with no mount table falls to ViewFs, whose error names the missing table.
        "spark.hadoop.fs.viewfs.overload.scheme.target.s3a.impl": "org.apache.hadoop.fs.viewfs.ViewFileSystem",
        # No .crc side files next to the user's objects (the gateway keeps its own checksums).
        "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
        # Hadoop's default for s3a:// is the S3A committers (hadoop-aws); the files take the classic one.
        "spark.hadoop.mapreduce.outputcommitter.factory.scheme.s3a":
            "org.apache.hadoop.mapreduce.lib.output.FileOutputCommitterFactory",
    }
    for bucket in sorted(mounts["buckets"].split(",")):
        conf[f"spark.hadoop.fs.viewfs.mounttable.{bucket}.linkFallback"] = f"file://{root}/{bucket}"
    return conf


# Where a server's private Spark defaults live: in its scratch (0700, the user's), never on a command line.
def spark_conf_dir(placement: "Placement") -> str:
    return f"{placement.scratch_dir}/spark/conf"


# Spark 4's servlet filter for every web UI of the cluster (master, worker, driver): requests without a
# token signed with the key get 403, so another account on the same host cannot read executor logs.
JWS_FILTER = "org.apache.spark.ui.JWSFilter"


def spark_secret_conf(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    """The Spark settings that are secrets: the S3A keys, and for a server's own cluster its RPC secret and
    UI key. They reach the driver (and the server's master and worker) through
    ``$SPARK_CONF_DIR/spark-defaults.conf``, a 0600 file of the user's, and the executors from the driver over
    Spark's authenticated RPC: never through ``PYSPARK_SUBMIT_ARGS``, which pyspark turns into spark-submit's
    argv (readable by every account in ``/proc/<pid>/cmdline``)."""
    if not (sel.profile.spark and site.spark):
        return {}
    conf: dict[str, str] = {}
    own = spark_grant(placement)
    if own.get("secret"):
        # Spark standalone knows one secret per cluster: each server's cluster has its own, so no other
        # account can submit to this master, register an executor with this driver or fetch its blocks.
        conf.update({"spark.authenticate": "true", "spark.authenticate.secret": own["secret"]})
    if own.get("ui_key"):
        # Tokens must expire: the hub's and JupyterLab's proxy's (esker_client.spark_ui) live a minute.
        conf.update({"spark.ui.filters": JWS_FILTER, f"spark.{JWS_FILTER}.param.secretKey": own["ui_key"],
                     f"spark.{JWS_FILTER}.param.requireExpiration": "true"})
    storage = placement.grants.get("storage")
    if storage:
        conf.update({
            "spark.hadoop.fs.s3a.access.key": storage["access_key"],
            "spark.hadoop.fs.s3a.secret.key": storage["secret_key"],
        })
    return conf


def private_files(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    """Files the backend writes for the user before start (mode 0600, the user's): path -> content."""
    secret = spark_secret_conf(sel, placement, site)
    if not secret:
        return {}
    # spark-defaults.conf: "key value" lines; Spark's properties loader reads backslash escapes.
    text = "".join(f"{k} {_properties_escape(v)}\n" for k, v in secret.items())
    return {f"{spark_conf_dir(placement)}/spark-defaults.conf": text}


def _properties_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def profile_env(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    env = {
        "ESKER_PROFILE": sel.profile.slug,
        "ESKER_ENVIRONMENT": sel.environment,
        "ESKER_CPU_LIMIT": f"{sel.cpu_limit:g}",
        "ESKER_MEM_LIMIT": str(sel.mem_limit),
    }
    if sel.function:  # a function's named server (docs/functions.md): the function server reads its name here
        env["ESKER_FUNCTION"] = sel.function
    return env


def scratch_env(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    return {
        "SCRATCH_DIR": placement.scratch_dir,
        "TMPDIR": f"{placement.scratch_dir}/tmp",
        "ESKER_SCRATCH_SIZE": str(sel.scratch_size),
    }


def gpu_env(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    # Always set: an empty CUDA_VISIBLE_DEVICES hides every GPU from a server that was given none.
    env = {"CUDA_VISIBLE_DEVICES": ",".join(placement.gpu_devices), "ESKER_GPUS": str(len(placement.gpu_devices))}
    if sel.gpu_type:
        env["ESKER_GPU_TYPE"] = sel.gpu_type
    return env


def spark_env(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    if not (sel.profile.spark and site.spark):
        return {}
    conf = spark_conf(sel, placement, site)
    args = ["--master", conf["spark.master"]]
    for k, v in conf.items():
        if k != "spark.master":
            args += ["--conf", f"{k}={v}"]
    env = {
        "SPARK_MASTER": conf["spark.master"],
        "PYSPARK_PYTHON": placement.python,
        # pyspark reads this when it launches the JVM: every session gets the defaults with no code.
        "PYSPARK_SUBMIT_ARGS": shlex.join(args + ["pyspark-shell"]),
    }
    if spark_secret_conf(sel, placement, site):
        env["SPARK_CONF_DIR"] = spark_conf_dir(placement)  # the S3A keys: private_files()
    env.update(_spark_ui_vars(spark_grant(placement), site.spark.driver_host))
    return env


def _spark_ui_vars(own: "Mapping[str, str]", driver_host: str) -> dict[str, str]:
    """The own cluster's web UIs for JupyterLab's proxy (esker_client.spark_ui): ``ESKER_SPARK_UI_PORTS``
    (``driver:P,master:P,worker:P``); and a driver that listens on loopback binds its UI there too (Spark's UI
    binds to ``SPARK_LOCAL_IP``, else to every address)."""
    ports = [f"{role}:{own[k]}" for role, k in (("driver", "ui_port"), ("master", "master_ui_port"),
                                                 ("worker", "worker_ui_port")) if own.get(k)]
    if not (ports and own.get("ui_key")):
        return {}
    env = {"ESKER_SPARK_UI_PORTS": ",".join(ports)}
    if driver_host == "127.0.0.1":
        env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return env


def storage_env(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    s = placement.grants.get("storage")
    if not s:
        return {}
    env = {
        "AWS_ENDPOINT_URL": s["endpoint"],
        "S3_ENDPOINT_URL": s["endpoint"],
        "AWS_ACCESS_KEY_ID": s["access_key"],
        "AWS_SECRET_ACCESS_KEY": s["secret_key"],
        "AWS_DEFAULT_REGION": s.get("region", "default"),
        "ESKER_BUCKET": s["bucket"],
    }
    if s.get("datasets"):
        env["ESKER_DATASETS"] = s["datasets"]
    return env


def mounts_env(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    """The same objects as files (grant ``mounts``, embedded mode): ``ESKER_S3_DIR`` holds ``<bucket>/<key>``,
    ``ESKER_DATASET_DIRS`` maps each readable dataset to its folder (esker_client.dataset() reads both)."""
    m = placement.grants.get("mounts")
    if not (m and m.get("buckets")):
        return {}
    env = {"ESKER_S3_DIR": m["root"]}
    if m.get("datasets") and m["datasets"] != "{}":
        env["ESKER_DATASET_DIRS"] = m["datasets"]
    return env


def course_env(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    """The user's courses (grant ``courses``): ESKER_COURSES (comma list), ESKER_COURSE and ESKER_COURSE_DIR
    (the first), ESKER_COURSE_ROLE=instructor for someone who teaches one of them."""
    c = placement.grants.get("courses")
    if not c or not c.get("names"):
        return {}
    names = c["names"].split(",")
    env = {"ESKER_COURSES": c["names"], "ESKER_COURSE": names[0]}
    if placement.home:
        env["ESKER_COURSE_DIR"] = f"{placement.home.rstrip('/')}/{names[0]}"
    if c.get("role"):
        env["ESKER_COURSE_ROLE"] = c["role"]
    return env




def broker_env(sel: "Selection", placement: "Placement", site: "Site") -> dict[str, str]:
    """A function server's task broker (grant ``broker``, when functions.broker names one): its own ACL user
    for this start and the only key prefix it may touch (esker.core.broker, esker_client.functions.tasks)."""
    b = placement.grants.get("broker")
    if not b:
        return {}
    return {"ESKER_FUNCTION_BROKER_URL": b["url"], "ESKER_FUNCTION_BROKER_USER": b["user"],
            "ESKER_FUNCTION_BROKER_PASSWORD": b["password"], "ESKER_FUNCTION_BROKER_PREFIX": b["prefix"]}
