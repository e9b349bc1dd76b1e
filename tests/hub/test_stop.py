"""Stop means stopped: a real hub with a real server and kernel, Spark, the courses service and the idle culler
(and a service that ignores SIGTERM), stopped by `esker stop` and by the test hubs' own teardown, leaves no
process and no listening port behind; `esker stop` says "stopped" only then.

Only what the hub under test started is judged (other hubs may run beside it): the hub's process tree and every
process whose environment names its API, recorded (pid and start time) while it runs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from esker.devhub import ESKER, RunningHub, prepare_environments
from esker.system import procs

pytestmark = [pytest.mark.integration]

# The hook's view (`make test`'s before-stop check): none of these may be left of the hub under test.
HOOK = r"configurable-http-proxy|jupyterhub|esker\.hub|ceph-(mon|osd)|radosgw|deploy\.(master|worker)|idle_culler"

# A managed service that ignores SIGINT and SIGTERM and has a child that does too: JupyterHub alone would wait
# 20 s on it and then leave the child running.
STUBBORN = """
import sys, types, os
from esker.app import configurer
d = types.SimpleNamespace(python=sys.executable, state_dir=os.environ["ESKER_STATE_DIR"])
stubborn = {"name": "stubborn", "display": False,
             "command": ["sh", "-c", "trap '' TERM INT; sleep 600 & sleep 600"]}
c.JupyterHub.services = configurer.supervised(
    {"JupyterHub": {"services": [*c.JupyterHub.services, stubborn]}}, d)["JupyterHub"]["services"]
"""


@pytest.fixture(scope="module", autouse=True)
def envs():
    prepare_environments(["minimal", "spark"])


def hub_port(h: RunningHub) -> int:
    return json.loads(Path(h.state_dir, "ports.json").read_text())["hub"]


def of_hub(h: RunningHub) -> dict[int, int]:
    """pid -> start time of every live process of this hub."""
    table = procs.table()
    mine = {h.proc.pid} | procs.descendants(h.proc.pid, table)
    marker = f"127.0.0.1:{hub_port(h)}/"
    for pid in table:
        env = procs.environ(pid)
        if env and marker in env.get("JUPYTERHUB_API_URL", ""):
            mine |= {pid} | procs.descendants(pid, table)
    return {p: table[p][2] for p in mine if p in table}


def with_server_and_kernel(h: RunningHub, user: str = "stopper") -> dict[int, int]:
    hub = h.hub
    hub.ensure_user(user)
    hub.spawn(user, {"profile": "spark"})  # with the server's own Spark master and worker
    url = f"{h.url}/user/{user}/"
    r = requests.post(f"{url}api/kernels", headers={"Authorization": f"token {hub.user_token(user)}"}, json={},
                      timeout=60)
    r.raise_for_status()
    before = {}
    for _ in range(120):  # the kernel process, and Spark's JVMs, up
        before = of_hub(h)
        args = " ".join(" ".join(procs.cmdline(p)) for p in before)
        if all(w in args for w in ("ipykernel", "jupyterhub-singleuser", "deploy.master.Master",
                                   "deploy.worker.Worker", "idle_culler", "esker.courses.service",
                                   "configurable-http-proxy")):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"not all of the hub's processes came up: {args}")
    return before


def assert_nothing_left(before: dict[int, int], ports: set[int], state_dir: str) -> None:
    left = [f"{p}: {' '.join(procs.cmdline(p))}" for p, t in before.items() if procs.alive(p, t)]
    assert not left, "\n".join(left)
    assert procs.listening(ports) == set()
    for _ in range(50):  # an exited process shows as <defunct> until its new parent (init) reaps it
        ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines()
        hook = subprocess.run(["grep", "-E", HOOK], input="\n".join(ps), capture_output=True, text=True).stdout
        ours = [line for line in hook.splitlines() if int(line.split()[0]) in before or state_dir in line]
        if not ours:
            break
        time.sleep(0.2)
    assert not ours, ours


def test_teardown_leaves_no_process_and_no_port():
    h = RunningHub()
    try:
        h.start()
        before = with_server_and_kernel(h)
        ports = set(procs.listening_ports(before))
        assert {h.cfg["hub"]["port"], hub_port(h)} <= ports
    except BaseException:
        h.teardown()
        raise
    h.teardown()  # raises itself when something is left
    assert_nothing_left(before, ports, h.state_dir)


def test_esker_stop_stops_the_hub_and_its_services_then_all(tmp_path):
    h = RunningHub(extra_config=STUBBORN)
    try:
        h.start()
        before = with_server_and_kernel(h)
        ports = set(procs.listening_ports(before))
        stubborn = {p for p in before if "sleep 600" in " ".join(procs.cmdline(p))}
        assert len(stubborn) >= 2, "the stubborn service and its child run"
        env = {**os.environ, "ESKER_STATE_DIR": h.state_dir}
        env.pop("ESKER_CONFIG", None)

        # `esker stop`: the hub and its services, at once even with a service that ignores SIGTERM.
        t0 = time.monotonic()
        r = subprocess.run([ESKER, "stop"], env=env, capture_output=True, text=True, timeout=180)
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stdout + r.stderr
        assert "stopped the hub" in r.stdout and "SIGKILL: the hub" not in r.stdout, r.stdout
        assert took < 60, f"stop took {took:.0f} s:\n{r.stdout}\n{h.log_tail()}"
        h.proc.wait(5)
        still = {p for p, t in before.items() if procs.alive(p, t)}
        args = {p: " ".join(procs.cmdline(p)) for p in still}
        assert not [a for a in args.values() if any(w in a for w in (
            "idle_culler", "esker.courses.service", "sleep 600", "esker.system.supervise"))], args
        assert any("configurable-http-proxy" in a for a in args.values()), "the proxy survives a plain stop"
        assert any("jupyterhub-singleuser" in a for a in args.values()), "servers survive a plain stop"
        assert any("deploy.master" in a for a in args.values()), "and so does each server's own Spark"
        assert not list(Path(h.state_dir, "run", "services").glob("*.pid"))

        # `esker stop --all`: the servers, their kernels and the proxy too; nothing is left, and it says so.
        r = subprocess.run([ESKER, "stop", "--all"], env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "nothing is left running and no port is held" in r.stdout, r.stdout
        assert "stopped notebook servers" in r.stdout and "stopped the proxy" in r.stdout, r.stdout
        assert_nothing_left(before, ports, h.state_dir)
        r = subprocess.run([ESKER, "stop", "--all"], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "was running" in r.stdout, r.stdout  # again: nothing to stop, and true
    finally:
        h.teardown()
