"""A server's buckets as files (embedded mode): the user's bucket and readable datasets mounted with s3fs-fuse.

Layout: ``<state>/mounts/<account>/<bucket>[/<prefix>]`` mirrors ``s3://<bucket>/<prefix>``, so one name
works everywhere: Spark's ``s3a://B/K`` resolves onto ``<root>/B/K`` through Hadoop's
ViewFileSystemOverloadScheme (esker.core.contributors.viewfs_conf, from the ``mounts`` grant), and ``~/s3/B/K`` is the same file for pandas, ``open()``
and ``ls`` (``~/s3`` is a link to the account's folder).

Why not in the home itself: root mounts there, and a path the user controls (a folder they swap for a link
to ``/etc``) would let them choose where root mounts. Every folder on the way is root's; the account's folder
is ``0750 root:<user's group>`` so only that user (and their executors) traverse it, and each mount's root is
``0700`` of the user with ``default_permissions`` (the kernel checks modes; ``allow_other`` only lets the
user's processes in, root's s3fs serves them).

Secrets: s3fs gets its keys in its environment (``/proc/<pid>/environ`` is root's alone), never in its argv or
a file. The user's bucket is mounted with the user's keys. A dataset is mounted with its owner's keys, confined
to its prefix, read-only (EROFS at open, nothing uploaded) unless the user may write it: s3fs 1.90 lists the
whole bucket when it mounts, which a reader of one prefix may not do. The hub mounts for each user exactly the
datasets the bucket policy gives them (the same ``dataset_access``); their own keys still meet the policy for
every S3 call they make.

A dataset read-only for the user is mounted once per hub and owner key, in ``<state>/mounts/.shared/<id>``
(root's, ``0700``: nobody traverses to it), and bind-mounted read-only into each reader's own folder. All of
a workshop's participants then share one daemon and one page cache: the first to read a file brings it from
the gateway, the others read memory. The files are root's and readable, and only the readers' own folders
lead to them. The mount ends with its last reader. A writer (an instructor) gets a mount of their own,
read-write.

The builders are pure; the functions after "the code that runs things" are the only ones that run things.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from esker.system.procs import alive as _alive
from esker.system.scratch import mounted as is_mounted  # the kernel's table, escapes decoded

S3FS = "s3fs"
# Marks this hub's s3fs daemons in their environment (not secret), so `esker stop --all` finds them.
MARKER = "ESKER_MOUNT_OF"
POINT = "ESKER_MOUNT_POINT"  # and where each mounts (s3fs rewrites its own argv)


@dataclass(frozen=True)
class Mount:
    name: str  # "bucket" (the user's own) or a dataset's name
    bucket: str
    prefix: str  # "" (the whole bucket) or "a/b/"
    path: str  # the mount point
    read_only: bool

    @property
    def source(self) -> str:
        return f"{self.bucket}:/{self.prefix.rstrip('/')}" if self.prefix else self.bucket


def account_root(state_dir: str, account: str) -> str:
    return os.path.join(state_dir, "mounts", account)


def plan_mounts(grant: Mapping[str, str], root: str) -> list[Mount]:
    """What to mount for a storage grant (``bucket``, ``datasets`` {name: "s3://b/p/"}, ``writable`` [names]).
    A dataset inside a bucket already mounted whole is not mounted again: the whole-bucket mount shows it."""
    writable = set(json.loads(grant.get("writable") or "[]"))
    mounts = [Mount("bucket", grant["bucket"], "", os.path.join(root, grant["bucket"]), False)]
    parsed = _datasets(grant)
    whole = {grant["bucket"]} | {b for _, b, p in parsed if not p}
    for name, bucket, prefix in parsed:
        if not (prefix and bucket in whole):
            mounts.append(Mount(name, bucket, prefix, _folder(root, bucket, prefix), name not in writable))
    return mounts


def _datasets(grant: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(name, bucket, prefix "" or "a/b/") of the grant's datasets, by name."""
    out = []
    for name, url in sorted(json.loads(grant.get("datasets") or "{}").items()):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        out.append((name, bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""))
    return out


def _folder(root: str, bucket: str, prefix: str) -> str:
    return os.path.join(root, bucket, *[p for p in prefix.split("/") if p])


def dataset_dirs(mounts: Iterable[Mount], grant: Mapping[str, str], root: str) -> dict[str, str]:
    """Every readable dataset's local folder (including those shown by a whole-bucket mount)."""
    mounted = {m.bucket for m in mounts}
    return {name: _folder(root, bucket, prefix) for name, bucket, prefix in _datasets(grant) if bucket in mounted}


def s3fs_command(m: Mount, endpoint: str, uid: int, gid: int, umask: str = "077") -> list[str]:
    """s3fs in the foreground (its pid is the daemon's), no secret in it."""
    opts = [
        f"url={endpoint}", "use_path_request_style", "allow_other", "default_permissions",
        f"uid={uid}", f"gid={gid}", f"umask={umask}", f"mp_umask={umask}",
        # A dead gateway surfaces as EIO within seconds, not a hang; the mount stays and works again later.
        "retries=2", "connect_timeout=5", "readwrite_timeout=30",
        "stat_cache_expire=10", "nodev", "nosuid",
        # The kernel's page cache keeps what was read across opens and drops it when the object's size or mtime
        # changes (as s3fs's stat cache sees it): a second pass reads memory, not the gateway. (s3fs's own disk
        # cache, use_cache, was measured too: it slowed the first pass and added nothing after it.)
        "auto_cache",
        # A read that misses the page cache makes s3fs fetch multipart_size x parallel_count ahead (default
        # 10 MB x 5). When the kernel drops scattered pages of a file under memory pressure, each hole cost 50 MB
        # from the gateway: Spark over 1 GB with 1.6% evicted ran at 0.70x of local disk. 20 MB ahead: 0.82x,
        # and the cold sequential read as fast as before (docs/storage.md, "Data in place: figures").
        "multipart_size=10", "parallel_count=2",
    ]
    if m.read_only:
        opts.append("ro")
    return [S3FS, m.source, m.path, "-f", "-o", ",".join(opts)]


SHARED = ".shared"  # <state>/mounts/.shared/<id>: the read-only datasets' one mount each


def shared_point(state_dir: str, m: Mount, access_key: str) -> str:
    """Where a read-only dataset is mounted once for all its readers: one per dataset and owner key, so a
    rotated key gets a new mount and the old one ends with its last reader."""
    ident = hashlib.sha256("\0".join((m.bucket, m.prefix, access_key)).encode()).hexdigest()[:16]
    return os.path.join(state_dir, "mounts", SHARED, ident)


def shared_command(m: Mount, point: str, endpoint: str) -> tuple[Mount, list[str]]:
    """The one s3fs of a read-only dataset: root's files, readable by whoever reaches them (only its readers
    do, through a bind mount in their own folder), read-only."""
    src = replace(m, path=point, read_only=True)
    return src, s3fs_command(src, endpoint, 0, 0, umask="0222")


def binds_in(mountinfo: str, path: str) -> list[str]:
    """The other mount points of the filesystem mounted at ``path`` (its bind mounts), from the text of
    /proc/self/mountinfo: the same device, another place."""
    rows = [ln.split(" ") for ln in mountinfo.splitlines() if ln.count(" ") >= 5]
    points = [(r[2], r[4].encode().decode("unicode_escape")) for r in rows]
    dev = next((d for d, point in reversed(points) if point == path), None)  # the latest mount at path
    return [point for d, point in points if d == dev and point != path] if dev else []


def s3fs_env(m: Mount, access_key: str, secret_key: str, marker: str) -> dict[str, str]:
    """The daemon's whole environment: nothing of the hub's (its AWS_CA_BUNDLE, its tokens)."""
    return {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
            MARKER: marker, POINT: m.path, "HOME": "/nonexistent"}


def unsupported() -> str | None:
    """Why buckets cannot be mounted on this machine (None: they can)."""
    if os.geteuid() != 0:
        return "the hub is not root (FUSE mounts for other accounts need root)"
    if not shutil.which(S3FS):
        return "s3fs is not installed (scripts/install-system.sh base)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    return None


# ---- the code that runs things ------------------------------------------------------------------

def prepare_root(root: str, gid: int) -> None:
    """``<state>/mounts`` (0711 root) and the account's folder (0750 root:gid), both root's."""
    top = os.path.dirname(root)
    os.makedirs(top, mode=0o711, exist_ok=True)
    os.chmod(top, 0o711)
    os.makedirs(root, mode=0o750, exist_ok=True)
    os.chown(root, 0, gid)
    os.chmod(root, 0o750)


def link_home(home: str, root: str, uid: int, gid: int, name: str = "s3") -> str:
    """``~/s3`` -> the account's folder, made without following anything the user may have planted (the home
    is opened with O_NOFOLLOW, the link made relative to it). Returns the link's path, or "" when the user
    has something else of that name (kept: it is theirs)."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            if os.readlink(name, dir_fd=fd) == root:
                return os.path.join(home, name)
            return ""
        except FileNotFoundError:
            pass
        except OSError:  # exists and is not a link
            return ""
        os.symlink(root, name, dir_fd=fd)
        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        return os.path.join(home, name)
    finally:
        os.close(fd)


class MountError(Exception):
    """s3fs did not mount (the message has its last log lines)."""


def mount(m: Mount, cmd: list[str], env: dict[str, str], log_path: str, timeout: float = 15.0) -> int:
    """Start s3fs and wait until ``m.path`` is mounted; returns its pid. Raises MountError (s3fs stopped)."""
    if is_mounted(m.path):  # left by a hub that lost its pid: replace it, the keys may have changed
        _umount(m.path)  # this point only (a reader's bind of a shared dataset shares its device with others)
    os.makedirs(m.path, mode=0o755, exist_ok=True)
    os.chmod(m.path, 0o700)  # seen only while unmounted: root's, empty
    with open(log_path, "ab", buffering=0) as log:
        os.fchmod(log.fileno(), 0o600)
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while not is_mounted(m.path):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc.pid)
            proc.wait()
            raise MountError(f"s3fs could not mount {m.source} at {m.path}: {_tail(log_path)}")
        time.sleep(0.02)
    return proc.pid


def unmount(path: str, pid: int | None, timeout: float = 10.0) -> None:
    """Unmount (lazily if something still holds a file there) and end the daemon. Bind mounts of it that are
    left (a shared dataset's readers at ``esker stop --all``) go first: they would outlive it, disconnected."""
    for b in binds_in(_mountinfo(), os.path.realpath(path)):
        _umount(b)
    if is_mounted(path):
        r = subprocess.run(["fusermount3", "-u", path], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)
    if pid:
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            _kill(pid)


# One hub's spawns attach and release shared datasets from worker threads: one at a time, so a reader
# never binds a mount that the last reader's release is ending.
_shared = threading.Lock()


def attach_shared(m: Mount, src: Mount, cmd: list[str], env: dict[str, str], log_path: str) -> int:
    """Bind the dataset's shared mount ``src`` at ``m.path``, read-only, mounting it first unless this hub's
    s3fs already serves it. Returns that daemon's pid. Raises MountError."""
    point = os.path.realpath(src.path)
    with _shared:
        pid = next((p for p, at in running(env[MARKER]) if os.path.realpath(at) == point and is_mounted(point)),
                   None)
        if pid is None:
            top = os.path.dirname(src.path)
            os.makedirs(top, mode=0o700, exist_ok=True)
            os.chmod(top, 0o700)  # root's: the readers reach the files through their own folders only
            pid = mount(src, cmd, env, log_path)
        try:
            if is_mounted(m.path):  # left by a hub that lost its state
                _umount(m.path)
            os.makedirs(m.path, mode=0o755, exist_ok=True)
            os.chmod(m.path, 0o700)
            for step in (["mount", "--bind", point, m.path], ["mount", "-o", "remount,bind,ro,nosuid,nodev", m.path]):
                r = subprocess.run(step, capture_output=True, text=True)
                if r.returncode != 0:
                    raise MountError(f"{' '.join(step[:-2])} for {m.source} at {m.path}: "
                                     f"{(r.stderr or r.stdout).strip()}")
        except (MountError, OSError):
            if is_mounted(m.path):
                _umount(m.path)
            if not binds_in(_mountinfo(), point):
                unmount(point, pid)
            raise
        return pid


def detach_shared(path: str, src: str, pid: int | None) -> None:
    """End one reader's bind mount; the dataset's shared mount ends with its last reader."""
    with _shared:
        if is_mounted(path):
            _umount(path)
        if is_mounted(src) and not binds_in(_mountinfo(), os.path.realpath(src)):
            unmount(src, pid)


def detach(marker: str, path: str) -> list[str]:
    """Unmount what this hub's s3fs daemons mount at ``path`` (after a key rotation: s3fs answers a refused key
    with empty files, so a mount with old keys is ended, and the bare folder then refuses access)."""
    done = []
    for pid, point in running(marker):
        if os.path.realpath(point) == os.path.realpath(path):
            unmount(point, pid)
            done.append(point)
    return done


def running(marker: str | None = None) -> list[tuple[int, str]]:
    """(pid, mount point) of the s3fs daemons this code started (of one hub when ``marker`` is given)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        mark, point = env.get(MARKER.encode()), env.get(POINT.encode())
        if mark is None or point is None or (marker is not None and mark.decode() != marker):
            continue
        found.append((int(entry), point.decode()))
    return found


def _umount(path: str) -> None:
    """One mount point gone: now if nothing holds a file there, else lazily (gone once the last file closes)."""
    if subprocess.run(["umount", path], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", path], capture_output=True)


def _mountinfo() -> str:
    try:
        with open("/proc/self/mountinfo") as f:
            return f.read()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
        return " / ".join(lines[-n:]) or "no output"
    except OSError:
        return "no log"
