"""Making the single-node Ceph, once: the directory layout and ``cluster.json``, the monitor (keyrings,
monmap, mkfs), the OSD (registration, key, mkfs), radosgw's pools and key, and the RGW admin user the hub
manages users with. Every step is idempotent and records in ``cluster.json`` what it made, so a start that
died half-way is finished by the next one. esker.objectstore.ceph calls these, holding its lock.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from esker.objectstore.cephconf import RGW_NAME, RGW_POOLS, ceph_conf
from esker.objectstore.cephprocs import CephError, run_mon_commands, run_tool

if TYPE_CHECKING:
    from esker.objectstore.ceph import CephCluster

log = logging.getLogger("esker.ceph")

ADMIN_UID = "esker--admin"  # no hub username maps to it (see esker.objectstore.names.rgw_name)


# ----------------------------------------------------------------- cluster.json and ceph.conf
def _state_file(c: "CephCluster") -> Path:
    return c.dir / "cluster.json"


def read_state(c: "CephCluster") -> dict:
    try:
        return json.loads(_state_file(c).read_text())
    except FileNotFoundError:
        return {}


def write_state(c: "CephCluster", state: dict) -> None:
    tmp = _state_file(c).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(_state_file(c))


def write_conf(c: "CephCluster", fsid: str) -> None:
    tmp = c.conf.with_suffix(".tmp")
    tmp.write_text(ceph_conf(c, fsid))
    tmp.replace(c.conf)


def _run(c: "CephCluster", cmd: list[str], timeout: float = 60, check: bool = True):
    return run_tool(cmd, c.env(), timeout=timeout, check=check)


# ----------------------------------------------------------------- the steps
def ensure_layout(c: "CephCluster") -> dict:
    """The directory tree (0700), cluster.json checked against the arguments, ceph.conf written."""
    for sub in ("keys", "mon", "osd", "rgw", "run", "log", "crash", "tmp"):
        (c.dir / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(c.dir, 0o700)
    os.chmod(c.dir / "keys", 0o700)
    state = read_state(c)
    if not state:
        state = {"fsid": str(uuid.uuid4()), "objectstore": c.objectstore}
        write_state(c, state)
    if state["objectstore"] != c.objectstore:
        raise CephError(
            f"{c.dir} holds a {state['objectstore']} cluster; it cannot be started as {c.objectstore}"
        )
    if state.get("mon_port", c.mon_port) != c.mon_port:
        # The monitor's address is in its monmap: changing it means a monmap edit, not a config change.
        raise CephError(
            f"{c.dir}'s monitor was created on port {state['mon_port']}, not {c.mon_port}: "
            "use the original mon_port (or a new directory)"
        )
    settings = {"port": c.port, "ms_port_min": c.ms_port_min, "ms_port_max": c.ms_port_max, "size": c.size}
    if state.get("settings") != settings:
        state["settings"] = settings
        write_state(c, state)
    write_conf(c, state["fsid"])
    return state


def mkfs_mon(c: "CephCluster", state: dict) -> None:
    """The monitor's keyrings, monmap and store (once: ``mon/ceph-a/done`` marks it made)."""
    if (c.dir / "mon" / "ceph-a" / "done").exists() and state.get("mon_port"):
        return
    shutil.rmtree(c.dir / "mon" / "ceph-a", ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=c.dir / "tmp"))
    try:
        _run(c, ["ceph-authtool", "--create-keyring", str(c.admin_keyring), "--gen-key", "-n", "client.admin",
                 "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
                 "--cap", "mds", "allow *"])
        os.chmod(c.admin_keyring, 0o600)
        monkey = tmp / "mon.keyring"
        _run(c, ["ceph-authtool", "--create-keyring", str(monkey), "--gen-key", "-n", "mon.",
                 "--cap", "mon", "allow *"])
        _run(c, ["ceph-authtool", str(monkey), "--import-keyring", str(c.admin_keyring)])
        monmap = tmp / "monmap"
        _run(c, ["monmaptool", "--create", "--fsid", state["fsid"],
                 "--addv", "a", f"[v2:{c.host}:{c.mon_port}]", str(monmap)])
        _run(c, ["ceph-mon", "-c", str(c.conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
                 "--keyring", str(monkey)])
        (c.dir / "mon" / "ceph-a" / "done").touch()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    state["mon_port"] = c.mon_port
    state.pop("osd", None)  # a new monitor knows no OSD
    write_state(c, state)


def bootstrap_commands(c: "CephCluster", state: dict) -> None:
    """Register the OSD (first time), create radosgw's pools and key: one monitor session."""
    commands: list[dict] = []
    new_osd = "osd" not in state
    if new_osd:
        # Remembered before `osd new` (idempotent for one uuid): a failed first start is retried
        # with the same OSD instead of registering another.
        pending = state.get("osd_pending") or {
            "uuid": str(uuid.uuid4()),
            "secret": _run(c, ["ceph-authtool", "--gen-print-key"]).stdout.strip(),
        }
        state["osd_pending"] = pending
        write_state(c, state)
        osd_uuid, secret = pending["uuid"], pending["secret"]
        commands.append({"cmd": {"prefix": "osd new", "uuid": osd_uuid, "format": "json"},
                         "inbuf": json.dumps({"cephx_secret": secret})})
    for pool in RGW_POOLS:
        commands.append({"cmd": {"prefix": "osd pool create", "pool": pool, "pg_num": 8, "pgp_num": 8}})
        commands.append({"cmd": {"prefix": "osd pool application enable", "pool": pool, "app": "rgw"}})
    commands.append({"cmd": {"prefix": "auth get-or-create", "entity": RGW_NAME,
                             "caps": ["mon", "allow rw", "osd", "allow rwx"]}})
    out = run_mon_commands(c.conf, c.env(), commands, timeout=min(30, c.start_timeout), mon_port=c.mon_port)
    key = out[-1]["out"]
    rgw_keyring = c.dir / "keys" / f"{RGW_NAME}.keyring"
    rgw_keyring.write_text(key if key.endswith("\n") else key + "\n")
    os.chmod(rgw_keyring, 0o600)
    if new_osd:
        res = out[0]["out"].strip()
        osd_id = json.loads(res)["osdid"] if res.startswith("{") else int(res)
        data = c.dir / "osd" / f"ceph-{osd_id}"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        # The keyring written here, not by `ceph-authtool --add-key SECRET`: a key is never on a command line.
        fd = os.open(data / "keyring", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[osd.{osd_id}]\n\tkey = {secret}\n")
        if c.objectstore == "bluestore":
            free = shutil.disk_usage(c.dir).free
            if free < c.size:
                log.warning("bluestore file is %d GiB (sparse) but only %d GiB are free under %s",
                            c.size >> 30, free >> 30, c.dir)
        _run(c, ["ceph-osd", "-c", str(c.conf), "--mkfs", "-i", str(osd_id), "--osd-uuid", osd_uuid], timeout=120)
        written = (data / "type").read_text().strip() if (data / "type").exists() else "?"
        if written != c.objectstore:
            raise CephError(f"the OSD was created as {written!r}, not {c.objectstore!r}")
        state["osd"] = {"id": osd_id, "uuid": osd_uuid}
        state.pop("osd_pending", None)
        write_state(c, state)


def admin_user(c: "CephCluster", path: Path) -> dict:
    """Create the RGW admin user (caps users=*;buckets=*) unless it exists; write its keys to ``path`` (0600)."""
    base = ["radosgw-admin", "-c", str(c.conf), "-n", "client.admin", "--uid", ADMIN_UID]
    r = _run(c, base + ["user", "info"], check=False, timeout=60)
    if r.returncode != 0:
        r = _run(c, base + ["user", "create", "--display-name", "Esker hub (user management)",
                            "--caps", "users=*;buckets=*"], timeout=60)
    info = json.loads(r.stdout)
    key = next(k for k in info["keys"] if k["user"] == ADMIN_UID)
    creds = {"uid": ADMIN_UID, "access_key": key["access_key"], "secret_key": key["secret_key"],
             "endpoint": c.endpoint}
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    path.with_suffix(".tmp").replace(path)
    return creds
