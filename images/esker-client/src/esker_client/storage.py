"""Object storage (S3 on Ceph RGW) from the injected AWS_* variables, the user's bucket and shared datasets.

``ESKER_DATASETS`` is a JSON object mapping a dataset name to an ``s3://bucket/prefix`` URL, for example::

    {"weather": "s3://esker-datasets/weather/", "census": "s3://esker-datasets/census/2020/"}

It lists the datasets this user may read; it is unset when none are shared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ._env import EskerNotConfigured, environ, optional_import, require

ASK_STORAGE = (
    "Ask your hub administrator to enable object storage (the `storage:` section of the Esker config) "
    "for your profile."
)


def endpoint_url(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The S3 endpoint (``AWS_ENDPOINT_URL``, else ``S3_ENDPOINT_URL``), or None for AWS's own."""
    e = environ(env)
    return e.get("AWS_ENDPOINT_URL") or e.get("S3_ENDPOINT_URL") or None


def credentials(env: Optional[Mapping[str, str]] = None) -> Dict[str, Optional[str]]:
    """Access key, secret key, endpoint and region; raises when the keys were not injected."""
    key = require("AWS_ACCESS_KEY_ID", "this server was given no object-storage credentials", ASK_STORAGE, env)
    secret = require("AWS_SECRET_ACCESS_KEY", "the object-storage secret key is missing", ASK_STORAGE, env)
    return {
        "key": key,
        "secret": secret,
        "endpoint_url": endpoint_url(env),
        "region": environ(env).get("AWS_DEFAULT_REGION") or None,
    }


def s3_client(**kwargs: Any):
    """A boto3 S3 client for this server's endpoint and keys (path-style addressing, as Ceph RGW wants).

    Keyword arguments go to ``boto3.client`` and win over the injected values.
    """
    boto3 = optional_import("boto3", "boto3", "esker_client.s3_client()")
    from botocore.config import Config

    c = credentials()
    args: Dict[str, Any] = {
        "aws_access_key_id": c["key"],
        "aws_secret_access_key": c["secret"],
        "region_name": c["region"],
    }
    if c["endpoint_url"]:
        args["endpoint_url"] = c["endpoint_url"]
        args["config"] = Config(s3={"addressing_style": "path"})
    args.update(kwargs)
    return boto3.client("s3", **args)


def s3fs_filesystem(**kwargs: Any):
    """An ``s3fs.S3FileSystem`` (for pandas ``storage_options`` or ``fs.open``) with the injected keys."""
    s3fs = optional_import("s3fs", "s3fs", "esker_client.s3fs_filesystem()")
    c = credentials()
    client_kwargs: Dict[str, Any] = {}
    if c["endpoint_url"]:
        client_kwargs["endpoint_url"] = c["endpoint_url"]
    if c["region"]:
        client_kwargs["region_name"] = c["region"]
    args: Dict[str, Any] = {"key": c["key"], "secret": c["secret"], "client_kwargs": client_kwargs}
    if c["endpoint_url"]:
        args["config_kwargs"] = {"s3": {"addressing_style": "path"}}
    args.update(kwargs)
    return s3fs.S3FileSystem(**args)


def storage_options(env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """``storage_options`` for pandas/fsspec ``s3://`` paths, from the injected variables."""
    c = credentials(env)
    client_kwargs = {k: v for k, v in (("endpoint_url", c["endpoint_url"]), ("region_name", c["region"])) if v}
    return {"key": c["key"], "secret": c["secret"], "client_kwargs": client_kwargs}


def bucket(env: Optional[Mapping[str, str]] = None) -> str:
    """The name of this user's own bucket (``ESKER_BUCKET``)."""
    return require("ESKER_BUCKET", "this server was given no bucket of its own", ASK_STORAGE, env)


def datasets(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The shared datasets this user may read, ``{name: "s3://bucket/prefix"}``; empty when none are."""
    raw = environ(env).get("ESKER_DATASETS", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise EskerNotConfigured(
            "ESKER_DATASETS",
            f"ESKER_DATASETS is not valid JSON ({e})",
            "It should be a JSON object such as {\"weather\": \"s3://bucket/prefix\"}; "
            "tell your hub administrator.",
        ) from e
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise EskerNotConfigured(
            "ESKER_DATASETS",
            "ESKER_DATASETS is not a JSON object of name -> \"s3://bucket/prefix\" strings",
            "Tell your hub administrator.",
        )
    return dict(value)


def dataset_url(name: str, env: Optional[Mapping[str, str]] = None, scheme: str = "s3") -> str:
    """The URL of the shared dataset ``name``; ``scheme="s3a"`` gives the form Spark reads."""
    shared = datasets(env)
    if not shared:
        raise EskerNotConfigured(
            "ESKER_DATASETS",
            f"no datasets are shared with this server (ESKER_DATASETS is not set), so there is no {name!r}",
            "Ask your hub administrator to share the dataset with one of your groups "
            "(the `storage.datasets` list of the Esker config).",
        )
    if name not in shared:
        raise EskerNotConfigured(
            "ESKER_DATASETS",
            f"no dataset named {name!r} is shared with this server (shared: {', '.join(sorted(shared))})",
            "Check the name, or ask your hub administrator to share it with one of your groups.",
        )
    url = shared[name]
    if scheme != "s3" and url.startswith("s3://"):
        url = f"{scheme}://" + url[len("s3://"):]
    return url


def s3_dir(env: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """Where this server has the object store as files (``ESKER_S3_DIR``: ``<dir>/<bucket>/<key>``), or None.

    Embedded hubs mount your bucket and your datasets there (``~/s3`` links to it); on Kubernetes there is
    no such folder and ``s3://`` / ``s3a://`` URLs are the way in.
    """
    d = environ(env).get("ESKER_S3_DIR", "").strip()
    return Path(d) if d else None


def bucket_dir(env: Optional[Mapping[str, str]] = None) -> Path:
    """Your own bucket as a folder (read-write), for ``open()``, pandas and ``ls``."""
    root = s3_dir(env)
    if root is None:
        raise EskerNotConfigured(
            "ESKER_S3_DIR",
            "this server has no bucket mounted as files (Kubernetes, or the hub cannot mount here)",
            f"Use s3://{environ(env).get('ESKER_BUCKET') or '<bucket>'}/ with boto3, s3fs or pandas instead.",
        )
    return root / bucket(env)


def dataset(name: str, env: Optional[Mapping[str, str]] = None) -> str:
    """The shared dataset ``name`` where this server reads it best: its local folder when mounted (embedded),
    else its ``s3://`` URL. Both work with ``pandas.read_csv(...)``/``read_parquet(...)`` (an ``s3://`` URL
    also wants ``storage_options=esker_client.storage_options()``); Spark takes
    ``dataset_url(name, scheme="s3a")`` in every mode."""
    url = dataset_url(name, env)  # raises, naming the datasets there are, when it is not shared
    raw = environ(env).get("ESKER_DATASET_DIRS", "").strip()
    try:
        dirs = json.loads(raw) if raw else {}
    except ValueError:
        dirs = {}
    return str(dirs[name]) if isinstance(dirs, dict) and name in dirs else url
