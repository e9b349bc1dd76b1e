"""Per-user scratch on fast local disk: created at spawn, measured while running, wiped at stop.

With a quota (a root hub with loop devices), a server's scratch is a filesystem of its own: an ext4 image of the
profile's ``scratch_size`` under ``<root>/.images/`` (root's, 0700), loop-mounted at the user's folder. Writing
past it is ENOSPC in that filesystem only. The image is *reserved* (fallocate) rather than sparse, so what a
server was promised is taken from the disk when it starts: a full scratch can never fill the shared disk, and a
promise the disk cannot keep is refused at spawn (:class:`NoRoom`), not discovered later by someone else.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

IMAGES = ".images"  # under the scratch root; a leading dot: no account name can collide with it
# Left free on the disk after a reservation, for the hub's state and logs that share it.
HEADROOM = 1024**3
# Fast, and nothing written in the background after mount (lazy init would zero inode tables behind the
# user's I/O; the reserved image reads as zeros anyway). nodiscard: a discard would punch holes in the image
# file and hand the reservation back to the disk. -m 0: the user gets all of it (root reserve is for root).
# -T default: 4 KiB blocks and an inode per 16 KiB at every size (mke2fs's "small" type below 512 MB would
# spend 6% on inodes); ext4's metadata (inode tables, journal) takes about 2-3% of the image.
# (One -E only: mke2fs keeps the last one it is given.)
MKFS_EXTENDED = "lazy_itable_init=1,lazy_journal_init=1,nodiscard"
MKFS = ["mkfs.ext4", "-q", "-F", "-m", "0", "-T", "default"]
# nodev, nosuid: the user owns the filesystem's root and could plant a device node or a setuid file there.
# Not noexec: users run their own code from scratch (builds, compiled extensions, Spark's unpacked files),
# and a user can run anything they can read anyway (python script.py, ld.so), so it would stop nothing.
MOUNT_OPTIONS = "nodev,nosuid,noinit_itable"


class NoRoom(Exception):
    """The disk under the scratch root cannot hold this server's scratch_size."""


class QuotaError(Exception):
    """Setting up a scratch filesystem failed (the message says which step and why)."""


def scratch_path(root: str, account: str) -> str:
    return os.path.join(root, account)


def prepare(path: str, uid: int | None = None, gid: int | None = None) -> None:
    """Create the user's scratch (mode 0700, owned by the user) with tmp/ and spark/ inside."""
    root = os.path.dirname(path)
    os.makedirs(root, mode=0o755, exist_ok=True)
    os.chmod(root, 0o711)  # users may pass through the root to their own folder, not list the others
    for sub in ("", "tmp", "spark"):
        p = os.path.join(path, sub) if sub else path
        os.makedirs(p, mode=0o700, exist_ok=True)
        os.chmod(p, 0o700)
        if uid is not None:
            os.chown(p, uid, gid if gid is not None else -1)


def usage(path: str) -> int:
    """Bytes allocated on disk under path. A server's own scratch filesystem (a root hub's image, mounted at
    path) answers from its superblock (statvfs: O(1), however many files); a plain folder is walked like
    `du -s` (sparse files count for what they use). The spawner's poll measures every running server's
    scratch every scratch_check_interval: at 1,000 servers a walk each would hold the hub's interpreter for as
    long as their files take to list (docs/scale.md)."""
    try:
        own_fs = os.stat(path).st_dev != os.stat(os.path.dirname(os.path.abspath(path))).st_dev
    except OSError:
        return 0
    if own_fs:
        v = os.statvfs(path)
        return (v.f_blocks - v.f_bfree) * v.f_frsize
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    total += st.st_blocks * 512
        except OSError:
            continue
    return total


def free_bytes(root: str) -> int:
    p = Path(root)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def wipe(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- quota: a loop-mounted image per server ----------------------------------------------------------------
def image_path(path: str) -> str:
    """The image behind a user's scratch folder ``<root>/<account>``: ``<root>/.images/<account>.img``."""
    root, account = os.path.split(os.path.normpath(path))
    return os.path.join(root, IMAGES, f"{account}.img")


def quota_unsupported(root_user: bool) -> str | None:
    """Why this host cannot enforce scratch quotas, or None when it can."""
    if not root_user:
        return "the hub is not root (developer mode), so it cannot mount a filesystem per server"
    missing = [c for c in ("losetup", "mkfs.ext4", "mount", "umount") if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: mount, e2fsprogs)"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing; modprobe loop, or a container without them)"
    return None


def mounted(path: str) -> bool:
    """Whether a filesystem is mounted exactly at path (from the kernel's table, not a stat comparison)."""
    target = os.path.realpath(path)
    return any(m == target for m in mounts())


def mounts() -> list[str]:
    """Every mount point on this host (/proc/self/mounts, octal escapes decoded)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) > 1:
            out.append(parts[1].encode().decode("unicode_escape"))
    return out


def _run(step: str, cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise QuotaError(f"{step} failed: {' '.join(cmd)}: {(r.stderr or r.stdout).strip() or r.returncode}")
    return r.stdout.strip()


def reserve(image: str, size: int, headroom: int = HEADROOM) -> None:
    """Create ``image`` with ``size`` bytes allocated on disk, or raise NoRoom leaving nothing behind."""
    folder = os.path.dirname(image)
    free = free_bytes(folder)
    if free - size < headroom:
        raise NoRoom(f"{size / 1024**3:.1f} GiB of scratch cannot be reserved: {free / 1024**3:.1f} GiB free on "
                     f"the disk under {folder}, and {headroom / 1024**3:.1f} GiB stay free for the hub")
    os.close(os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    try:
        _fill(image, size)
    except OSError as e:
        os.unlink(image)
        if e.errno == errno.ENOSPC:
            raise NoRoom(f"{size / 1024**3:.1f} GiB of scratch cannot be reserved: the disk under {folder} is full")
        raise


def _fill(image: str, size: int) -> None:
    """Allocate every block of the image's first ``size`` bytes (data already there is kept)."""
    fd = os.open(image, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def mount_quota(path: str, size: int, uid: int, gid: int, keep: bool) -> bool:
    """Mount a ``size``-byte filesystem of the user's at ``path``. With ``keep`` an existing image (kept
    from the last server) is mounted again; otherwise it is replaced by a fresh one. Returns whether the image
    was made now. Raises NoRoom or QuotaError, having mounted nothing."""
    image = image_path(path)
    folder = os.path.dirname(image)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)  # root's alone: users must not read or hold another's image
    os.makedirs(path, mode=0o700, exist_ok=True)
    if mounted(path):  # left by a server whose release never ran (a hub killed mid-stop): start afresh
        unmount(path)
    fresh = not (keep and os.path.exists(image))
    if fresh:
        if os.path.lexists(image):
            os.unlink(image)
        reserve(image, size)
        try:
            # root_owner: the filesystem's root is the user's from the start (prepare() sets the mode).
            _run("mkfs", [*MKFS, "-E", f"{MKFS_EXTENDED},root_owner={uid}:{gid}", image])
            _fill(image, size)  # whatever mke2fs zeroed by punching holes is allocated again
        except (QuotaError, OSError):
            os.unlink(image)
            raise
    # Direct I/O: the loop device writes straight to the image instead of through a second page cache of it
    # (double caching costs memory and makes fsync flush twice).
    dev = _run("losetup", ["losetup", "--find", "--show", "--direct-io=on", image])
    try:
        _run("mount", ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, dev, path])
    except QuotaError:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        if fresh:
            os.unlink(image)
        raise
    # Detaching a mounted loop device only marks it autoclear: the kernel frees it at unmount, so no loop
    # device outlives its mount, whoever unmounts it.
    subprocess.run(["losetup", "-d", dev], capture_output=True)
    return fresh


def unmount(path: str) -> None:
    """Unmount the filesystem at ``path`` (its loop device goes with it). Raises QuotaError if it stays busy."""
    r = subprocess.run(["umount", path], capture_output=True, text=True)
    if r.returncode != 0 and mounted(path):
        raise QuotaError(f"umount {path} failed: {r.stderr.strip()}")


def release_quota(path: str, keep: bool) -> None:
    """Unmount ``path`` if mounted; delete its image unless ``keep``. Safe to call twice."""
    if mounted(path):
        unmount(path)
    if not keep:
        try:
            os.unlink(image_path(path))
        except FileNotFoundError:
            pass


def write_private(base: str, path: str, text: str, uid: int | None = None, gid: int | None = None) -> None:
    """Write ``text`` to ``path`` (under ``base``, the user's scratch) as a file only its owner can read: mode
    0600, folders on the way 0700, all owned by ``uid``/``gid``. Nothing on the way is followed if it is a
    link (the user owns the folders and may have left one), and the file is replaced, never written through."""
    rel = os.path.relpath(path, base)
    parts = rel.split(os.sep)
    if rel.startswith("..") or os.path.isabs(rel) or not parts[-1]:
        raise ValueError(f"{path} is not under {base}")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open(base, flags)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
            os.fchmod(fd, 0o700)
            if uid is not None:
                os.fchown(fd, uid, gid if gid is not None else -1)
        name, tmp = parts[-1], f".{parts[-1]}.esker-tmp"
        try:
            os.unlink(tmp, dir_fd=fd)
        except FileNotFoundError:
            pass
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        try:
            os.fchmod(out, 0o600)
            if uid is not None:
                os.fchown(out, uid, gid if gid is not None else -1)
            os.write(out, text.encode())
        finally:
            os.close(out)
        os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
