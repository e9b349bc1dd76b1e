"""Published functions in the owner's bucket (layout: docs/functions.md, "Bucket layout").

    .esker/functions/<name>/versions/<vid>/manifest.json
    .esker/functions/<name>/versions/<vid>/code.py
    .esker/functions/<name>/aliases.json

Objects are written with the owner's own keys into the owner's bucket, which only they can read (the bucket
policy esker.objectstore sets); nothing here makes an object public.
"""

from __future__ import annotations

import json
from typing import Callable, Dict, List, Optional, Tuple

from .versions import VID_RE, VersionError, VersionInUse, aliases_to, check_name

ROOT = ".esker/functions/"
TRIES = 8  # read-modify-write rounds of aliases.json before giving up


class AliasConflict(VersionError):
    """aliases.json kept changing under us: another publish or alias move is running without end."""


def _prefix(name: str) -> str:
    return f"{ROOT}{check_name(name)}/"


def _vid(vid: str) -> str:
    if not isinstance(vid, str) or not VID_RE.match(vid):
        raise ValueError(f"version id {vid!r} is invalid: 16 lowercase hex digits (resolve aliases first)")
    return vid


class FunctionStore:
    """Versions, manifests and aliases of one owner's functions, over a boto3 S3 client."""

    def __init__(self, s3=None, bucket: Optional[str] = None):
        if s3 is None or bucket is None:
            from .. import storage  # the notebook's injected environment

            s3 = s3 if s3 is not None else storage.s3_client()
            bucket = bucket if bucket is not None else storage.bucket()
        self.s3, self.bucket = s3, bucket

    # low level
    def _get(self, key: str) -> Optional[bytes]:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def _etag(self, key: str) -> Optional[str]:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)["ETag"].strip('"')
        except Exception:
            return None

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def _keys(self, prefix: str, delimiter: Optional[str] = None):
        kw = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kw["Delimiter"] = delimiter
        for page in self.s3.get_paginator("list_objects_v2").paginate(**kw):
            if delimiter:
                yield from (p["Prefix"] for p in page.get("CommonPrefixes", []))
            else:
                yield from (o["Key"] for o in page.get("Contents", []))

    # versions
    def put_version(self, name: str, manifest: Dict, code: str) -> None:
        """Store a version: code first, manifest last, so a listed manifest always has its code."""
        vid = _vid(manifest["vid"])
        base = f"{_prefix(name)}versions/{vid}/"
        self._put(base + "code.py", code.encode(), "text/x-python; charset=utf-8")
        self._put(base + "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode(),
                  "application/json")

    def get_manifest(self, name: str, vid: str) -> Optional[Dict]:
        raw = self._get(f"{_prefix(name)}versions/{_vid(vid)}/manifest.json")
        return json.loads(raw) if raw is not None else None

    def get_code(self, name: str, vid: str) -> Optional[str]:
        raw = self._get(f"{_prefix(name)}versions/{_vid(vid)}/code.py")
        return raw.decode() if raw is not None else None

    def list_versions(self, name: str) -> List[Dict]:
        """The manifests of ``name``, newest first."""
        out = []
        for p in self._keys(f"{_prefix(name)}versions/", "/"):
            vid = p.rstrip("/").rsplit("/", 1)[-1]
            m = self.get_manifest(name, vid) if VID_RE.match(vid) else None  # skip what is not a version
            if m is not None:
                out.append(m)
        return sorted(out, key=lambda m: m.get("created", ""), reverse=True)

    def list_functions(self) -> List[str]:
        return sorted(p[len(ROOT):].rstrip("/") for p in self._keys(ROOT, "/"))

    # aliases
    def get_aliases(self, name: str) -> Dict[str, str]:
        raw = self._get(f"{_prefix(name)}aliases.json")
        return json.loads(raw) if raw is not None else {}

    def set_aliases(self, name: str, aliases: Dict[str, str]) -> None:
        """Overwrite aliases.json unconditionally (a restore); changes go through update_aliases."""
        self._put(f"{_prefix(name)}aliases.json", json.dumps(aliases, indent=2, sort_keys=True).encode(),
                  "application/json")

    def update_aliases(self, name: str, change: Callable[[Dict[str, str]], Dict[str, str]]
                       ) -> Tuple[Dict[str, str], Dict[str, str]]:
        """Read-modify-write of aliases.json with the object's ETag as the write's precondition (If-Match, or
        If-None-Match: * while there is none), so two publishes or alias moves at once never lose one
        another's aliases: the loser reads again and re-applies ``change`` (which may raise to refuse).
        Returns (before, after)."""
        key = f"{_prefix(name)}aliases.json"
        quoted = False  # Ceph RGW matches If-Match against the bare ETag; RFC 7232 (and so maybe others) quoted
        for _ in range(TRIES):
            try:
                obj = self.s3.get_object(Bucket=self.bucket, Key=key)
                etag = obj["ETag"].strip('"')
                before, cond = json.loads(obj["Body"].read()), {"IfMatch": f'"{etag}"' if quoted else etag}
            except self.s3.exceptions.NoSuchKey:
                before, etag, cond = {}, None, {"IfNoneMatch": "*"}
            after = change(dict(before))
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, ContentType="application/json",
                                   Body=json.dumps(after, indent=2, sort_keys=True).encode(), **cond)
                return before, after
            except Exception as e:  # botocore's ClientError, without importing botocore here
                code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
                if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    raise
                if etag and not quoted and self._etag(key) == etag:  # refused, yet unchanged: the other form
                    quoted = True
        raise AliasConflict(f"{name}: aliases.json changed {TRIES} times while being updated; try again")

    # deletion
    def delete_version(self, name: str, vid: str) -> None:
        """Delete one version; VersionInUse (naming the aliases) while an alias points to it. The check is an
        update of aliases.json (unchanged), so an alias moved onto ``vid`` meanwhile makes it check again."""
        def unused(al: Dict[str, str]) -> Dict[str, str]:
            used = aliases_to(al, _vid(vid))
            if used:
                raise VersionInUse(vid, used)
            return al

        self.update_aliases(name, unused)
        self._delete(list(self._keys(f"{_prefix(name)}versions/{vid}/")))

    def delete_function(self, name: str) -> None:
        """Delete every version and the aliases of ``name``."""
        self._delete(list(self._keys(_prefix(name))))

    def _delete(self, keys: List[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket,
                                   Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
