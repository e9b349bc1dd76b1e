"""Where the function server reads published versions: the owner's bucket (the layout of docs/functions.md),
or a directory with the same layout (`ESKER_FUNCTION_SOURCE=dir:/path`, for development and tests)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PREFIX = ".esker/functions"
VID = re.compile(r"^[0-9a-f]{16}$")
SEMVER = re.compile(r"^\d+(\.\d+){0,2}$")


class SourceError(Exception):
    """The versions cannot be read (no bucket, no access, a malformed file): one line saying what."""


class NotFound(SourceError):
    pass


class DirSource:
    def __init__(self, root: str):
        self.root = Path(root)
        self.where = f"dir:{root}"

    def _read(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.where}: no {key}") from None
        except OSError as e:
            raise SourceError(f"{self.where}: cannot read {key}: {e.strerror}") from None

    def _list(self, prefix: str) -> list[str]:
        d = self.root / prefix
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


class BucketSource:
    """boto3 from the injected AWS_* variables (endpoint included: AWS_ENDPOINT_URL)."""

    def __init__(self, bucket: str, client=None):
        import boto3  # in every profile environment; imported here so `dir:` needs no boto3
        import botocore.config
        self.bucket = bucket
        self.where = f"s3://{bucket}"
        self.s3 = client or boto3.client("s3", config=botocore.config.Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30))
        self._errors = self.s3.exceptions

    def _read(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise NotFound(f"{self.where}: no {key}") from None
            raise SourceError(f"{self.where}: cannot read {key}: {code or e}") from None
        except BotoCoreError as e:
            raise SourceError(f"{self.where}: cannot read {key}: {e}") from None

    def _list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError
        names, token = [], None
        try:
            while True:
                kw = {"ContinuationToken": token} if token else {}
                r = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix.rstrip("/") + "/", Delimiter="/", **kw)
                names += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in r.get("CommonPrefixes", [])]
                if not r.get("IsTruncated"):
                    return sorted(names)
                token = r["NextContinuationToken"]
        except (ClientError, BotoCoreError) as e:
            raise SourceError(f"{self.where}: cannot list {prefix}: {e}") from None


class Versions:
    """The published versions of one function, read through a source (Dir or Bucket)."""

    def __init__(self, source, name: str):
        self.source, self.name = source, name
        self.base = f"{PREFIX}/{name}"

    def _json(self, key: str, what: str) -> dict:
        raw = self.source._read(key)
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise SourceError(f"{self.source.where}/{key}: {what} is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise SourceError(f"{self.source.where}/{key}: {what} is not a JSON object")
        return data

    def aliases(self) -> dict:
        try:
            return self._json(f"{self.base}/aliases.json", "aliases.json")
        except NotFound:
            return {}

    def vids(self) -> list[str]:
        return [v for v in self.source._list(f"{self.base}/versions") if VID.match(v)]

    def manifest(self, vid: str) -> dict:
        m = self._json(f"{self.base}/versions/{vid}/manifest.json", "manifest.json")
        if not isinstance(m.get("entry"), str) or not m["entry"].isidentifier():
            raise SourceError(f"{self.source.where}/{self.base}/versions/{vid}/manifest.json: "
                              f"entry must be a Python name, not {m.get('entry')!r}")
        return m

    def code(self, vid: str) -> bytes:
        return self.source._read(f"{self.base}/versions/{vid}/code.py")


def from_env(env=os.environ):
    """The source the environment names; SourceError saying what is missing."""
    spec = env.get("ESKER_FUNCTION_SOURCE", "")
    if spec.startswith("dir:"):
        return DirSource(spec[4:])
    if spec:
        raise SourceError(f"ESKER_FUNCTION_SOURCE={spec!r}: only dir:/path is known (the bucket is ESKER_BUCKET)")
    bucket = env.get("ESKER_BUCKET", "")
    if not bucket:
        raise SourceError("no bucket: ESKER_BUCKET is not set (is object storage enabled for this user?)")
    return BucketSource(bucket)
