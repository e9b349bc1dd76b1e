"""Per-user S3 identities on a Ceph RADOS Gateway, managed through RGW's Admin Ops REST API.

Each hub user gets an RGW user (uid = personal bucket name, see :func:`rgw_names`), one S3 key pair and a
private personal bucket. Shared datasets (``storage.datasets`` in esker.yaml: a bucket, or a prefix in one)
belong to a service user of the hub and carry a bucket policy naming the RGW users that may read or write
them; the policy is rebuilt whenever a user's access changes.

Only HTTP is used (``/admin/user``, ``/admin/user?key`` signed with SigV4 by the admin user's keys, and S3
with the users' keys), so the same code manages the embedded Ceph, a Rook cluster or any external gateway.

Keys are kept encrypted (Fernet) in ``$ESKER_STATE_DIR/storage/keys.sqlite`` (0600); the Fernet key is
``$ESKER_STATE_DIR/storage/fernet.key`` (0600) or ``$ESKER_STORAGE_KEY``. Secrets never go to logs.

Every call is bounded by ``storage.timeout`` seconds; an unreachable or slow gateway raises
:class:`StorageUnavailable`. Steps are ordered so that an interrupted call leaves nothing the next call does
not repair: a user created without its keys being recorded gets fresh keys (the unknown ones are removed),
a missing bucket is created, stray keys from an interrupted rotation are removed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping
from urllib.parse import quote

log = logging.getLogger("esker.storage")

DEFAULT_TIMEOUT = 5.0
_IDENTITY_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_PREFIX_RE = re.compile(r"(?:[a-z0-9](?:-?[a-z0-9])*-?)?")
_HASH_LEN = 10  # base32 characters: 50 bits


# --------------------------------------------------------------------------- errors
class StorageError(RuntimeError):
    """Object storage refused or failed an operation (the message says what and why)."""


class StorageUnavailable(StorageError):
    """The gateway is down, unreachable or too slow: nothing was granted. Retry later."""


# --------------------------------------------------------------------------- names
def _name_hash(username: str) -> str:
    digest = hashlib.sha256(username.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:_HASH_LEN]


def check_prefix(prefix: str) -> str:
    if len(prefix) > 30 or not _PREFIX_RE.fullmatch(prefix) or "--" in prefix:
        raise ValueError(
            f"bucket_prefix {prefix!r}: use at most 30 lowercase letters, digits and single hyphens "
            "(for example 'esker-')"
        )
    return prefix


def rgw_name(username: str, prefix: str = "esker-") -> str:
    """The RGW uid and personal bucket name of a hub user: a valid S3 bucket name, 3-63 characters.

    A username that is already a clean bucket-name fragment maps to ``prefix + username``. Any other
    (capitals, dots, unicode, too long, ...) maps to ``prefix + sanitized + "--" + hash``, where the hash
    is 10 base32 characters of SHA-256 of the exact username. Clean names never contain ``--`` and
    sanitized ones always do, so two different usernames never map to the same name (up to a 50-bit hash
    collision between names with the same sanitized form).
    """
    check_prefix(prefix)
    if not isinstance(username, str) or not username:
        raise ValueError("username must be a non-empty string")
    room = 63 - len(prefix)
    full = prefix + username
    if (
        _IDENTITY_RE.fullmatch(username)
        and 3 <= len(full) <= 63
        and not full.startswith(("xn--", "sthree-"))
        and not full.endswith(("-s3alias", "--ol-s3"))
    ):
        return full
    base = unicodedata.normalize("NFKD", username).encode("ascii", "ignore").decode("ascii").lower()
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    suffix = "--" + _name_hash(username)
    base = base[: room - len(suffix)].rstrip("-") or "u"
    return prefix + base + suffix


def service_uid(prefix: str = "esker-") -> str:
    """The RGW user owning the shared dataset buckets; no hub username maps to it."""
    return f"{check_prefix(prefix)}datasets--owner"


def user_arn(uid: str) -> str:
    return f"arn:aws:iam:::user/{uid}"


# --------------------------------------------------------------------------- datasets and policies
@dataclass(frozen=True)
class Dataset:
    name: str
    bucket: str
    prefix: str = ""  # "" (whole bucket) or ending in "/"
    groups: tuple[str, ...] = ()  # readers; empty: every user
    writers: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, d: Mapping) -> "Dataset":
        prefix = d.get("prefix", "") or ""
        prefix = prefix.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(d["name"], d["bucket"], prefix, tuple(d.get("groups") or ()), tuple(d.get("writers") or ()))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def dataset_access(
    datasets: Iterable[Dataset],
    groups: Iterable[str] = (),
    admin: bool = False,
    writer_groups: Iterable[str] = (),
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(readable, writable) dataset names for a user: writers are admins, members of `writer_groups`
    (instructors) and of the dataset's own `writers`; readers are writers plus the dataset's `groups`
    (everyone when it names none)."""
    groups = set(groups)
    instructor = admin or bool(groups & set(writer_groups))
    readable, writable = [], []
    for d in datasets:
        w = instructor or bool(groups & set(d.writers))
        r = w or not d.groups or bool(groups & set(d.groups))
        if r:
            readable.append(d.name)
        if w:
            writable.append(d.name)
    return tuple(readable), tuple(writable)


READ_OBJECT_ACTIONS = ["s3:GetObject"]
WRITE_OBJECT_ACTIONS = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]


def bucket_policy(bucket: str, datasets: Iterable[Dataset], readers: Mapping[str, Iterable[str]],
                  writers: Mapping[str, Iterable[str]]) -> dict | None:
    """The bucket policy for a dataset bucket (pure). `readers`/`writers`: dataset name -> RGW uids.

    The owner (the hub's service user) needs no statement. None: nobody else has access (no policy).
    """
    statements: list[dict] = []
    all_readers: set[str] = set()
    uploaders: set[str] = set()
    for i, d in enumerate(sorted((d for d in datasets if d.bucket == bucket), key=lambda d: d.name)):
        w = sorted(set(writers.get(d.name, ())))
        r = sorted(set(readers.get(d.name, ())) | set(w))
        objects = f"arn:aws:s3:::{bucket}/{d.prefix}*"
        if r:
            all_readers.update(r)
            statements.append({"Sid": f"Read{i}", "Effect": "Allow", "Principal": {"AWS": [user_arn(u) for u in r]},
                               "Action": READ_OBJECT_ACTIONS, "Resource": [objects]})
            listing = {"Sid": f"List{i}", "Effect": "Allow", "Principal": {"AWS": [user_arn(u) for u in r]},
                       "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"]}
            if d.prefix:
                listing["Condition"] = {"StringLike": {"s3:prefix": [f"{d.prefix}*"]}}
            statements.append(listing)
        if w:
            uploaders.update(w)
            statements.append({"Sid": f"Write{i}", "Effect": "Allow", "Principal": {"AWS": [user_arn(u) for u in w]},
                               "Action": WRITE_OBJECT_ACTIONS, "Resource": [objects]})
    if uploaders:
        statements.append({"Sid": "Uploads", "Effect": "Allow",
                           "Principal": {"AWS": [user_arn(u) for u in sorted(uploaders)]},
                           "Action": ["s3:ListBucketMultipartUploads"], "Resource": [f"arn:aws:s3:::{bucket}"]})
    if all_readers:
        statements.append({"Sid": "Location", "Effect": "Allow",
                           "Principal": {"AWS": [user_arn(u) for u in sorted(all_readers)]},
                           "Action": ["s3:GetBucketLocation"], "Resource": [f"arn:aws:s3:::{bucket}"]})
    if not statements:
        return None
    return {"Version": "2012-10-17", "Statement": statements}


# --------------------------------------------------------------------------- secrets at rest
def _create_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass
class Identity:
    username: str  # hub username, or "" for the datasets owner
    uid: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    readable: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    updated: float = 0.0


class KeyStore:
    """Issued keys, encrypted with Fernet, in a 0600 sqlite file (one row per hub user)."""

    def __init__(self, directory: str | os.PathLike, fernet_key: str | bytes | None = None):
        from cryptography.fernet import Fernet

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key = fernet_key or os.environ.get("ESKER_STORAGE_KEY")
        if not key:
            kf = self.dir / "fernet.key"
            try:
                _create_private(kf, Fernet.generate_key())
            except FileExistsError:
                pass
            os.chmod(kf, 0o600)
            key = kf.read_bytes().strip()
        self._fernet = Fernet(key)
        self.path = self.dir / "keys.sqlite"
        if not self.path.exists():
            try:
                _create_private(self.path, b"")
            except FileExistsError:
                pass
        os.chmod(self.path, 0o600)
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS identities (username TEXT PRIMARY KEY, uid TEXT UNIQUE NOT NULL, "
                "bucket TEXT NOT NULL, access_key TEXT NOT NULL, secret BLOB NOT NULL, readable TEXT NOT NULL, "
                "writable TEXT NOT NULL, updated REAL NOT NULL)"
            )

    @contextmanager
    def _db(self):
        old = os.umask(0o077)  # sqlite's journal files too
        try:
            db = sqlite3.connect(self.path, timeout=10)
        finally:
            os.umask(old)
        try:
            with db:
                yield db
        finally:
            db.close()

    def _row(self, row) -> Identity:
        return Identity(row[0], row[1], row[2], row[3], self._fernet.decrypt(row[4]).decode(),
                        tuple(json.loads(row[5])), tuple(json.loads(row[6])), row[7])

    def get(self, username: str) -> Identity | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM identities WHERE username = ?", (username,)).fetchone()
        return self._row(row) if row else None

    def by_bucket(self, bucket: str) -> Identity | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM identities WHERE bucket = ?", (bucket,)).fetchone()
        return self._row(row) if row else None

    def all(self) -> list[Identity]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM identities ORDER BY username").fetchall()
        return [self._row(r) for r in rows]

    def put(self, ident: Identity) -> None:
        ident.updated = time.time()
        with self._db() as db:
            other = db.execute("SELECT username FROM identities WHERE uid = ? AND username != ?",
                               (ident.uid, ident.username)).fetchone()
            if other:
                raise StorageError(f"RGW user {ident.uid} already belongs to hub user {other[0]!r}")
            db.execute(
                "INSERT OR REPLACE INTO identities VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ident.username, ident.uid, ident.bucket, ident.access_key,
                 self._fernet.encrypt(ident.secret_key.encode()), json.dumps(list(ident.readable)),
                 json.dumps(list(ident.writable)), ident.updated),
            )

    def delete(self, username: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM identities WHERE username = ?", (username,))


# --------------------------------------------------------------------------- Admin Ops
class _Deadline:
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
        import urllib3

        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self._creds = (access_key, secret_key)
        self._http = urllib3.PoolManager(num_pools=2, maxsize=8, retries=False)

    def request(self, method: str, path: str, params: list[tuple[str, str | None]], deadline: _Deadline):
        import urllib3
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

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

    def get_user(self, uid: str, deadline: _Deadline) -> dict | None:
        status, data = self.request("GET", "/admin/user", [("uid", uid)], deadline)
        if status == 404:
            return None
        return self._ok(status, data, f"user info {uid}")

    def create_user(self, uid: str, display_name: str, max_buckets: int, deadline: _Deadline) -> dict:
        status, data = self.request("PUT", "/admin/user", [("uid", uid), ("display-name", display_name),
                                                           ("max-buckets", str(max_buckets)),
                                                           ("key-type", "s3"), ("generate-key", "true")], deadline)
        if status == 409:  # created meanwhile (another hub process): the caller repairs
            return self.get_user(uid, deadline) or {}
        return self._ok(status, data, f"create user {uid}")

    def modify_user(self, uid: str, deadline: _Deadline, **fields: str) -> dict:
        params = [("uid", uid)] + [(k.replace("_", "-"), v) for k, v in fields.items()]
        status, data = self.request("POST", "/admin/user", params, deadline)
        return self._ok(status, data, f"modify user {uid}")

    def remove_user(self, uid: str, purge: bool, deadline: _Deadline) -> None:
        status, data = self.request("DELETE", "/admin/user",
                                    [("uid", uid), ("purge-data", "true" if purge else "false")], deadline)
        if status != 404:
            self._ok(status, data, f"remove user {uid}")

    def create_key(self, uid: str, deadline: _Deadline) -> list[dict]:
        status, data = self.request("PUT", "/admin/user", [("key", None), ("uid", uid), ("key-type", "s3"),
                                                           ("generate-key", "true")], deadline)
        return self._ok(status, data, f"create key for {uid}")

    def remove_key(self, uid: str, access_key: str, deadline: _Deadline) -> None:
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


# --------------------------------------------------------------------------- the service
class StorageService:
    """Object storage for the hub: what a spawn needs (`prepare`), plus rotation and removal."""

    def __init__(
        self,
        endpoint: str,
        admin_credentials: tuple[str, str] | Callable[[], tuple[str, str]],
        state_dir: str | os.PathLike,
        *,
        region: str = "default",
        bucket_prefix: str = "esker-",
        datasets: Iterable[Mapping | Dataset] = (),
        writer_groups: Iterable[str] = ("instructors",),
        admin_users: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        user_endpoint: str | None = None,
        user_max_buckets: int = 1,
        fernet_key: str | bytes | None = None,
    ):
        self.endpoint = endpoint.rstrip("/")
        self.user_endpoint = (user_endpoint or endpoint).rstrip("/")
        self.region = region
        self.prefix = check_prefix(bucket_prefix)
        self.datasets = tuple(d if isinstance(d, Dataset) else Dataset.from_config(d) for d in datasets)
        self.writer_groups = tuple(writer_groups)
        self.admin_users = frozenset(admin_users)
        self.timeout = float(timeout)
        self.user_max_buckets = int(user_max_buckets)
        self.store = KeyStore(Path(state_dir) / "storage", fernet_key)
        self._admin_credentials = admin_credentials
        self._admin: AdminOps | None = None
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._policy_lock = threading.Lock()
        self._datasets_ready = False
        self._broken: set[str] = set()  # dataset buckets that exist but belong to someone else
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("storage.datasets: two datasets have the same name")
        for d in self.datasets:
            if self.prefix and d.bucket.startswith(self.prefix):
                raise ValueError(f"storage.datasets {d.name}: bucket {d.bucket!r} starts with the personal "
                                 f"bucket prefix {self.prefix!r}, so a user could own it; rename it")

    # ---- construction from esker.yaml
    @classmethod
    def from_config(cls, cfg, state_dir: str, mode: str = "embedded") -> "StorageService":
        s = cfg["storage"]
        kw = dict(
            region=s["region"], bucket_prefix=s["bucket_prefix"], datasets=s["datasets"],
            writer_groups=s.get("writer_groups", ["instructors"]), admin_users=cfg["hub"]["admin_users"],
            timeout=s.get("timeout", DEFAULT_TIMEOUT), user_max_buckets=s.get("user_max_buckets", 1),
        )
        if mode == "kubernetes" and cfg["kubernetes"].get("s3_endpoint"):
            kw["user_endpoint"] = cfg["kubernetes"]["s3_endpoint"]
        access = os.environ.get("ESKER_S3_ADMIN_ACCESS_KEY") or s["admin_access_key"]
        secret = os.environ.get("ESKER_S3_ADMIN_SECRET_KEY") or s["admin_secret_key"]
        if s["endpoint"]:
            if not (access and secret):
                raise StorageError("storage.endpoint is set: give the admin user's keys in storage.admin_access_key"
                                   " and admin_secret_key (or $ESKER_S3_ADMIN_ACCESS_KEY/_SECRET_KEY)")
            return cls(s["endpoint"], (access, secret), state_dir, **kw)
        if mode == "kubernetes":
            raise StorageError("storage.endpoint is required on Kubernetes (the RGW of Rook or an external Ceph)")
        from .ceph import cluster_from_config

        cluster = cluster_from_config(s, state_dir)

        def creds():  # read lazily: the embedded cluster starts after the hub loads its config
            c = cluster.admin_credentials()
            return c["access_key"], c["secret_key"]

        return cls(cluster.endpoint, (access, secret) if access and secret else creds, state_dir, **kw)

    # ---- plumbing
    def admin(self) -> AdminOps:
        if self._admin is None:
            creds = self._admin_credentials
            if callable(creds):
                try:
                    creds = creds()
                except Exception as e:  # noqa: BLE001 - e.g. the embedded cluster is not up yet
                    raise StorageUnavailable(f"object storage admin keys are not available yet: {e}") from None
            self._admin = AdminOps(self.endpoint, creds[0], creds[1], self.region)
        return self._admin

    def names(self, username: str) -> str:
        return rgw_name(username, self.prefix)

    def s3(self, ident: Identity, deadline: _Deadline | None = None, endpoint: str | None = None):
        """A boto3 client acting as `ident` (bounded by `deadline`, if given)."""
        from .ceph import s3_client

        timeout = min(deadline.left(), 10.0) if deadline else 60.0
        return s3_client(endpoint or self.endpoint, ident.access_key, ident.secret_key, self.region,
                         timeout=timeout, retries=1 if deadline else 3)

    @contextmanager
    def _user_lock(self, username: str, deadline: _Deadline):
        with self._locks_guard:
            lock = self._locks.setdefault(username, threading.Lock())
        if not lock.acquire(timeout=deadline.left()):
            raise StorageUnavailable(f"another storage operation for {username} is still running")
        try:
            yield
        finally:
            lock.release()

    def _grant(self, ident: Identity) -> dict[str, str]:
        by_name = {d.name: d for d in self.datasets}
        return {
            "endpoint": self.user_endpoint,
            "access_key": ident.access_key,
            "secret_key": ident.secret_key,
            "region": self.region,
            "bucket": ident.bucket,
            # The same JSON object esker_client.datasets() reads: {"name": "s3://bucket/prefix/"}.
            "datasets": json.dumps({n: by_name[n].url for n in ident.readable
                                    if n in by_name and by_name[n].bucket not in self._broken}, sort_keys=True),
        }

    async def _bounded(self, fn, *args, **kw):
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kw), self.timeout + 1.0)
        except asyncio.TimeoutError:
            raise StorageUnavailable(f"object storage did not answer within {self.timeout:g} s") from None

    # ---- identities
    def _ensure_identity(self, username: str, uid: str, display: str, deadline: _Deadline,
                         max_buckets: int | None = None) -> Identity:
        """RGW user `uid` exists, is enabled and has exactly one key, the one recorded for `username`."""
        admin = self.admin()
        rec = self.store.get(username)
        info = admin.get_user(uid, deadline)
        if info is None:
            if rec is not None:
                log.warning("RGW user %s had disappeared; creating it again", uid)
            info = admin.create_user(uid, display, max_buckets or self.user_max_buckets, deadline)
            keys = _s3_keys(info, uid)
            if len(keys) == 1 and (rec is None or rec.access_key != keys[0]["access_key"]):
                rec = Identity(username, uid, uid, keys[0]["access_key"], keys[0]["secret_key"])
                self.store.put(rec)
                log.info("created RGW user %s for %r", uid, username)
                return rec
            info = admin.get_user(uid, deadline) or info
        if info.get("suspended"):
            admin.modify_user(uid, deadline, suspended="false")
            log.info("re-enabled RGW user %s", uid)
        keys = [k["access_key"] for k in _s3_keys(info, uid)]
        if rec is None or rec.access_key not in keys:
            # Keys we never recorded (an interrupted first call) or none at all: issue fresh ones.
            fresh = [k for k in admin.create_key(uid, deadline)
                     if k.get("user") == uid and k["access_key"] not in keys]
            if len(fresh) != 1:
                raise StorageError(f"could not tell which key of {uid} is new")
            old = rec
            rec = Identity(username, uid, uid, fresh[0]["access_key"], fresh[0]["secret_key"],
                           old.readable if old else (), old.writable if old else ())
            self.store.put(rec)
            log.info("issued new keys for RGW user %s (repair)", uid)
        for ak in keys:
            if ak != rec.access_key:
                admin.remove_key(uid, ak, deadline)
                log.info("removed a stray key of RGW user %s", uid)
        return rec

    def _ensure_bucket(self, ident: Identity, deadline: _Deadline) -> None:
        from botocore.exceptions import ClientError

        s3 = self.s3(ident, deadline)
        try:
            s3.head_bucket(Bucket=ident.bucket)
            return
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:
                raise StorageError(f"bucket {ident.bucket} exists and belongs to another RGW user") from None
            if status != 404:
                raise
        try:
            s3.create_bucket(Bucket=ident.bucket)
            log.info("created bucket %s", ident.bucket)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                raise StorageError(f"bucket {ident.bucket} exists and belongs to another RGW user") from None
            if code == "TooManyBuckets":
                raise StorageError(f"{ident.uid} has reached its bucket limit; it must delete a bucket "
                                   f"before {ident.bucket} can be created") from None
            raise

    def _owner(self, deadline: _Deadline) -> Identity:
        return self._ensure_identity("", service_uid(self.prefix), "Esker shared datasets", deadline,
                                    max_buckets=1000)

    def _ensure_datasets(self, deadline: _Deadline) -> None:
        if self._datasets_ready or not self.datasets:
            return
        owner = self._owner(deadline)
        for bucket in sorted({d.bucket for d in self.datasets}):
            try:
                self._ensure_bucket(Identity("", owner.uid, bucket, owner.access_key, owner.secret_key), deadline)
                self._broken.discard(bucket)
            except StorageError as e:
                if isinstance(e, StorageUnavailable):
                    raise
                # A misconfigured dataset must not take everyone's storage down: skip it, loudly.
                log.error("dataset bucket %s is unusable, its datasets are skipped: %s", bucket, e)
                self._broken.add(bucket)
        self._apply_policies({d.bucket for d in self.datasets}, deadline, owner)
        self._datasets_ready = True

    def _apply_policies(self, buckets: Iterable[str], deadline: _Deadline, owner: Identity | None = None) -> None:
        from botocore.exceptions import ClientError

        buckets = sorted(set(buckets) - self._broken)
        if not buckets:
            return
        with self._policy_lock:
            owner = owner or self.store.get("") or self._owner(deadline)
            readers: dict[str, list[str]] = {}
            writers: dict[str, list[str]] = {}
            for ident in self.store.all():
                if not ident.username:
                    continue
                for n in ident.readable:
                    readers.setdefault(n, []).append(ident.uid)
                for n in ident.writable:
                    writers.setdefault(n, []).append(ident.uid)
            s3 = self.s3(owner, deadline)
            for bucket in buckets:
                policy = bucket_policy(bucket, self.datasets, readers, writers)
                try:
                    if policy is None:
                        s3.delete_bucket_policy(Bucket=bucket)
                    else:
                        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
                except ClientError as e:
                    if policy is None and e.response.get("Error", {}).get("Code") == "NoSuchBucketPolicy":
                        continue
                    raise StorageError(f"could not set the policy of dataset bucket {bucket}: {e}") from None
                log.info("policy of dataset bucket %s: %d statement(s)", bucket,
                         len(policy["Statement"]) if policy else 0)

    def _changed_buckets(self, before: Identity | None, readable, writable) -> set[str]:
        old_r, old_w = (set(before.readable), set(before.writable)) if before else (set(), set())
        changed = (old_r ^ set(readable)) | (old_w ^ set(writable))
        return {d.bucket for d in self.datasets if d.name in changed}

    # ---- the operations (synchronous, bounded; the async ones run these in a thread)
    def prepare_sync(self, username: str, groups: Iterable[str] = (), admin: bool = False) -> dict[str, str]:
        deadline = _Deadline(self.timeout, f"preparing storage for {username}")
        uid = self.names(username)
        admin = admin or username in self.admin_users
        with self._user_lock(username, deadline):
            try:
                self._ensure_datasets(deadline)
                before = self.store.get(username)
                ident = self._ensure_identity(username, uid, username, deadline)
                self._ensure_bucket(ident, deadline)
                readable, writable = dataset_access(self.datasets, groups, admin, self.writer_groups)
                changed = self._changed_buckets(before, readable, writable)
                if before is None or before.access_key != ident.access_key:
                    changed |= {d.bucket for d in self.datasets if d.name in readable}  # re-created user
                if (ident.readable, ident.writable) != (readable, writable):
                    ident.readable, ident.writable = readable, writable
                    self.store.put(ident)
                self._apply_policies(changed, deadline)
            except StorageError:
                raise
            except Exception as e:  # botocore's connection errors and the like
                raise _as_storage_error(e, self.endpoint) from None
        return self._grant(ident)

    async def prepare(self, username: str, groups: Iterable[str] = (), admin: bool = False) -> dict[str, str]:
        """Make sure `username` has an RGW user, keys and a private bucket; return the spawn's grant:
        {endpoint, access_key, secret_key, region, bucket, datasets}. Raises StorageUnavailable within
        about `timeout` seconds when the gateway is down or slow."""
        return await self._bounded(self.prepare_sync, username, tuple(groups), admin)

    async def release(self, username: str) -> None:
        """A server stopped. Keys outlive servers (a user's other tools keep working), so nothing is
        revoked here; `rotate` and `delete_user` are the operator's tools for that."""
        return None

    def rotate_sync(self, username: str) -> dict[str, str]:
        deadline = _Deadline(max(self.timeout, 10.0), f"rotating keys of {username}")
        with self._user_lock(username, deadline):
            rec = self.store.get(username)
            if rec is None:
                raise StorageError(f"{username} has no object storage identity yet (it is made at first spawn)")
            try:
                admin = self.admin()
                info = admin.get_user(rec.uid, deadline)
                if info is None:
                    raise StorageError(f"RGW user {rec.uid} does not exist")
                old = [k["access_key"] for k in _s3_keys(info, rec.uid)]
                fresh = [k for k in admin.create_key(rec.uid, deadline)
                         if k.get("user") == rec.uid and k["access_key"] not in old]
                if len(fresh) != 1:
                    raise StorageError(f"could not tell which key of {rec.uid} is new")
                rec.access_key, rec.secret_key = fresh[0]["access_key"], fresh[0]["secret_key"]
                self.store.put(rec)  # recorded first: an interruption leaves stray old keys, removed next time
                for ak in old:
                    admin.remove_key(rec.uid, ak, deadline)
            except StorageError:
                raise
            except Exception as e:  # noqa: BLE001
                raise _as_storage_error(e, self.endpoint) from None
        log.info("rotated the keys of RGW user %s", rec.uid)
        return self._grant(rec)

    async def rotate(self, username: str) -> dict[str, str]:
        """New keys for `username`; the old ones stop working at once (running servers need a restart)."""
        return await asyncio.to_thread(self.rotate_sync, username)

    def delete_user_sync(self, username: str, purge: bool = False) -> None:
        deadline = _Deadline(max(self.timeout, 30.0 if purge else 10.0), f"deleting storage of {username}")
        uid = self.names(username)
        with self._user_lock(username, deadline):
            rec = self.store.get(username)
            uid = rec.uid if rec else uid
            try:
                admin = self.admin()
                if purge:
                    admin.remove_user(uid, True, deadline)
                else:
                    info = admin.get_user(uid, deadline)
                    if info is not None:
                        for k in _s3_keys(info, uid):
                            admin.remove_key(uid, k["access_key"], deadline)
                        admin.modify_user(uid, deadline, suspended="true")
                self.store.delete(username)
                if rec:
                    self._apply_policies({d.bucket for d in self.datasets
                                          if d.name in set(rec.readable) | set(rec.writable)}, deadline)
            except StorageError:
                raise
            except Exception as e:  # noqa: BLE001
                raise _as_storage_error(e, self.endpoint) from None
        log.info("%s RGW user %s", "purged" if purge else "suspended (keys removed)", uid)

    async def delete_user(self, username: str, purge: bool = False) -> None:
        """Remove the user's keys and suspend it (data kept); with purge, delete the user and its buckets."""
        return await asyncio.to_thread(self.delete_user_sync, username, purge)

    def ensure_datasets_sync(self) -> None:
        deadline = _Deadline(max(self.timeout, 10.0), "preparing shared datasets")
        try:
            self._datasets_ready = False
            self._ensure_datasets(deadline)
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _as_storage_error(e, self.endpoint) from None

    async def ensure_datasets(self) -> None:
        """Create the dataset buckets (owned by the hub's service user) and set their policies."""
        return await self._bounded(self.ensure_datasets_sync)

    def show(self, username: str) -> Identity | None:
        return self.store.get(username)

    def credentials_for_bucket(self, bucket: str) -> Identity | None:
        """Keys that own `bucket`: the datasets owner for a dataset bucket, else a user's personal bucket."""
        if any(d.bucket == bucket for d in self.datasets):
            owner = self.store.get("")
            if owner is None:
                self.ensure_datasets_sync()
                owner = self.store.get("")
            return owner
        return self.store.by_bucket(bucket)


def _as_storage_error(e: Exception, endpoint: str) -> StorageError:
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

    if isinstance(e, (BotoConnectionError, HTTPClientError)):
        return StorageUnavailable(f"object storage at {endpoint} is unreachable ({_why(e)})")
    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500:
            return StorageUnavailable(f"object storage at {endpoint} failed: {e}")
        return StorageError(str(e))
    return StorageError(f"{type(e).__name__}: {e}")
