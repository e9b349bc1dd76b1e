"""Per-user scratch on fast local disk: created at spawn, measured while running, wiped at stop."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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
    """Bytes allocated on disk under path (like `du -s`): sparse files count for what they use."""
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
