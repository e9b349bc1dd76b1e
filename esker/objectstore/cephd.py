"""The embedded Ceph as a JupyterHub managed service, and its operator commands:
``python -m esker.objectstore.cephd run|start|stop|status|credentials --dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from esker.objectstore.ceph import OBJECTSTORES, CephCluster, CephError, write_service_state

log = logging.getLogger("esker.ceph")


# Seconds each daemon (radosgw, then the OSD, then the monitor) has to exit after SIGTERM when the service stops,
# before SIGKILL: the whole stop fits in the grace the hub's supervisor gives the service (esker.app.configurer).
STOP_TIMEOUT = 4.0


class _Interrupted(Exception):
    pass


def _interrupt(*_):
    raise _Interrupted()


def _ignore_signals() -> None:  # already stopping: a second signal changes nothing
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)


def _record(cluster: CephCluster, state: str, detail: str = "", since: float | None = None) -> float | None:
    """The managed service's state for the hub's spawns (best effort: a full disk must not stop Ceph)."""
    try:
        return write_service_state(cluster.dir, state, detail, since)["since"]
    except OSError as e:
        log.warning("could not record the service state %s: %s", state, e)
        return since


def _parser() -> argparse.ArgumentParser:
    state = os.environ.get("ESKER_STATE_DIR")
    p = argparse.ArgumentParser(
        prog="python -m esker.objectstore.cephd",
        description="Single-node Ceph (mon, OSD, radosgw on loopback) under one directory. "
        "`run` is the JupyterHub managed-service command: it starts the daemons, stays in the foreground "
        "until SIGTERM or SIGINT, then stops them.",
    )
    p.add_argument("action", choices=["run", "start", "stop", "status", "credentials"],
                   help="run: foreground until SIGTERM; start/stop: daemons in the background; status; "
                   "credentials: print the admin user's keys as JSON")
    p.add_argument("--dir", default=os.path.join(state, "ceph") if state else None,
                   help="cluster directory (default: $ESKER_STATE_DIR/ceph)")
    p.add_argument("--objectstore", choices=OBJECTSTORES,
                   help="bluestore (persistent, default) or memstore (RAM); fixed when the cluster is created")
    p.add_argument("--port", type=int, help="radosgw HTTP port on 127.0.0.1 (default 7480)")
    p.add_argument("--mon-port", type=int, help="monitor port (msgr2, default 3300; fixed at creation)")
    p.add_argument("--ms-port-min", type=int, help="lowest port the OSD binds (default 6800)")
    p.add_argument("--ms-port-max", type=int, help="highest port the OSD binds (default 6830)")
    p.add_argument("--size", help="bluestore file size (sparse) or memstore capacity (default 10G)")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the first PUT")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s esker.ceph %(levelname)s %(message)s")
    if not args.dir:
        print("--dir (or $ESKER_STATE_DIR) is required", file=sys.stderr)
        return 2
    # Unset options: what the existing cluster was last started with, else the defaults.
    try:
        saved = json.loads((Path(args.dir) / "cluster.json").read_text())
    except (OSError, ValueError):
        saved = {}
    kw = {"objectstore": saved.get("objectstore", "bluestore"), "mon_port": saved.get("mon_port", 3300),
          "port": 7480, "ms_port_min": 6800, "ms_port_max": 6830, "size": "10G", **saved.get("settings", {})}
    for key in kw:
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    try:
        cluster = CephCluster(args.dir, start_timeout=args.timeout, **kw)
    except CephError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    since = None
    try:
        if args.action == "stop":
            cluster.stop()
            return 0
        if args.action == "status":
            state = cluster.running()
            print(json.dumps({"dir": str(cluster.dir), "endpoint": cluster.endpoint, "running": state,
                              "health": cluster.health() if state["mon"] else None}))
            return 0 if all(state.values()) else 1
        if args.action == "credentials":
            creds = cluster.admin_credentials()
            print(json.dumps(creds))
            return 0
        t0 = time.monotonic()
        if args.action == "run":  # a stop asked for while starting: stop what has started, at once
            # The hub's spawns read this (esker.objectstore.ceph.embedded_starting): they wait while it says so.
            since = _record(cluster, "starting")
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, _interrupt)
        try:
            cluster.start()
        except _Interrupted:
            _ignore_signals()
            log.info("stopping Ceph (asked to while it started)")
            _record(cluster, "stopping", since=since)
            cluster.stop(STOP_TIMEOUT)
            _record(cluster, "stopped", since=since)
            return 0
        log.info("Ceph RGW ready on %s in %.1f s (%s, %s)", cluster.endpoint, time.monotonic() - t0,
                 cluster.objectstore, cluster.dir)
        if args.action == "start":
            return 0
        _record(cluster, "ready", since=since)
    except CephError as e:
        log.error("%s", e)
        if args.action == "run":
            _ignore_signals()
            _record(cluster, "failed", str(e), since=since)
            cluster.stop(STOP_TIMEOUT)
        return 1

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # from here on: finish the loop, then stop
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    while not stop.wait(2.0):
        dead = [n for n, up in cluster.running().items() if not up]
        if dead:
            why = "; ".join(cluster.daemons.died(n) for n in dead)
            log.error("%s", why)
            _record(cluster, "failed", why, since=since)
            code = 1
            break
    log.info("stopping Ceph")
    if not code:
        _record(cluster, "stopping", since=since)
    cluster.stop(STOP_TIMEOUT)
    if not code:
        _record(cluster, "stopped", since=since)
    return code


if __name__ == "__main__":
    sys.exit(main())
