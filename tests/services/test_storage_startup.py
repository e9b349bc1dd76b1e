"""Storage is there, or the spawn says so and waits: a real hub that runs the embedded Ceph as its managed service
as `make run` does (bluestore, the shipped default, from an empty directory, on free ports), a spawn issued the
moment the hub answers, while Ceph is still starting (the hub answers through the proxy about 4 s after it
launched Ceph, which is ready after 6-8 s): it waits, says so on the progress stream, and gets its storage. Then
the gateway hangs (down, not starting): a `storage: required` profile is refused with a 503 within
storage.timeout, an optional one starts without storage, says so, `esker status` lists it, and its next start,
with the gateway back, gets its storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ceph_fixture import cluster_ports
from conftest import needs_root
from esker import devhub
from esker.devhub import ESKER, RunningHub
from esker.hubapi import SpawnRefused, run_code
from esker.objectstore.ceph import CephCluster, read_service_state

pytestmark = [pytest.mark.integration, pytest.mark.ceph, needs_root]

ENV = "import os; print('ENV', os.environ.get('AWS_ENDPOINT_URL'), os.environ.get('ESKER_BUCKET'))"


def embedded_storage() -> dict:
    base, ports = cluster_ports()
    return {"enabled": True, "endpoint": None, "timeout": 5, "start_wait": 60,
            "embedded": {"objectstore": "bluestore", "size": "4G", "port": ports[0], "mon_port": ports[1],
                         "ms_port_min": base, "ms_port_max": base + 15}}


@pytest.fixture(scope="module")
def fresh_hub(environments):
    cfg = devhub.test_config("x-", "/nonexistent", storage=embedded_storage())
    for p in cfg["profiles"]:
        if p["slug"] == "scikit-learn":
            p["storage"] = "required"
    h = RunningHub(cfg=cfg)
    try:
        yield h  # not started: the first test starts it, and spawns the moment it answers
    finally:
        h.teardown()


def events_text(model) -> list[str]:
    return [e.get("message", "") for e in model["events"]]


def hold_while_starting(ceph_dir: Path, held: dict, done: threading.Event) -> None:
    """Pause (SIGSTOP) Ceph's service process as soon as it reports "starting": its daemons go on, but it cannot
    declare itself ready, so the window in which a spawn finds Ceph starting exists on any machine (a fast one
    had Ceph ready before the hub answered)."""
    while not done.is_set():
        rec = read_service_state(ceph_dir)
        if rec and rec["state"] == "starting":
            os.kill(int(rec["pid"]), signal.SIGSTOP)
            held["pid"] = int(rec["pid"])
            return
        time.sleep(0.005)


def test_a_spawn_in_the_first_second_after_the_hub_answers_gets_its_storage(fresh_hub):
    h = fresh_hub
    ceph_dir = Path(h.state_dir) / "ceph"
    held, done = {}, threading.Event()
    holder = threading.Thread(target=hold_while_starting, args=(ceph_dir, held, done), daemon=True)
    holder.start()
    resume = None
    try:
        h.start()
        answered = time.monotonic()
        holder.join(60)
        record = read_service_state(ceph_dir)
        assert held and record and record["state"] == "starting", f"Ceph was never seen starting: {record}"
        hub = h.hub
        hub.ensure_user("early")
        issued = time.monotonic() - answered
        resume = threading.Timer(3.0, os.kill, (held["pid"], signal.SIGCONT))  # Ceph goes on while it waits
        resume.start()
        model = hub.spawn("early", {"profile": "minimal"})
    finally:
        done.set()
        if resume is not None:
            resume.cancel()
        if held:
            os.kill(held["pid"], signal.SIGCONT)
    assert issued < 1.0, f"the spawn was issued {issued:.1f} s after the hub answered"
    messages = events_text(model)
    waits = [m for m in messages if m.startswith("Waiting for object storage, ")]
    assert waits, messages  # it waited, and said so while it did
    assert any("Object storage ready: bucket" in m for m in messages), messages
    assert not any("starting without it" in m for m in messages), messages
    assert read_service_state(ceph_dir)["state"] == "ready"
    try:
        out = run_code(hub.server_url("early"), hub.user_token("early"), ENV +
                       "\nimport boto3; boto3.client('s3').head_bucket(Bucket=os.environ['ESKER_BUCKET']); print('S3 OK')")
        assert out["error"] is None and "S3 OK" in out["stdout"], out
        assert f"ENV http://127.0.0.1:{h.cfg['storage']['embedded']['port']} " in out["stdout"], out
        state = hub.request("GET", "/users/early").json()["servers"][""]["state"]
        assert "no_storage" not in state
    finally:
        hub.stop("early")


def status(h) -> dict:
    p = subprocess.run([ESKER, "status", "--json"], env=h.env(), capture_output=True, text=True, timeout=120)
    return json.loads(p.stdout)


def test_gateway_down_required_refused_optional_starts_without_is_listed_and_gets_it_next_time(fresh_hub):
    h = fresh_hub
    if not h.proc:
        pytest.skip("the hub did not start")
    hub = h.hub
    ceph_dir = Path(h.state_dir) / "ceph"
    e = h.cfg["storage"]["embedded"]
    cluster = CephCluster(ceph_dir, objectstore="bluestore", port=e["port"], mon_port=e["mon_port"],
                          ms_port_min=e["ms_port_min"], ms_port_max=e["ms_port_max"])
    rgw = cluster.daemons.adopt("rgw")
    assert rgw is not None and read_service_state(ceph_dir)["state"] == "ready"
    hub.ensure_user("late-req")
    hub.ensure_user("late-opt")
    # The gateway hangs (a frozen radosgw: connections accepted, never answered). The service still runs and says
    # "ready", so this is a gateway that is down, not one starting: nobody waits for it beyond storage.timeout.
    os.kill(rgw.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(SpawnRefused) as refused:
            hub.spawn("late-req", {"profile": "scikit-learn"})
        assert refused.value.status == 503, refused.value
        assert "Object storage is unavailable, and scikit-learn needs it" in refused.value.message, refused.value
        assert "after waiting" not in refused.value.message  # a down gateway is not waited for
        assert time.monotonic() - t0 < h.cfg["storage"]["start_wait"] / 2

        model = hub.spawn("late-opt", {"profile": "minimal"})
        messages = events_text(model)
        assert any("Object storage is unavailable" in m and "starting without it" in m for m in messages), messages
        assert not any(m.startswith("Waiting for object storage") for m in messages), messages
        out = run_code(hub.server_url("late-opt"), hub.user_token("late-opt"), ENV)
        assert "ENV None None" in out["stdout"], out
        servers = status(h)["components"]["servers"]
        [listed] = servers["without_storage"]
        assert listed["user"] == "late-opt" and listed["profile"] == "minimal" and listed["reason"], listed
        assert "1 without object storage" in servers["detail"] and "late-opt" in servers["detail"]
        hub.stop("late-opt")
    finally:
        os.kill(rgw.pid, signal.SIGCONT)
    assert status(h)["components"]["servers"]["without_storage"] == []  # stopped: nothing listed
    # The gateway is back: the server's next start gets its storage, and nothing is listed any more.
    model = hub.spawn("late-opt", {"profile": "minimal"})
    try:
        assert any("Object storage ready: bucket" in m for m in events_text(model)), events_text(model)
        out = run_code(hub.server_url("late-opt"), hub.user_token("late-opt"), ENV)
        assert "ENV http://" in out["stdout"], out
        assert status(h)["components"]["servers"]["without_storage"] == []
    finally:
        hub.stop("late-opt")
