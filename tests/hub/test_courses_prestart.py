"""Pre-started servers on a real embedded hub: a reservation whose window opens in a few minutes gets its booked
participants' servers started by the esker-courses service before anyone logs in (through the hub's REST API and
Esker's spawner: the course notebooks are in place), up to its seats (the one beyond is named); a participant
logging in through the form lands on the running server; a participant removed from the course has the
pre-started server stopped (and the freed seat goes to the next), while a server a participant started
themselves is never stopped; a restart of the hub and the service neither doubles nor loses servers; the hub's
metrics and `esker reserve list` say what happened. The service's passes run every second or two (env knobs);
the waits are for states, never for times."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import yaml

from conftest import needs_root
from esker import devhub, resources
from esker.courses.jobs import activity_body
from esker.devhub import ESKER, RunningHub

pytestmark = [pytest.mark.integration, needs_root]

SVC = "/services/esker-courses/api"
NAMED = ["pa", "pb", "pc", "pown"]


class PrestartHub(RunningHub):
    """The service's passes fast: pre-start every second, culling and pre-warming every few."""

    def env(self) -> dict:
        return {**super().env(), "ESKER_COURSES_PRESTART_EVERY": "1", "ESKER_COURSES_PRESTART_BACKOFF": "2",
                "ESKER_COURSES_PREWARM_EVERY": "5", "ESKER_COURSES_CULL_EVERY": "5"}


def svc(h, method, path, **kw):
    return requests.request(method, f"{h.url}{SVC}{path}", headers={"Authorization": f"token {h.token}"},
                            timeout=120, **kw)


def server(h, name):
    return (h.hub.request("GET", f"/users/{name}").json().get("servers") or {}).get("")


def wait_for(what, check, timeout=300, every=1.0):
    """Poll ``check`` until it returns something true; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not reached in {timeout}s; last: {last!r}")


def prestart_of(h):
    (r,) = svc(h, "GET", "/reservations").json()
    return r["prestart"] or {}


@pytest.fixture(scope="module")
def prestart_hub():
    devhub.prepare_environments(["minimal"])
    content = Path(tempfile.mkdtemp(prefix="esker-course-src-", dir="/tmp"))
    os.chmod(content, 0o755)
    shutil.copytree(resources.notebooks_dir() / "courses" / "intro-ml", content / "intro-ml")
    h = PrestartHub()
    h.cfg = devhub.test_config(h.prefix, h.home_root, spark={"enabled": False},
                               capacity={"cpu": 8, "memory": "64G", "gpus": 0, "scratch": "1T"})
    h.content = content / "intro-ml"
    Path(h.config_file).write_text(yaml.safe_dump(h.cfg))
    try:
        h.start()
        yield h
    finally:
        h.teardown()
        shutil.rmtree(content, ignore_errors=True)


def test_participants_servers_are_started_before_they_arrive(prestart_hub):
    h, hub = prestart_hub, prestart_hub.hub
    body = {"name": "pre", "group": "pre", "participants": NAMED, "content": {"path": str(h.content)},
            "profiles": ["minimal"], "prestart_lead": 1800, "prestart_grace": 900}
    r = svc(h, "POST", "/courses", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["prestart_lead"] == 1800
    # pown started a server of their own before the reservation: it counts toward the seats and is left alone
    hub.spawn("pown", {"profile": "minimal"})
    own_started = server(h, "pown")["started"]

    now = datetime.now(timezone.utc)
    r = svc(h, "POST", "/reservations", json={"course": "pre", "profile": "minimal", "seats": 3,
                                              "start": (now + timedelta(minutes=10)).isoformat(),
                                              "end": (now + timedelta(hours=2)).isoformat()})
    assert r.status_code == 201, r.text

    # ---- before anyone logs in: seats 3 = pown (own) + pa + pb; pc is beyond the seats and said to be
    p = wait_for("pa and pb pre-started", lambda: (lambda p: p if sorted(p.get("running", ())) == ["pa", "pb"]
                                                   else None)(prestart_of(h)))
    assert p["phase"] == "lead" and p["over_seats"] == ["pc"] and p["already_running"] == ["pown"], p
    assert "beyond the 3 seats" in p["message"] and p["failed"] == [], p
    assert server(h, "pc") is None
    started = {u: server(h, u)["started"] for u in ("pa", "pb")}
    assert all(server(h, u)["ready"] and server(h, u)["user_options"] == {"profile": "minimal"} for u in started)

    # ---- the CLI says so
    env = {**os.environ, "ESKER_ADMIN_TOKEN": h.token, "ESKER_URL": h.url}
    out = subprocess.run([ESKER, "reserve", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pre-start (lead): 2/3 running" in out.stdout and "1 already running" in out.stdout, out.stdout
    assert "over seats, not pre-started: pc" in out.stdout, out.stdout

    # ---- pa logs in through the form and lands on the running server, course notebooks in place
    s, landed = hub.form_login("pa")
    assert landed.status_code == 200 and landed.url.startswith(f"{h.url}/user/pa/"), (landed.status_code, landed.url)
    nb = s.get(f"{h.url}/user/pa/api/contents/pre", timeout=60)
    assert nb.status_code == 200, nb.status_code
    assert {"01-welcome.ipynb", "02-first-model.ipynb"} <= {f["name"] for f in nb.json()["content"]}
    assert server(h, "pa")["started"] == started["pa"]  # the same server, not a new one

    # ---- the activity report that keeps the hub-wide culler off a pre-started server: the hub takes it
    t = datetime.now(timezone.utc)
    r = hub.request("POST", "/users/pb/activity", json=activity_body(t))
    assert r.status_code == 200, r.text
    la = datetime.fromisoformat(server(h, "pb")["last_activity"].replace("Z", "+00:00"))
    assert la >= t.replace(microsecond=0), (la, t)  # the report's time, not the server's older activity

    # ---- the hub's metrics count them
    m = hub.request("GET", "/metrics").text  # the admin token has read:metrics
    assert 'esker_prestart_total{outcome="started"} 2.0' in m, [x for x in m.splitlines() if "prestart" in x]
    assert 'esker_prestart_servers{status="running"} 2.0' in m
    assert "esker_prestart_over_seats 1.0" in m

    # ---- pb and pown leave the course: pb's pre-started server is stopped, pown's own server is not; the freed
    # seats go to pc
    r = svc(h, "PATCH", "/courses/pre", json={"participants": ["pa", "pc"]})
    assert r.status_code == 200, r.text
    p = wait_for("pb stopped and pc pre-started",
                 lambda: (lambda p: p if p.get("stopped") == ["pb"] and sorted(p.get("running", ())) == ["pa", "pc"]
                          else None)(prestart_of(h)))
    assert p["over_seats"] == [] and server(h, "pb") is None
    assert server(h, "pown")["started"] == own_started  # never stopped: it was theirs
    started["pc"] = server(h, "pc")["started"]

    # ---- a restart of the hub and its service during the lead: the same servers, none doubled or lost
    before = p["checked_at"]
    h.stop_hub()
    h.start()
    p = wait_for("a pass after the restart",
                 lambda: (lambda p: p if p.get("checked_at", "") > before else None)(prestart_of(h)))
    p = wait_for("the pass after that", lambda: (lambda q: q if q["checked_at"] > p["checked_at"] else None)(
        prestart_of(h)))
    assert sorted(p["running"]) == ["pa", "pc"] and p["starting"] == [] and p["stopped"] == ["pb"], p
    for u in ("pa", "pc"):
        assert server(h, u)["started"] == started[u], u  # not restarted
    assert server(h, "pb") is None and server(h, "pown")["started"] == own_started
    m = hub.request("GET", "/metrics").text
    assert 'esker_prestart_total{outcome="started"} 3.0' in m and 'esker_prestart_total{outcome="stopped"} 1.0' in m

    # ---- the reservation is deleted before its window: the servers this service started go, pown's stays
    rid = svc(h, "GET", "/reservations").json()[0]["id"]
    assert svc(h, "DELETE", f"/reservations/{rid}").status_code == 204
    wait_for("pre-started servers stopped", lambda: server(h, "pa") is None and server(h, "pc") is None)
    assert server(h, "pown")["started"] == own_started
    hub.stop("pown")
