"""Dataset folders of courses in embedded mode: one folder per dataset under the state dir, shared with
each participant (read) and instructor (read-write) by POSIX ACLs written straight into the kernel's xattr
format (linux/posix_acl_xattr.h), so no setfacl binary is needed.
"""

from __future__ import annotations

import os
import struct
from typing import Iterable, Mapping

# The kernel's xattr format for POSIX ACLs (linux/posix_acl_xattr.h); no setfacl binary needed.
_ACL_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF


def acl_encode(entries: Iterable[tuple[int, int, int | None]]) -> bytes:
    out = struct.pack("<I", _ACL_VERSION)
    for tag, perm, ident in sorted(entries, key=lambda e: (e[0], e[2] if e[2] is not None else -1)):
        out += struct.pack("<HHI", tag, perm, _UNDEFINED_ID if ident is None else ident)
    return out


def acl_decode(blob: bytes) -> list[tuple[int, int, int | None]]:
    (version,) = struct.unpack_from("<I", blob)
    if version != _ACL_VERSION:
        raise ValueError(f"unknown ACL version {version}")
    out = []
    for off in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, off)
        out.append((tag, perm, None if ident == _UNDEFINED_ID else ident))
    return out


def acl_with_users(mode: int, users: Mapping[int, int]) -> bytes:
    """An access ACL: the mode's owner/group/other bits plus ``users`` {uid: perm}, mask = union."""
    mask = (mode >> 3) & 7
    for p in users.values():
        mask |= p
    entries = [(USER_OBJ, (mode >> 6) & 7, None), (GROUP_OBJ, (mode >> 3) & 7, None), (OTHER, mode & 7, None),
               (MASK, mask, None)] + [(USER, p, uid) for uid, p in users.items()]
    return acl_encode(entries)


def _acl_users(path: str, attr: str) -> dict[int, int]:
    try:
        return {i: p for t, p, i in acl_decode(os.getxattr(path, attr, follow_symlinks=False)) if t == USER}
    except OSError:
        return {}


def grant_dataset(path: str, uid: int, write: bool) -> None:
    """Give ``uid`` read (participants) or read-write (instructors) on a dataset tree, and make it inherited
    (default ACL) by whatever instructors add later. Raises OSError (ENOTSUP) where ACLs are unsupported."""
    for root, dirs, files in os.walk(path):
        for name, is_dir in [(root, True)] + [(os.path.join(root, f), False) for f in files]:
            if os.path.islink(name):
                continue
            perm = (7 if write else 5) if is_dir else (6 if write else 4)
            st = os.lstat(name)
            users = _acl_users(name, "system.posix_acl_access")
            users[uid] = perm if write else users.get(uid, 0) | perm
            os.setxattr(name, "system.posix_acl_access", acl_with_users(st.st_mode & 0o777, users),
                        follow_symlinks=False)
            if is_dir:
                dflt = _acl_users(name, "system.posix_acl_default")
                dflt[uid] = 7 if write else dflt.get(uid, 0) | 5
                os.setxattr(name, "system.posix_acl_default", acl_with_users(0o750, dflt), follow_symlinks=False)


def dataset_dir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "datasets", name)


def ensure_dataset_dir(state_dir: str, name: str) -> str:
    root = os.path.join(state_dir, "datasets")
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o711)  # traverse, not list
    path = dataset_dir(state_dir, name)
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o750)
    return path
