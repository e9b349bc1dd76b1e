"""esker.objectstore.ceph: the single-node cluster itself (idempotent start, checks, managed-service entry)."""

from __future__ import annotations

import json
import stat

import pytest

from ceph_fixture import ceph  # noqa: F401  (session fixture)
from esker.objectstore.ceph import CephCluster, CephError, service_commands

pytestmark = pytest.mark.ceph


def _made_once(directory):
    """What creating the cluster writes and a later start must leave alone: (inode, mtime, bytes) each."""
    files = [directory / "cluster.json", directory / "rgw-admin.json", directory / "keys" / "client.admin.keyring",
             directory / "mon" / "ceph-a" / "done", directory / "mon" / "ceph-a" / "keyring",
             directory / "osd" / "ceph-0" / "keyring", directory / "osd" / "ceph-0" / "type"]
    return {f.relative_to(directory).as_posix(): (f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes())
            for f in files}


def test_start_is_idempotent_and_healthy(ceph):  # noqa: F811
    if ceph.cluster is None:
        pytest.skip("external gateway")
    pids = {n: ceph.cluster.daemons.adopt(n).pid for n in ("mon", "osd", "rgw")}
    before = _made_once(ceph.directory)
    ceph.cluster.start()
    assert {n: ceph.cluster.daemons.adopt(n).pid for n in pids} == pids  # nothing restarted
    # nothing made again: no new monitor (mkfs), OSD, fsid, keyring or admin user
    assert _made_once(ceph.directory) == before
    assert ceph.cluster.health() == "HEALTH_OK"
    # a second handle on the same directory (another process) sees the same daemons through the pid files
    other = CephCluster(ceph.directory, objectstore="memstore", port=ceph.cluster.port,
                        mon_port=ceph.cluster.mon_port, ms_port_min=ceph.cluster.ms_port_min,
                        ms_port_max=ceph.cluster.ms_port_max)
    assert other.running() == {"mon": True, "osd": True, "rgw": True}
    assert other.admin_credentials()["access_key"] == ceph.access_key
    assert json.loads((ceph.directory / "cluster.json").read_text())["objectstore"] == "memstore"
    assert (ceph.directory / "osd" / "ceph-0" / "type").read_text().strip() == "memstore"


def test_secrets_are_private(ceph):  # noqa: F811
    if ceph.cluster is None:
        pytest.skip("external gateway")
    for f in [ceph.directory / "rgw-admin.json", *(ceph.directory / "keys").iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(ceph.directory.stat().st_mode) == 0o700


def test_wrong_objectstore_refused(ceph):  # noqa: F811
    if ceph.cluster is None:
        pytest.skip("external gateway")
    with pytest.raises(CephError, match="memstore cluster"):
        CephCluster(ceph.directory, objectstore="bluestore", port=ceph.cluster.port,
                    mon_port=ceph.cluster.mon_port, ms_port_min=ceph.cluster.ms_port_min,
                    ms_port_max=ceph.cluster.ms_port_max).start()


def test_argument_checks(tmp_path):
    with pytest.raises(CephError, match="objectstore"):
        CephCluster(tmp_path, objectstore="bluestor")
    with pytest.raises(CephError, match="inside"):
        CephCluster(tmp_path, port=6801)
    with pytest.raises(CephError, match="8 ports"):
        CephCluster(tmp_path, ms_port_min=7000, ms_port_max=7002)


def test_service_commands():
    cfg = {"embedded": {"objectstore": "bluestore", "port": 7480, "size": "20G"}}
    [svc] = service_commands(cfg, "/var/lib/esker", python="/venv/bin/python")
    assert svc["name"] == "ceph"
    assert svc["command"][:5] == ["/venv/bin/python", "-m", "esker.objectstore.cephd", "run", "--dir"]
    assert svc["command"][5] == "/var/lib/esker/ceph"
    assert "--size" in svc["command"] and "20G" in svc["command"]
