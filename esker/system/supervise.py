"""``python -m esker.system.supervise --pid-file FILE [--grace S] -- COMMAND...``: how the embedded hub runs each
of its managed services (the Spark master and worker, Ceph, the idle culler, the courses service).

JupyterHub starts a managed service in a session of its own and stops it by signalling that one process
(SIGINT, 10 s, SIGTERM, 5 s, SIGKILL), one service after another: what the service started (Spark executors, a
pre-warming build's pip) is never signalled, and a service that is slow to exit holds up the hub's shutdown. The
supervisor leads the process group its command runs in and records itself in a pid file (so `esker stop` finds
what a killed hub left). On SIGINT, SIGTERM or SIGHUP, or when the hub that started it dies, it gives the command
SIGTERM and at most ``grace`` seconds, then SIGKILLs the whole group: a service stops within ``grace`` seconds,
with everything it started. When the command exits on its own, what it left in the group goes too, and the
supervisor exits with its status (so JupyterHub restarts a clean service).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

from esker.system.procs import PidFile, group_members, terminate

PR_SET_PDEATHSIG = 1
DEFAULT_GRACE = 8.0  # under JupyterHub's 10 s between SIGINT and SIGTERM


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel for ``sig`` when the process that started this one exits (Linux; best effort)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _leftovers() -> set[int]:
    return group_members(os.getpgrp()) - {os.getpid()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esker.system.supervise",
                                description="Run COMMAND in a process group this process leads; on SIGTERM, "
                                "SIGINT or SIGHUP stop it and everything in the group within --grace seconds.")
    p.add_argument("--pid-file", required=True, help="where to record this process (pid, start time, group)")
    p.add_argument("--name", default="", help="the service's name (in the pid file and messages)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                   help=f"seconds between SIGTERM and SIGKILL (default {DEFAULT_GRACE:g})")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command")
    parent = os.getppid()
    if os.getpgrp() != os.getpid():  # JupyterHub starts services as session leaders; by hand, become one
        try:
            os.setsid()
        except OSError:
            os.setpgid(0, 0)
    _die_with_parent()
    record = PidFile.write(args.pid_file, args.name)
    stop_at: list[float] = []
    child: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        if not stop_at:
            stop_at.append(time.monotonic())
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if os.getppid() != parent:  # the hub died before the death signal was armed
        on_signal(signal.SIGTERM, None)
    code = 0
    try:
        if not stop_at:
            child = subprocess.Popen(cmd)
            if stop_at:  # a signal came while starting it
                child.send_signal(signal.SIGTERM)
            killed = False
            while True:
                try:
                    code = child.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if stop_at and not killed and time.monotonic() - stop_at[0] > args.grace:
                    print(f"esker.system.supervise: {args.name or cmd[0]} did not stop within {args.grace:g} s: "
                          "SIGKILL", file=sys.stderr, flush=True)
                    for pid in _leftovers():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    killed = True
        # What the command left in the group (its children): the rest of the grace, at least a second.
        left = _leftovers()
        if left:
            remaining = args.grace - (time.monotonic() - stop_at[0]) if stop_at else args.grace
            terminate(left, grace=max(1.0, min(remaining, 5.0)), kill_wait=2.0)
    finally:
        record.remove()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
