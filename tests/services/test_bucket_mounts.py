"""Bucket mounts (esker.objectstore.mounts) against the session's real Ceph RGW with real s3fs: the faults a
notebook meets. A gateway killed mid-read is a clear I/O error and the mount works again when it is back; a
write interrupted by it leaves no object; rotated keys stop working on the mount at once."""

from __future__ import annotations

import asyncio
import errno
import os
import uuid

import pytest
from botocore.exceptions import ClientError

from ceph_fixture import ceph  # noqa: F401  (session fixture)
from esker.objectstore import mounts

pytestmark = pytest.mark.skipif(mounts.unsupported() is not None, reason=str(mounts.unsupported()))


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def mounted(ceph, tmp_path):  # noqa: F811
    """alice's bucket mounted (as root, uid 0: the permission side is the hub tests'), and her grant."""
    svc = ceph.storage_service(tmp_path / "state", bucket_prefix=f"m{uuid.uuid4().hex[:6]}-")
    grant = run(svc.prepare("alice"))
    root = mounts.account_root(str(tmp_path / "state"), "alice")
    mounts.prepare_root(root, 0)
    [m] = mounts.plan_mounts(grant, root)
    pid = mounts.mount(m, mounts.s3fs_command(m, grant["endpoint"], 0, 0),
                       mounts.s3fs_env(m, grant["access_key"], grant["secret_key"], str(tmp_path)),
                       str(tmp_path / "s3fs.log"))
    try:
        yield svc, grant, m, pid
    finally:
        mounts.unmount(m.path, pid)
    assert not mounts.is_mounted(m.path)


def s3(ceph, grant):  # noqa: F811
    return ceph.s3(grant["access_key"], grant["secret_key"])


def test_gateway_killed_mid_read_is_an_io_error_and_the_mount_comes_back(ceph, mounted):  # noqa: F811
    if ceph.cluster is None:
        pytest.skip("external gateway: cannot stop radosgw")
    svc, grant, m, pid = mounted
    body = os.urandom(8 * 2**20) * 20  # 160 MB: more than s3fs fetches ahead
    s3(ceph, grant).put_object(Bucket=grant["bucket"], Key="big.bin", Body=body)
    path = os.path.join(m.path, "big.bin")
    with open(path, "rb", buffering=0) as f:
        assert f.read(2**20) == body[: 2**20]
        ceph.cluster.stop_daemon("rgw")
        try:
            with pytest.raises(OSError) as e:
                f.seek(120 * 2**20)
                while f.read(2**20):
                    pass
            assert e.value.errno == errno.EIO
            with pytest.raises(OSError):
                open(os.path.join(m.path, "other.bin"), "rb").read()
        finally:
            ceph.restart_rgw()
    assert mounts.is_mounted(m.path) and mounts._alive(pid), "the mount outlived the outage"
    with open(path, "rb") as f:
        assert f.read() == body


def test_a_write_cut_by_the_gateway_leaves_no_object(ceph, mounted):  # noqa: F811
    if ceph.cluster is None:
        pytest.skip("external gateway: cannot stop radosgw")
    svc, grant, m, pid = mounted
    f = open(os.path.join(m.path, "half.bin"), "wb")
    f.write(os.urandom(8 * 2**20))
    ceph.cluster.stop_daemon("rgw")
    try:
        with pytest.raises(OSError):
            f.close()  # the upload happens at close, and fails
    finally:
        ceph.restart_rgw()
    with pytest.raises(ClientError) as e:
        resp = s3(ceph, grant).head_object(Bucket=grant["bucket"], Key="half.bin")
        assert resp["ContentLength"] == 0, "at most the empty placeholder s3fs makes at open"
        raise ClientError({"Error": {"Code": "404"}}, "HeadObject")
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_rotated_keys_end_the_mount_at_once(ceph, mounted, tmp_path):  # noqa: F811
    svc, grant, m, pid = mounted
    s3(ceph, grant).put_object(Bucket=grant["bucket"], Key="before.txt", Body=b"old keys")
    assert open(os.path.join(m.path, "before.txt")).read() == "old keys"
    new = run(svc.rotate("alice"))
    # What `esker storage rotate` does next: s3fs with refused keys shows files as empty, so the mount ends.
    assert mounts.detach(str(tmp_path), m.path) == [m.path]
    assert not mounts.is_mounted(m.path) and not mounts._alive(pid)
    s3(ceph, new).put_object(Bucket=grant["bucket"], Key="after.txt", Body=b"new keys")
    os.chmod(m.path, 0o700)
    os.setegid(65534), os.seteuid(65534)  # as someone who is not root (the user, here: anyone but root)
    try:
        with pytest.raises(PermissionError):
            open(os.path.join(m.path, "after.txt")).read()
        with pytest.raises(PermissionError):
            open(os.path.join(m.path, "written.txt"), "w").write("with old keys")
    finally:
        os.seteuid(0), os.setegid(0)
    assert os.listdir(m.path) == [], "nothing was written into the bare folder"
    with pytest.raises(ClientError):
        s3(ceph, new).head_object(Bucket=grant["bucket"], Key="written.txt")


def _shared(tmp_path, grant, readers):
    """The owner's bucket as a read-only dataset shared by ``readers`` (their folders under tmp_path)."""
    marker = str(tmp_path / "marker")
    plans = [mounts.Mount("data", grant["bucket"], "", str(tmp_path / "mounts" / r / grant["bucket"]), True)
             for r in readers]
    src, cmd = mounts.shared_command(plans[0], mounts.shared_point(str(tmp_path), plans[0], grant["access_key"]),
                                     grant["endpoint"])
    env = mounts.s3fs_env(src, grant["access_key"], grant["secret_key"], marker)
    return marker, plans, src, cmd, env


def binds(point):
    with open("/proc/self/mountinfo") as f:
        return mounts.binds_in(f.read(), os.path.realpath(point))


def test_a_shared_dataset_ends_with_its_last_reader_and_a_failed_bind_leaves_nothing(ceph, tmp_path):  # noqa: F811
    svc = ceph.storage_service(tmp_path / "state", bucket_prefix=f"m{uuid.uuid4().hex[:6]}-")
    grant = run(svc.prepare("owner"))
    s3(ceph, grant).put_object(Bucket=grant["bucket"], Key="a.txt", Body=b"shared")
    marker, (p1, p2, bad), src, cmd, env = _shared(tmp_path, grant, ["p1", "p2", "bad"])
    try:
        pid = mounts.attach_shared(p1, src, cmd, env, str(tmp_path / "s3fs.log"))
        assert mounts.attach_shared(p2, src, cmd, env, str(tmp_path / "s3fs.log")) == pid  # one daemon
        assert [pt for _, pt in mounts.running(marker)] == [src.path]
        assert open(os.path.join(p2.path, "a.txt")).read() == "shared"
        # A reader whose folder cannot be made: a clear error, the others' binds and the daemon untouched.
        os.makedirs(os.path.dirname(os.path.dirname(bad.path)), exist_ok=True)
        open(os.path.dirname(bad.path), "w").close()  # a file where the bucket's folder should be
        with pytest.raises(OSError):
            mounts.attach_shared(bad, src, cmd, env, str(tmp_path / "s3fs.log"))
        assert sorted(binds(src.path)) == sorted(os.path.realpath(p.path) for p in (p1, p2))
        mounts.detach_shared(p1.path, src.path, pid)
        assert not mounts.is_mounted(p1.path) and binds(src.path) == [os.path.realpath(p2.path)]
        assert open(os.path.join(p2.path, "a.txt")).read() == "shared"
        mounts.detach_shared(p2.path, src.path, pid)
        assert not mounts.is_mounted(p2.path) and not mounts.is_mounted(src.path)
        assert mounts.running(marker) == []
        # Alone, a failed bind ends the mount it made.
        with pytest.raises(OSError):
            mounts.attach_shared(bad, src, cmd, env, str(tmp_path / "s3fs.log"))
        assert not mounts.is_mounted(src.path) and mounts.running(marker) == []
    finally:  # nothing left mounted, whatever failed
        for pid, point in mounts.running(marker):
            mounts.unmount(point, pid)


def test_stop_all_ends_a_shared_dataset_and_every_readers_bind(ceph, tmp_path):  # noqa: F811
    """`esker stop --all` unmounts each of the hub's s3fs daemons; a shared one takes its readers' binds
    with it (left, they would stay mounted, disconnected)."""
    svc = ceph.storage_service(tmp_path / "state", bucket_prefix=f"m{uuid.uuid4().hex[:6]}-")
    grant = run(svc.prepare("owner"))
    marker, plans, src, cmd, env = _shared(tmp_path, grant, ["p1", "p2"])
    try:
        for p in plans:
            mounts.attach_shared(p, src, cmd, env, str(tmp_path / "s3fs.log"))
        [(pid, point)] = mounts.running(marker)
        mounts.unmount(point, pid)
        assert not any(mounts.is_mounted(p) for p in [src.path] + [p.path for p in plans])
        assert mounts.running(marker) == []
    finally:  # nothing left mounted, whatever failed
        for pid, point in mounts.running(marker):
            mounts.unmount(point, pid)
