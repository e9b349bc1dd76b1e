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
