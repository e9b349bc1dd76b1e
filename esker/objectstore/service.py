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
import json
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Mapping

from esker.objectstore.ceph import cluster_from_config, embedded_starting
from esker.objectstore.errors import StorageError, StorageUnavailable
from esker.objectstore.names import (
    Dataset,
    bucket_policy,
    check_prefix,
    dataset_access,
    rgw_name,
    service_uid,
)
from esker.objectstore.rgwadmin import AdminOps, Deadline, _s3_keys, _why
from esker.objectstore.s3client import s3_client
from esker.state.keystore import Identity, KeyStore

log = logging.getLogger("esker.storage")

DEFAULT_TIMEOUT = 5.0
DEFAULT_START_WAIT = 60.0


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
        start_wait: float = 0.0,
        starting: Callable[[], str | None] | None = None,
    ):
        self.endpoint = endpoint.rstrip("/")
        self.user_endpoint = (user_endpoint or endpoint).rstrip("/")
        self.region = region
        self.prefix = check_prefix(bucket_prefix)
        self.datasets = tuple(d if isinstance(d, Dataset) else Dataset.from_config(d) for d in datasets)
        self.writer_groups = tuple(writer_groups)
        self.admin_users = frozenset(admin_users)
        self.timeout = float(timeout)
        # How long a spawn waits while `starting()` says the gateway is coming up (the embedded Ceph at hub start).
        self.start_wait = float(start_wait)
        self._starting = starting
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
            start_wait=s.get("start_wait", DEFAULT_START_WAIT),
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
        cluster = cluster_from_config(s, state_dir)

        def creds():  # read lazily: the embedded cluster starts after the hub loads its config
            c = cluster.admin_credentials()
            return c["access_key"], c["secret_key"]

        return cls(cluster.endpoint, (access, secret) if access and secret else creds, state_dir,
                   starting=lambda: embedded_starting(cluster.dir), **kw)

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

    def starting(self) -> str | None:
        """Why the gateway will answer soon (the hub is still starting the embedded Ceph), or None: it is up,
        down, or external (nothing here knows when an external gateway comes back)."""
        if self._starting is None:
            return None
        try:
            return self._starting()
        except Exception as e:  # noqa: BLE001 - a record we cannot read says nothing
            log.debug("cannot tell whether object storage is starting: %s", e)
            return None

    def names(self, username: str) -> str:
        return rgw_name(username, self.prefix)

    def s3(self, ident: Identity, deadline: Deadline | None = None, endpoint: str | None = None):
        """A boto3 client acting as `ident` (bounded by `deadline`, if given)."""
        timeout = min(deadline.left(), 10.0) if deadline else 60.0
        return s3_client(endpoint or self.endpoint, ident.access_key, ident.secret_key, self.region,
                         timeout=timeout, retries=1 if deadline else 3)

    @contextmanager
    def _user_lock(self, username: str, deadline: Deadline):
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
            # Which of them the user may also write (mounted read-write in embedded mode).
            "writable": json.dumps(sorted(n for n in ident.writable if n in by_name)),
        }

    async def _bounded(self, fn, *args, **kw):
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kw), self.timeout + 1.0)
        except asyncio.TimeoutError:
            raise StorageUnavailable(f"object storage did not answer within {self.timeout:g} s") from None

    # ---- identities
    def _ensure_identity(self, username: str, uid: str, display: str, deadline: Deadline,
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

    def _ensure_bucket(self, ident: Identity, deadline: Deadline) -> None:
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

    def _owner(self, deadline: Deadline) -> Identity:
        return self._ensure_identity("", service_uid(self.prefix), "Esker shared datasets", deadline,
                                    max_buckets=1000)

    def _ensure_datasets(self, deadline: Deadline) -> None:
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

    def _apply_policies(self, buckets: Iterable[str], deadline: Deadline, owner: Identity | None = None) -> None:
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
                policy = bucket_policy(bucket, self.datasets, readers, writers, owner.uid)
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
        deadline = Deadline(self.timeout, f"preparing storage for {username}")
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
        deadline = Deadline(max(self.timeout, 10.0), f"rotating keys of {username}")
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
        deadline = Deadline(max(self.timeout, 30.0 if purge else 10.0), f"deleting storage of {username}")
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
        deadline = Deadline(max(self.timeout, 10.0), "preparing shared datasets")
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
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(e, (BotoConnectionError, HTTPClientError)):
        return StorageUnavailable(f"object storage at {endpoint} is unreachable ({_why(e)})")
    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500:
            return StorageUnavailable(f"object storage at {endpoint} failed: {e}")
        return StorageError(str(e))
    return StorageError(f"{type(e).__name__}: {e}")
