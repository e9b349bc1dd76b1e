"""A throwaway single-node Ceph (memstore) for the tests: one per pytest session, on free loopback ports in a
temporary directory, stopped at the end.

Use it from conftest.py (or a test module)::

    from ceph_fixture import ceph  # noqa: F401  (the session fixture)

    def test_x(ceph):
        ceph.endpoint, ceph.access_key, ceph.secret_key   # the RGW admin user (users=*;buckets=*)
        ceph.s3()                                         # boto3 client as that admin user
        svc = ceph.storage_service(tmp_path, datasets=[...])   # an esker StorageService on this cluster
        ceph.esker_config(tmp_path)                       # an esker.yaml pointing at it (path)

Importing the fixture from several places still starts one cluster: the instance is shared and stopped when
the last user of it is torn down. ``ESKER_TEST_CEPH_ENDPOINT`` with ``ESKER_TEST_CEPH_ACCESS_KEY`` and
``ESKER_TEST_CEPH_SECRET_KEY`` run the tests against an existing gateway instead (tests that stop radosgw
are skipped then).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from esker.objectstore.ceph import CephCluster
from esker.objectstore.s3client import s3_client
from esker.system.ports import free_port, free_port_range


@dataclass
class CephHandle:
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = "default"
    cluster: CephCluster | None = None  # None: an external gateway
    directory: Path | None = None
    start_seconds: float = 0.0

    @property
    def admin_credentials(self) -> tuple[str, str]:
        return self.access_key, self.secret_key

    def s3(self, access_key: str | None = None, secret_key: str | None = None, **kw):
        return s3_client(self.endpoint, access_key or self.access_key, secret_key or self.secret_key,
                         self.region, **kw)

    def storage_service(self, state_dir, **kw):
        from esker.objectstore.service import StorageService

        return StorageService(self.endpoint, self.admin_credentials, state_dir, region=self.region, **kw)

    def esker_config(self, directory, storage: dict | None = None, profiles: list | None = None) -> Path:
        """Write an esker.yaml whose storage section points at this cluster; return its path."""
        import yaml

        s = {"enabled": True, "endpoint": self.endpoint, "region": self.region,
             "admin_access_key": self.access_key, "admin_secret_key": self.secret_key}
        s.update(storage or {})
        data = {"storage": s, "profiles": profiles or [
            {"slug": "minimal", "display_name": "Minimal", "image": "x", "environment": "minimal"}]}
        path = Path(directory) / "esker.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def restart_rgw(self) -> None:
        if self.cluster is not None:
            self.cluster.start()


_lock = threading.Lock()
_shared: CephHandle | None = None
_users = 0


def cluster_ports() -> tuple[int, list[int]]:
    """Free loopback ports for a cluster: the first of 16 for the daemons' messengers, and the RGW's and the
    monitor's outside that range."""
    base = free_port_range(16)
    ports: list[int] = []
    while len(ports) < 2:
        p = free_port()
        if not base <= p < base + 16 and p not in ports:
            ports.append(p)
    return base, ports


def start_cluster(directory: str | os.PathLike | None = None, objectstore: str = "memstore") -> CephHandle:
    """Start a throwaway cluster on free loopback ports (the caller stops it: handle.cluster.stop())."""
    if os.environ.get("ESKER_TEST_CEPH_ENDPOINT"):
        return CephHandle(os.environ["ESKER_TEST_CEPH_ENDPOINT"], os.environ["ESKER_TEST_CEPH_ACCESS_KEY"],
                          os.environ["ESKER_TEST_CEPH_SECRET_KEY"],
                          os.environ.get("ESKER_TEST_CEPH_REGION", "default"))
    if not shutil.which("ceph-mon") or not shutil.which("radosgw"):
        pytest.skip("Ceph is not installed (scripts/install-ceph.sh)")
    directory = Path(directory or tempfile.mkdtemp(prefix="esker-ceph-"))
    base, ports = cluster_ports()
    cluster = CephCluster(directory, objectstore=objectstore, port=ports[0], mon_port=ports[1],
                          ms_port_min=base, ms_port_max=base + 15, size="4G", start_timeout=120)
    t0 = time.monotonic()
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    creds = cluster.admin_credentials()
    return CephHandle(cluster.endpoint, creds["access_key"], creds["secret_key"], cluster=cluster,
                      directory=directory, start_seconds=time.monotonic() - t0)


def acquire() -> CephHandle:
    global _shared, _users
    with _lock:
        if _shared is None:
            _shared = start_cluster()
        _users += 1
        return _shared


def release() -> None:
    global _shared, _users
    with _lock:
        _users -= 1
        if _users == 0 and _shared is not None:
            handle, _shared = _shared, None
            if handle.cluster is not None:
                handle.cluster.stop()
                shutil.rmtree(handle.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def ceph() -> CephHandle:
    """A running single-node Ceph RGW (memstore) with an admin user: endpoint, access_key, secret_key."""
    handle = acquire()
    try:
        yield handle
    finally:
        release()
