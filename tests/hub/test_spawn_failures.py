"""Spawn-error paths on a real hub, with failure-mode spawners (tests/hub/failure_spawners.py) in developer
mode: no root needed. A start that is too slow, a server that never answers, one that exits at once and a
placement that raises each end in a failed spawn with the hub's reason, and each gives back what it took:
afterwards both GPUs go to one server, which cannot happen while any failed spawn still holds one.
"""

from __future__ import annotations

import os
import time

import pytest

from esker.devhub import RunningHub
from esker.hubapi import SpawnRefused

pytestmark = pytest.mark.integration

HERE = os.path.dirname(os.path.abspath(__file__))
EXTRA = f"""
import sys
sys.path.insert(0, {HERE!r})
c.JupyterHub.spawner_class = "failure_spawners.FailureModeSpawner"
c.EskerLocalSpawner.developer_mode = True
c.Spawner.start_timeout = 40  # past slow_spawn_timeout (10 s): the POST has answered 202 by then
c.Spawner.http_timeout = 30
"""
GPU = {"profile": "tensorflow", "gpus": "1"}


@pytest.fixture(scope="module")
def failing_hub(environments):
    h = RunningHub(extra_config=EXTRA)
    try:
        h.start()
        yield h
    finally:
        h.teardown()


def failed_spawn(hub, name):
    """The failure as the user sees it: the POST's answer when the spawn fails within slow_spawn_timeout,
    else the progress stream's last event."""
    hub.ensure_user(name, groups=["gpu-users"])
    with pytest.raises((RuntimeError, SpawnRefused)) as e:
        hub.spawn(name, GPU, timeout=120)
    # The hub may still be waiting on the server (http_timeout) after it answered: wait until it gave up.
    for _ in range(120):
        model = hub.request("GET", f"/users/{name}").json()
        if not model["servers"] and not model.get("pending"):
            break
        time.sleep(0.5)
    assert not model["servers"], f"{name} still has a server: {model['servers']}"
    return str(e.value)


@pytest.mark.parametrize("name,reason", [
    ("slow-1", "did not start within 40 s (the last step was: slow on purpose)"),
    ("neverready-1", "didn't respond"),
    # Seen by the spawner's own readiness wait at once (before, JupyterHub 6.1 answered a server that exited by
    # slow_spawn_timeout with a bare 500 "Internal Server Error": InvalidStateError in spawn_single_user).
    ("badexit-1", "JupyterLab exited with status 3 before it answered"),
    ("broken-1", "read-only"),
])
def test_a_failed_spawn_says_why_and_gives_back_its_gpu(failing_hub, name, reason):
    hub = failing_hub.hub
    message = failed_spawn(hub, name)
    assert reason.lower() in message.lower(), message
    # Both GPUs to one server: only possible when the failed spawn released the one it held.
    hub.ensure_user("ok-1", groups=["gpu-users"])
    try:
        assert hub.spawn("ok-1", {"profile": "tensorflow", "gpus": "2"}, timeout=300)["ready"]
    finally:
        hub.stop("ok-1")
    metrics = hub.request("GET", "/metrics", timeout=10)
    if metrics.status_code == 200:  # the hub's Prometheus endpoint: the failure is counted
        assert 'outcome="failure"' in metrics.text


@pytest.mark.parametrize("name", ["neverready-spark", "badexit-spark", "broken-spark"])
def test_a_failed_spark_spawn_leaves_no_spark_running(failing_hub, name):
    """A Spark server whose start fails (after its own master and worker were started, or while they start)
    leaves none of its Spark daemons running."""
    from esker.spark.cluster import running_daemons

    hub = failing_hub.hub
    hub.ensure_user(name)
    root = failing_hub.cfg["scratch"]["root"].replace("{state_dir}", failing_hub.state_dir)
    with pytest.raises((RuntimeError, SpawnRefused)):
        hub.spawn(name, {"profile": "spark"}, timeout=120)
    for _ in range(120):
        model = hub.request("GET", f"/users/{name}").json()
        if not model["servers"] and not model.get("pending"):
            break
        time.sleep(0.5)
    assert not model["servers"]
    deadline = time.monotonic() + 20  # the release's SIGTERM grace
    while time.monotonic() < deadline and running_daemons(under=root):
        time.sleep(0.5)
    assert running_daemons(under=root) == [], running_daemons(under=root)
    if not name.startswith("broken"):  # its master and worker did start: the hub's log says so
        log = failing_hub.log_tail(5000).splitlines()
        assert any(name in line and "Spark ready: your own master" in line for line in log), log[-40:]
