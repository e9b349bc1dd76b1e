"""RGW's Admin Ops REST API (``/admin/user``, ``/admin/user?key``), SigV4-signed with botocore, every call
bounded by a deadline shared across the steps of one operation. Only HTTP: the same client manages the
embedded Ceph, a Rook cluster or any external gateway. No retries (a refused gateway fails on the
first attempt); TLS is verified against the system's CA store (urllib3's default).

Why not the PyPI package ``rgwadmin`` (2.4.6, tried against the embedded Ceph 16.2): it covers every call
made here and is synchronous like this client (the service runs each operation in a worker thread), but

* it puts values into the query unencoded (``'uid=%s&display-name=%s' % ...``), and the display name is
  the hub username: ``a+b@example.org`` was stored as ``a b@example.org``, ``x&y`` as ``x``, ``hash#tag``
  failed with SignatureDoesNotMatch, and ``mallory&user-caps=users=*`` created a user holding the admin cap
  ``users=*``. Every value would need quoting here before each call, which is the query half of this module;
* its timeout is one number per client (requests' connect/read timeout), while one operation here shares a
  deadline across several calls and runs beside others in threads: a client per call, or writes to its
  private ``_timeout``;
* its exceptions drop the HTTP status (any non-2xx answer without a JSON body is ``ServerDown``, a wrong
  secret a bare ``RGWAdminException('SignatureDoesNotMatch')``), so telling :class:`StorageUnavailable`
  from :class:`StorageError` would rest on a list of error codes;
* it takes a host and a ``secure`` flag rather than the endpoint URL (and sends that host as the Host
  header, so an endpoint with a path cannot be used), adds requests-aws4auth while botocore stays for S3,
  and its code is that of 2.4.5 (January 2024): 2.4.6 changes only the version string.

The asynchronous fork ``aiorgwadmin`` has the same fixed timeout and error model and adds aiohttp.
"""

from __future__ import annotations

import json
import time
from typing import Mapping
from urllib.parse import quote

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from esker.objectstore.errors import StorageError, StorageUnavailable


class Deadline:
    def __init__(self, seconds: float, what: str):
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0.05:
            raise StorageUnavailable(f"object storage did not answer within {self.seconds:g} s ({self.what})")
        return left


class AdminOps:
    """RGW's Admin Ops API (``/admin/user``), SigV4-signed with the admin user's keys."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "default"):
        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self._creds = (access_key, secret_key)
        self._http = urllib3.PoolManager(num_pools=2, maxsize=8, retries=False)

    def request(self, method: str, path: str, params: list[tuple[str, str | None]], deadline: Deadline):
        query = "&".join(k if v is None else f"{quote(k, safe='')}={quote(str(v), safe='')}"
                         for k, v in [*params, ("format", "json")])
        req = AWSRequest(method=method, url=f"{self.endpoint}{path}?{query}", data=b"")
        S3SigV4Auth(Credentials(*self._creds), "s3", self.region).add_auth(req)
        prepared = req.prepare()
        left = deadline.left()
        try:
            r = self._http.request(method, prepared.url, headers=dict(prepared.headers), body=prepared.body,
                                   timeout=urllib3.Timeout(connect=min(left, 3.0), read=left),
                                   preload_content=True, redirect=False)
        except urllib3.exceptions.HTTPError as e:
            raise StorageUnavailable(f"object storage at {self.endpoint} is unreachable ({_why(e)})") from None
        body = r.data
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if r.status >= 500:
            raise StorageUnavailable(f"object storage at {self.endpoint} answered {r.status} ({_code(data)})")
        return r.status, data

    def _ok(self, status, data, what):
        if status in (401, 403):
            raise StorageError(f"{what}: the gateway refused the admin keys ({_code(data)}); check "
                               "storage.admin_access_key/admin_secret_key and that the user has users=* caps")
        if status >= 300:
            raise StorageError(f"{what}: HTTP {status} {_code(data)}")
        return data

    def get_user(self, uid: str, deadline: Deadline) -> dict | None:
        status, data = self.request("GET", "/admin/user", [("uid", uid)], deadline)
        if status == 404:
            return None
        return self._ok(status, data, f"user info {uid}")

    def create_user(self, uid: str, display_name: str, max_buckets: int, deadline: Deadline) -> dict:
        status, data = self.request("PUT", "/admin/user", [("uid", uid), ("display-name", display_name),
                                                           ("max-buckets", str(max_buckets)),
                                                           ("key-type", "s3"), ("generate-key", "true")], deadline)
        if status == 409:  # created meanwhile (another hub process): the caller repairs
            return self.get_user(uid, deadline) or {}
        return self._ok(status, data, f"create user {uid}")

    def modify_user(self, uid: str, deadline: Deadline, **fields: str) -> dict:
        params = [("uid", uid)] + [(k.replace("_", "-"), v) for k, v in fields.items()]
        status, data = self.request("POST", "/admin/user", params, deadline)
        return self._ok(status, data, f"modify user {uid}")

    def remove_user(self, uid: str, purge: bool, deadline: Deadline) -> None:
        status, data = self.request("DELETE", "/admin/user",
                                    [("uid", uid), ("purge-data", "true" if purge else "false")], deadline)
        if status != 404:
            self._ok(status, data, f"remove user {uid}")

    def create_key(self, uid: str, deadline: Deadline) -> list[dict]:
        status, data = self.request("PUT", "/admin/user", [("key", None), ("uid", uid), ("key-type", "s3"),
                                                           ("generate-key", "true")], deadline)
        return self._ok(status, data, f"create key for {uid}")

    def remove_key(self, uid: str, access_key: str, deadline: Deadline) -> None:
        status, data = self.request("DELETE", "/admin/user", [("key", None), ("uid", uid),
                                                              ("access-key", access_key), ("key-type", "s3")], deadline)
        if status != 404:
            self._ok(status, data, f"remove a key of {uid}")


def _code(data) -> str:
    return data.get("Code", "") if isinstance(data, dict) else ""


def _why(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    text = str(reason)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    return text.split(": ", 1)[-1][:200]


def _s3_keys(info: Mapping, uid: str) -> list[dict]:
    return [k for k in info.get("keys", []) if k.get("user") == uid]
