"""System accounts for hub users in embedded mode.

Hub user names are free-form (dots, capitals, unicode, 'root'); system accounts are not. Every hub user
runs as ``<prefix><name>``, sanitised, with a short hash whenever sanitising changed the name, so two
hub users can never share an account and no hub user can become an existing system account.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import subprocess
import unicodedata
from dataclasses import dataclass

MAX_NAME = 32  # useradd's limit


def system_username(hub_name: str, prefix: str = "jupyter-") -> str:
    """'Alice.Smith' -> 'jupyter-alice-smith-3f2a1b'; 'bob' -> 'jupyter-bob'."""
    folded = unicodedata.normalize("NFKD", hub_name).encode("ascii", "ignore").decode().lower()
    clean = re.sub(r"[^a-z0-9_-]+", "-", folded).strip("-") or "user"
    name = prefix + clean
    if clean != hub_name or len(name) > MAX_NAME:
        digest = hashlib.sha256(hub_name.encode()).hexdigest()[:6]
        name = f"{name[: MAX_NAME - 7]}-{digest}"
    return name


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str = "/bin/bash"


def lookup(name: str) -> Account | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell or "/bin/bash")


def ensure_account(name: str, home_root: str, comment: str = "") -> Account:
    """Create the system account (and its private home, mode 0700) if it does not exist. Needs root."""
    acct = lookup(name)
    if acct is None:
        home = os.path.join(home_root, name)
        os.makedirs(home_root, mode=0o755, exist_ok=True)
        cmd = ["useradd", "--create-home", "--home-dir", home, "--shell", "/bin/bash", "--user-group",
               "-K", "UMASK=0077"]
        if comment:
            cmd += ["--comment", comment[:60]]
        result = subprocess.run(cmd + [name], capture_output=True, text=True)
        if result.returncode not in (0, 9):  # 9: created concurrently by another spawn
            raise RuntimeError(f"useradd {name} failed: {result.stderr.strip()}")
        acct = lookup(name)
        assert acct is not None
    # Enforce on every spawn: a home someone loosened is tightened again.
    os.makedirs(acct.home, mode=0o700, exist_ok=True)
    os.chown(acct.home, acct.uid, acct.gid)
    os.chmod(acct.home, 0o700)
    return acct


def ensure_service_account(name: str, home: str) -> Account:
    """A locked system account for a shared service (the Spark master and worker)."""
    acct = lookup(name)
    if acct is None:
        subprocess.run(
            ["useradd", "--system", "--home-dir", home, "--no-create-home", "--shell", "/usr/sbin/nologin",
             "--user-group", name],
            check=False, capture_output=True,
        )
        acct = lookup(name)
        if acct is None:
            raise RuntimeError(f"could not create the service account {name}")
    os.makedirs(home, mode=0o750, exist_ok=True)
    os.chown(home, acct.uid, acct.gid)
    return acct


def delete_account(name: str) -> None:
    """Remove an account and its home (tests and `esker` admin tools only)."""
    if lookup(name) is not None:
        subprocess.run(["userdel", "--remove", name], capture_output=True)
    try:
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], capture_output=True)
    except KeyError:
        pass


def demote(acct: Account):
    """A preexec_fn: become the account (groups, gid, uid), then move into its home."""

    def preexec():
        os.setgroups([acct.gid])
        os.setgid(acct.gid)
        os.setuid(acct.uid)
        os.umask(0o077)
        os.chdir(acct.home)

    return preexec
