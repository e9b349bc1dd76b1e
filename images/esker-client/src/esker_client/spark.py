"""A SparkSession for the hub's Spark cluster, from what Esker injects.

Esker sets ``SPARK_MASTER`` and ``PYSPARK_SUBMIT_ARGS`` (``--master ... --conf k=v ... pyspark-shell``), which
pyspark reads when it starts the JVM, so a plain ``SparkSession.builder.getOrCreate()`` already lands on the
cluster. :func:`spark_session` adds only what those arguments lack (the master, S3A settings from the AWS_*
variables, a local dir on scratch) plus the caller's own settings, and fails clearly when Spark is not
configured for this server.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

from ._env import environ, optional_import, require
from .storage import endpoint_url

ASK_SPARK = (
    "Start a server with the Spark profile, or ask your hub administrator to enable Spark "
    "(`spark.enabled` and `spark: true` on the profile in the Esker config)."
)


def _submit_settings(args: str) -> Tuple[Optional[str], Dict[str, str]]:
    """The master and ``--conf`` settings in a PYSPARK_SUBMIT_ARGS string."""
    master = None
    conf: Dict[str, str] = {}
    try:
        words = shlex.split(args)
    except ValueError:
        return None, {}
    i = 0
    while i < len(words):
        w = words[i]
        if w == "--master" and i + 1 < len(words):
            master = words[i + 1]
            i += 2
            continue
        if w.startswith("--master="):
            master = w.split("=", 1)[1]
        elif w == "--conf" and i + 1 < len(words) and "=" in words[i + 1]:
            k, v = words[i + 1].split("=", 1)
            conf[k] = v
            i += 2
            continue
        elif w.startswith("--conf=") and "=" in w[len("--conf="):]:
            k, v = w[len("--conf="):].split("=", 1)
            conf[k] = v
        i += 1
    return master, conf


def conf_key(key: str) -> str:
    """Keyword-friendly Spark keys: ``spark_sql_shuffle_partitions`` -> ``spark.sql.shuffle.partitions``.

    A key that already contains a dot is used as it is.
    """
    return key if "." in key else key.replace("_", ".")


def session_conf(
    app_name: Optional[str] = None,
    conf: Optional[Mapping[str, Any]] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Dict[str, str]:
    """The settings :func:`spark_session` applies on top of PYSPARK_SUBMIT_ARGS (pure: no Spark needed)."""
    e = environ(env)
    master = require("SPARK_MASTER", "this server has no Spark cluster", ASK_SPARK, env)
    submit_master, submitted = _submit_settings(e.get("PYSPARK_SUBMIT_ARGS", ""))
    out: Dict[str, str] = {}
    if not submit_master:
        out["spark.master"] = master

    def default(key: str, value: Optional[str]) -> None:
        if value is not None and key not in submitted:
            out[key] = value

    if e.get("AWS_ACCESS_KEY_ID") and e.get("AWS_SECRET_ACCESS_KEY"):
        # The keys themselves never go here: pyspark passes these settings to spark-submit as arguments,
        # which every account on the machine can read. See secret_conf().
        endpoint = endpoint_url(env)
        if endpoint:
            default("spark.hadoop.fs.s3a.endpoint", endpoint)
            default("spark.hadoop.fs.s3a.path.style.access", "true")
            default("spark.hadoop.fs.s3a.connection.ssl.enabled", str(endpoint.startswith("https")).lower())
        if e.get("AWS_DEFAULT_REGION"):
            default("spark.hadoop.fs.s3a.endpoint.region", e["AWS_DEFAULT_REGION"])
    if e.get("SCRATCH_DIR"):
        default("spark.local.dir", e["SCRATCH_DIR"].rstrip("/") + "/spark")
    if app_name:
        out["spark.app.name"] = app_name
    for k, v in (conf or {}).items():
        out[conf_key(k)] = v if isinstance(v, str) else (str(v).lower() if isinstance(v, bool) else str(v))
    return out


SECRET_KEYS = ("spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key")


def _read_defaults(path: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    k, _, v = line.replace("\t", " ").partition(" ")
                    out[k] = v.strip()
    except OSError:
        pass
    return out


def secret_conf(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The S3A keys from the AWS_* variables that ``$SPARK_CONF_DIR/spark-defaults.conf`` does not already
    carry (Esker writes that file, mode 0600, for a server with storage): these must reach Spark through a
    private file, never through arguments."""
    e = environ(env)
    if not (e.get("AWS_ACCESS_KEY_ID") and e.get("AWS_SECRET_ACCESS_KEY")):
        return {}
    have = _read_defaults(os.path.join(e["SPARK_CONF_DIR"], "spark-defaults.conf")) if e.get("SPARK_CONF_DIR") else {}
    want = dict(zip(SECRET_KEYS, (e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"])))
    return {k: v for k, v in want.items() if k not in have}


def _private_conf_dir(extra: Mapping[str, str]) -> str:
    """A new 0700 folder with a 0600 spark-defaults.conf: the current defaults plus ``extra``."""
    d = tempfile.mkdtemp(prefix="esker-spark-conf-")
    current = os.environ.get("SPARK_CONF_DIR")
    lines = []
    if current:
        try:
            with open(os.path.join(current, "spark-defaults.conf"), encoding="utf-8") as f:
                lines.append(f.read().rstrip("\n"))
        except OSError:
            pass
    lines += [f"{k} {v}" for k, v in extra.items()]
    fd = os.open(os.path.join(d, "spark-defaults.conf"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return d


def spark_session(app_name: Optional[str] = None, **conf: Any):
    """A ``pyspark.sql.SparkSession`` on this server's Spark (``SPARK_MASTER``), created or reused.

    Extra settings are Spark keys, either with dots (``**{"spark.sql.shuffle.partitions": "8"}``) or
    keyword-style (``spark_sql_shuffle_partitions=8``). Raises :class:`EskerNotConfigured` naming
    ``SPARK_MASTER`` when this server has no Spark, and :class:`EskerPackageMissing` when pyspark is not
    installed in this profile.
    """
    settings = session_conf(app_name, conf)
    optional_import("pyspark", "pyspark", "esker_client.spark_session()")
    from pyspark.sql import SparkSession

    secrets = secret_conf()
    if secrets:  # read by spark-submit when pyspark starts the JVM (no JVM yet: otherwise already configured)
        os.environ["SPARK_CONF_DIR"] = _private_conf_dir(secrets)
    builder = SparkSession.builder
    for k, v in settings.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()
