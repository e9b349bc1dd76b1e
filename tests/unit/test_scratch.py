"""Scratch quotas (esker.system.scratch): the pure parts, then one real image per test where this host can
mount one (root, loop devices), since a quota is only as good as the ENOSPC the kernel returns."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from esker.system import scratch

MiB = 1024**2
can_mount = pytest.mark.skipif(scratch.quota_unsupported(os.geteuid() == 0) is not None,
                               reason=f"no scratch quotas here: {scratch.quota_unsupported(os.geteuid() == 0)}")


def test_the_image_lives_in_the_root_only_folder_beside_the_users():
    assert scratch.image_path("/var/lib/esker/scratch/jupyter-bob") == "/var/lib/esker/scratch/.images/jupyter-bob.img"
    assert scratch.image_path("/s/jupyter-bob/") == "/s/.images/jupyter-bob.img"


def test_a_hub_that_is_not_root_says_why_it_has_no_quota():
    why = scratch.quota_unsupported(root_user=False)
    assert why and "not root" in why


def test_mounted_reads_the_kernels_table(tmp_path):
    assert scratch.mounted("/")
    assert not scratch.mounted(str(tmp_path))
    assert "/" in scratch.mounts()


def test_a_promise_the_disk_cannot_keep_is_refused_and_leaves_nothing(tmp_path):
    image = str(tmp_path / "u.img")
    free = scratch.free_bytes(str(tmp_path))
    with pytest.raises(scratch.NoRoom, match="cannot be reserved"):
        scratch.reserve(image, 64 * MiB, headroom=free)  # only what the hub must keep free is left
    assert not os.path.exists(image)


def test_a_reservation_takes_its_whole_size_from_the_disk(tmp_path):
    image = str(tmp_path / "u.img")
    scratch.reserve(image, 8 * MiB, headroom=0)
    assert os.stat(image).st_blocks * 512 >= 8 * MiB  # allocated, not sparse


def _loops_of(image: str) -> str:
    return subprocess.run(["losetup", "-j", image], capture_output=True, text=True).stdout.strip()


@can_mount
def test_writing_past_the_quota_is_enospc_and_release_leaves_nothing(tmp_path):
    root = tmp_path / "scratch"
    path = str(root / "u1")
    image = scratch.image_path(path)
    assert scratch.mount_quota(path, 64 * MiB, 65534, 65534, keep=False)
    try:
        scratch.prepare(path, 65534, 65534)
        assert scratch.mounted(path) and _loops_of(image)
        opts = next(line.split()[3] for line in open("/proc/mounts") if line.split()[1] == path).split(",")
        assert "nodev" in opts and "nosuid" in opts
        assert os.stat(os.path.dirname(image)).st_mode & 0o777 == 0o700
        assert os.stat(path).st_uid == 65534
        written = 0
        with pytest.raises(OSError) as e, open(os.path.join(path, "fill"), "wb", buffering=0) as f:
            while written < 128 * MiB:
                written += f.write(b"\0" * MiB)
            os.fsync(f.fileno())
        assert e.value.errno == errno.ENOSPC
        assert 48 * MiB < written <= 64 * MiB
        # The disk gave no more than the promise (and a block of the image file's own extent tree).
        assert os.stat(image).st_blocks * 512 <= 64 * MiB + 64 * 1024
    finally:
        scratch.release_quota(path, keep=False)
    assert not scratch.mounted(path) and not os.path.exists(image) and _loops_of(image) == ""
    scratch.release_quota(path, keep=False)  # twice is fine


@can_mount
def test_a_kept_image_comes_back_with_its_files_and_a_fresh_one_is_empty(tmp_path):
    path = str(tmp_path / "scratch" / "u2")
    assert scratch.mount_quota(path, 32 * MiB, 0, 0, keep=True)
    with open(os.path.join(path, "kept"), "w") as f:
        f.write("still here")
    scratch.release_quota(path, keep=True)
    assert not scratch.mounted(path) and not os.path.exists(os.path.join(path, "kept"))
    try:
        assert not scratch.mount_quota(path, 32 * MiB, 0, 0, keep=True)  # mounted again, not made
        assert open(os.path.join(path, "kept")).read() == "still here"
        scratch.release_quota(path, keep=True)
        assert scratch.mount_quota(path, 32 * MiB, 0, 0, keep=False)
        assert not os.path.exists(os.path.join(path, "kept"))
    finally:
        scratch.release_quota(path, keep=False)
    assert _loops_of(scratch.image_path(path)) == ""


@can_mount
def test_stop_unmounts_a_scratch_the_hub_never_recorded(tmp_path):
    """A spawn cut off before JupyterHub stored its state (a hub killed mid-start) leaves a mounted scratch no
    database row names: `esker stop --all` finds it in the kernel's table under the state dir."""
    from esker.app import shutdown

    state = tmp_path / "state"
    path = str(state / "scratch" / "esk-cut")
    scratch.mount_quota(path, 32 * MiB, 0, 0, keep=False)
    try:
        out = shutdown.stop(str(state), everything=True)
        assert not scratch.mounted(path), out
        assert any("esk-cut" in line for line in out.stopped), out.stopped
    finally:
        if scratch.mounted(path):
            scratch.unmount(path)


def test_usage_walks_a_folder_and_asks_a_filesystem_of_its_own(tmp_path, monkeypatch):
    sc = scratch

    d = tmp_path / "u"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_bytes(b"x" * 100_000)
    walked = sc.usage(str(d))
    assert walked >= 100_000  # a plain folder: walked, like du -s
    assert sc.usage(str(tmp_path / "missing")) == 0
    # mounted at d (another st_dev than its parent): the superblock's count, not a walk
    real_stat = sc.os.stat

    class Stat:
        def __init__(self, st, dev):
            self.st_dev, self.st_mode = dev, st.st_mode

    monkeypatch.setattr(sc.os, "stat", lambda p, *a, **k: Stat(real_stat(p), 2 if str(p) == str(d) else 1))
    monkeypatch.setattr(sc.os, "statvfs", lambda p: type("V", (), {"f_blocks": 1000, "f_bfree": 250,
                                                                   "f_frsize": 4096})())
    monkeypatch.setattr(sc.os, "scandir", lambda p: (_ for _ in ()).throw(AssertionError("walked")))
    assert sc.usage(str(d)) == 750 * 4096
