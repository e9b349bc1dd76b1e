"""esker.system.supervise and esker.system.procs with real processes: a supervised service stops within its grace
with everything it started, even what ignores SIGTERM or leaves its session's group; a pid file never names a
process that merely reuses its pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from esker.system import procs

# A service that ignores SIGTERM and starts a child that ignores it too.
STUBBORN = "trap '' TERM INT; sleep 300 & sleep 300"


def supervise(tmp_path, command: str, grace: float = 1.0, **kw) -> tuple[subprocess.Popen, str]:
    pidfile = str(tmp_path / "svc.pid")
    p = subprocess.Popen([sys.executable, "-m", "esker.system.supervise", "--name", "svc", "--pid-file", pidfile,
                          "--grace", str(grace), "--", "sh", "-c", command], start_new_session=True, **kw)
    for _ in range(200):
        if os.path.exists(pidfile) and len(procs.group_members(p.pid)) >= 3:
            break
        time.sleep(0.05)
    return p, pidfile


def test_a_stubborn_service_and_its_children_stop_within_the_grace(tmp_path):
    p, pidfile = supervise(tmp_path, STUBBORN)
    rec = procs.PidFile.read(pidfile)
    assert rec and rec.pid == rec.pgid == p.pid and rec.alive() and rec.name == "svc"
    members = rec.members()
    assert len(members) >= 3  # supervisor, sh, sleep
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)  # what JupyterHub sends first
    p.wait(10)
    assert time.monotonic() - t0 < 5
    assert procs.wait_gone(members, 2) == set()
    assert procs.group_members(p.pid) == set() and not os.path.exists(pidfile)


def test_a_service_that_exits_takes_what_it_left_and_keeps_its_status(tmp_path):
    p, pidfile = supervise(tmp_path, "sleep 300 & sleep 0.5; exit 3")
    left = procs.group_members(p.pid)
    assert p.wait(10) == 3
    assert procs.wait_gone(left, 3) == set()


def test_a_service_stops_when_the_hub_that_started_it_dies(tmp_path):
    """The hub killed outright (SIGKILL): its supervised services notice and stop."""
    pidfile = tmp_path / "svc.pid"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-m", "esker.system.supervise", "--pid-file", {str(pidfile)!r}, "--grace", "1",
                  "--", "sh", "-c", {STUBBORN!r}], start_new_session=True)
time.sleep(300)
"""])
    for _ in range(200):
        rec = procs.PidFile.read(pidfile)
        if rec and len(rec.members()) >= 3:
            break
        time.sleep(0.05)
    members = rec.members()
    parent.kill()
    parent.wait()
    assert procs.wait_gone(members, 8) == set()


def test_a_reused_pid_is_not_ours(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        real = procs.start_time(sleeper.pid)
        path = tmp_path / "x.pid"
        path.write_text(json.dumps({"pid": sleeper.pid, "start": real - 1, "pgid": sleeper.pid}))
        assert procs.PidFile.read(path).members() == set()  # same pid, another start time: someone else's
        path.write_text(json.dumps({"pid": sleeper.pid, "start": real, "pgid": sleeper.pid}))
        assert procs.PidFile.read(path).members() == {sleeper.pid}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not procs.alive(sleeper.pid, real)


def test_terminate_escalates_and_ports_are_seen(tmp_path):
    code = "import socket, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); s = socket.socket(); " \
           "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(300)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    assert procs.listening_ports({p.pid}) == {port: p.pid} and procs.listening([port]) == {port}
    killed, left = procs.terminate({p.pid}, grace=0.5)
    p.wait(5)
    assert killed == {p.pid} and left == set() and procs.listening([port]) == set()


def test_the_embedded_hub_supervises_every_managed_service():
    from esker.app import configurer
    from esker.app.deployment import Deployment

    d = Deployment(state_dir="/var/lib/esker", config_file="x", port=0, hub_port=0, proxy_api_port=0,
                   proxy_command=[], python="/venv/bin/python")
    services = [{"name": "ceph", "command": ["py", "-m", "esker.objectstore.cephd", "run"]},
                {"name": "idle-culler", "command": ["py", "-m", "jupyterhub_idle_culler"]},
                {"name": "esker-admin", "api_token": "t"}]
    out = configurer.supervised({"JupyterHub": {"services": services}}, d)["JupyterHub"]["services"]
    ceph, culler, admin = out
    assert ceph["command"] == ["/venv/bin/python", "-m", "esker.system.supervise", "--name", "ceph", "--pid-file",
                               "/var/lib/esker/run/services/ceph.pid", "--grace", "14.0", "--",
                               "py", "-m", "esker.objectstore.cephd", "run"]
    assert culler["command"][-3:] == ["py", "-m", "jupyterhub_idle_culler"] and "8.0" in culler["command"]
    assert admin == {"name": "esker-admin", "api_token": "t"}  # no process, nothing to supervise
    again = configurer.supervised({"JupyterHub": {"services": out}}, d)["JupyterHub"]["services"]
    assert again == out and services[0]["command"][0] == "py"  # idempotent; the input is not changed
