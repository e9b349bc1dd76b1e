"""esker_client: what this Esker notebook server has, and handles to it.

    import esker_client as ec
    ec.describe()                     # a human summary: profile, scratch, Spark, storage, datasets, GPUs
    spark = ec.spark_session()        # SparkSession on the hub's cluster (Spark profile)
    s3 = ec.s3_client()               # boto3 client for the hub's object storage
    ec.bucket(), ec.datasets()        # your bucket; shared datasets {name: "s3://bucket/prefix"}
    ec.bucket_dir(), ec.dataset("weather")   # the same as files (embedded: ~/s3/<bucket>/...) for pandas, open()
    ec.scratch_dir()                  # fast local scratch (pathlib.Path, created on demand)
    ec.gpus()                         # GPUs assigned to this server

Everything is read from the environment Esker injects into the server; helpers raise
:class:`EskerNotConfigured` (naming the variable and what to ask the hub administrator) when this server
was not given what they need. pyspark, boto3, s3fs and NVML are imported only when used.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, TextIO

from ._env import EskerNotConfigured, EskerPackageMissing, current_profile, environ, require
from .gpu import GPU, gpus, visible_device_ids
from .spark import session_conf, spark_session
from .storage import (bucket, bucket_dir, credentials, dataset, dataset_url, datasets, endpoint_url, s3_client, s3_dir,
                      s3fs_filesystem, storage_options)

__version__ = "0.1.0"

__all__ = [
    "EskerNotConfigured",
    "EskerPackageMissing",
    "GPU",
    "bucket",
    "bucket_dir",
    "credentials",
    "dataset",
    "dataset_url",
    "datasets",
    "describe",
    "function",
    "gpus",
    "s3_client",
    "s3_dir",
    "s3fs_filesystem",
    "scratch_dir",
    "session_conf",
    "spark_session",
    "storage_options",
    "visible_device_ids",
    "summary",
]


def __getattr__(name: str):
    # lazy: `from esker_client import function` costs nothing until used
    if name == "function":
        from .functions.declare import function

        return function
    raise AttributeError(f"module 'esker_client' has no attribute {name!r}")


def scratch_dir(env: Optional[Mapping[str, str]] = None) -> Path:
    """This server's scratch directory (``SCRATCH_DIR``, on fast local disk), created if needed.

    Scratch is not backed up and is usually removed when the server stops: keep results in your home
    directory or your bucket.
    """
    path = Path(
        require(
            "SCRATCH_DIR",
            "this server was given no scratch space",
            "Ask your hub administrator to set `scratch.root` in the Esker config.",
            env,
        )
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


PACKAGES = ("pyspark", "boto3", "s3fs", "pandas", "scikit-learn", "tensorflow", "jupyterlab")


def _size(n: Optional[str]) -> Optional[str]:
    try:
        return f"{int(n) / 2**30:.1f} GiB" if n else None
    except ValueError:
        return n


def summary(env: Optional[Mapping[str, str]] = None, nvml=None) -> Dict[str, Any]:
    """What this server has, as plain data (no secrets): the basis of :func:`describe`."""
    e = environ(env)
    storage = bool(e.get("AWS_ACCESS_KEY_ID") and e.get("AWS_SECRET_ACCESS_KEY"))
    try:
        shared = datasets(env)
        datasets_error = None
    except EskerNotConfigured as exc:
        shared, datasets_error = {}, str(exc)
    return {
        "profile": current_profile(env),
        "environment": e.get("ESKER_ENVIRONMENT") or None,
        "cpu_limit": e.get("ESKER_CPU_LIMIT") or None,
        "mem_limit": _size(e.get("ESKER_MEM_LIMIT")),
        "scratch_dir": e.get("SCRATCH_DIR") or None,
        "scratch_size": _size(e.get("ESKER_SCRATCH_SIZE")),
        "tmpdir": e.get("TMPDIR") or None,
        "spark_master": e.get("SPARK_MASTER") or None,
        "storage_endpoint": endpoint_url(env) if storage else None,
        "storage_credentials": storage,
        "bucket": e.get("ESKER_BUCKET") or None,
        "s3_dir": e.get("ESKER_S3_DIR") or None,
        "datasets": shared,
        "datasets_error": datasets_error,
        "cuda_visible_devices": e.get("CUDA_VISIBLE_DEVICES"),
        "gpus": [str(g) for g in gpus(env, nvml)],
        "packages": {p: v for p in PACKAGES if (v := _version(p))},
    }


def describe(file: Optional[TextIO] = None, env: Optional[Mapping[str, str]] = None, nvml=None) -> None:
    """Print a short, human summary of what this server has (never the secret keys)."""
    s = summary(env, nvml)
    out = file or sys.stdout
    lines = []
    if s["profile"]:
        env_name = f" (environment {s['environment']})" if s["environment"] else ""
        lines.append(f"Esker server, profile {s['profile']}{env_name}")
    else:
        lines.append("Not started by Esker (ESKER_PROFILE is not set): showing what the environment has")
    limits = [f"{s['cpu_limit']} CPU" if s["cpu_limit"] else None, s["mem_limit"] and f"{s['mem_limit']} memory"]
    if any(limits):
        lines.append("  Limits:   " + ", ".join(x for x in limits if x))
    if s["scratch_dir"]:
        size = f", {s['scratch_size']}" if s["scratch_size"] else ""
        tmp = f"; TMPDIR={s['tmpdir']}" if s["tmpdir"] else ""
        lines.append(f"  Scratch:  {s['scratch_dir']}{size} (not backed up{tmp})")
    else:
        lines.append("  Scratch:  none (SCRATCH_DIR is not set)")
    if s["spark_master"]:
        have = s["packages"].get("pyspark")
        lines.append(f"  Spark:    {s['spark_master']}" + (f" (pyspark {have})" if have else " (pyspark NOT installed)"))
        lines.append("            spark = esker_client.spark_session()")
    else:
        lines.append("  Spark:    not configured for this server (SPARK_MASTER is not set)")
    if s["storage_credentials"]:
        where = s["storage_endpoint"] or "AWS default endpoint"
        lines.append(f"  Storage:  {where}, your bucket: {s['bucket'] or '(none)'}")
        lines.append("            s3 = esker_client.s3_client()")
        if s["s3_dir"]:
            lines.append(f"  Files:    {s['s3_dir']} (~/s3): your bucket and datasets as folders; s3a:// in Spark")
    else:
        lines.append("  Storage:  not configured for this server (AWS_ACCESS_KEY_ID is not set)")
    if s["datasets_error"]:
        lines.append(f"  Datasets: {s['datasets_error']}")
    elif s["datasets"]:
        lines.append("  Datasets: " + ", ".join(f"{k} -> {v}" for k, v in sorted(s["datasets"].items())))
    else:
        lines.append("  Datasets: none shared with you")
    if s["gpus"]:
        lines.append("  GPUs:     " + "; ".join(s["gpus"]))
    elif s["cuda_visible_devices"] is None:
        lines.append("  GPUs:     none found (CUDA_VISIBLE_DEVICES is not set)")
    else:
        lines.append("  GPUs:     none assigned (CUDA_VISIBLE_DEVICES is empty): CPU only")
    if s["packages"]:
        lines.append("  Packages: " + ", ".join(f"{k} {v}" for k, v in s["packages"].items()))
    print("\n".join(lines), file=out)
