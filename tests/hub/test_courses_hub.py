"""Courses end to end on a real embedded hub: the esker-courses service behind the proxy, a 30-participant course
created through its API, content and a read-only dataset in spawned servers, edits surviving a content update,
instructor rights, reservations (refused with the reason, kept over a restart) and seats during a window.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from conftest import needs_root
from esker import devhub as hubfixture, resources
from esker.devhub import ESKER, RunningHub
from esker.hubapi import SpawnRefused, run_code

pytestmark = [pytest.mark.integration, needs_root]

SVC = "/services/esker-courses/api"
PARTICIPANTS = [f"ws{i:02d}" for i in range(1, 31)]


class CourseHub(RunningHub):
    """RunningHub for the course tests (the stock spawner runs the course hooks)."""


def svc(h, method, path, token=None, **kw):
    return requests.request(method, f"{h.url}{SVC}{path}", headers={"Authorization": f"token {token or h.token}"},
                            timeout=120, **kw)


def files_in(h, user, token, folder):
    out = run_code(h.hub.server_url(user), token, f"""
import os, json
d = os.path.expanduser({folder!r})
res = {{"files": sorted(os.listdir(d)), "env": {{k: v for k, v in os.environ.items() if k.startswith('ESKER_COURSE')}}}}
try:
    res["data"] = open(os.path.join(d, 'data/weather/t.csv')).read()
except Exception as e:
    res["data"] = repr(e)
try:
    open(os.path.join(d, 'data/weather/mine.csv'), 'w').write('x'); res["write"] = "ok"
except Exception as e:
    res["write"] = type(e).__name__
print("OUT" + json.dumps(res))
""")
    assert out["error"] is None, out["error"]
    return json.loads(out["stdout"].split("OUT", 1)[1])


@pytest.fixture(scope="module")
def course_hub(environments):
    content = Path(tempfile.mkdtemp(prefix="esker-course-src-", dir="/tmp"))
    os.chmod(content, 0o755)
    shutil.copytree(resources.notebooks_dir() / "courses" / "intro-ml", content / "intro-ml")
    h = CourseHub()
    h.cfg = hubfixture.test_config(h.prefix, h.home_root, capacity={"cpu": 6, "memory": "64G", "gpus": 2, "scratch": "1T"})
    h.cfg["storage"] = {"enabled": False, "datasets": [{"name": "weather", "bucket": "shared", "prefix": "weather/"}]}
    h.cfg["users"]["groups"]["instructors"] = ["ines"]
    h.content = content / "intro-ml"
    from pathlib import Path as P

    import yaml

    P(h.config_file).write_text(yaml.safe_dump(h.cfg))
    ds = Path(h.state_dir) / "datasets" / "weather"
    ds.mkdir(parents=True)
    os.chmod(ds.parent, 0o711)
    os.chmod(ds, 0o750)
    (ds / "t.csv").write_text("day,temp\nmon,12\n")
    try:
        h.start()
        yield h
    finally:
        h.teardown()
        shutil.rmtree(content, ignore_errors=True)


def test_course_lifecycle(course_hub):
    h, hub = course_hub, course_hub.hub
    now = datetime.now(timezone.utc)
    # ---- an admin creates a course of 30 participants through the API
    body = {"name": "workshop", "display_name": "ML Workshop", "group": "workshop", "instructors": ["ines"],
            "participants": PARTICIPANTS, "content": {"path": str(h.content)}, "datasets": ["weather"],
            "profiles": ["minimal"], "idle_timeout": 1800}
    r = svc(h, "POST", "/courses", json=body)
    assert r.status_code == 201, r.text
    group = hub.request("GET", "/groups/workshop").json()
    assert sorted(group["users"]) == PARTICIPANTS
    assert svc(h, "POST", "/courses", json={**body, "profiles": ["gpu-xl"]}).status_code == 400

    # ---- a participant cannot join others or manage the course by forging requests
    hub.ensure_user("outsider")
    p_tok, out_tok = hub.user_token("ws01"), hub.user_token("outsider")
    r = svc(h, "PATCH", "/courses/workshop", p_tok, json={"participants": PARTICIPANTS + ["outsider"]})
    assert r.status_code == 403, r.text
    assert svc(h, "POST", "/courses", out_tok, json={**body, "name": "mine", "group": "workshop"}).status_code == 403
    assert svc(h, "POST", "/courses/workshop/join", out_tok, json={"password": ""}).status_code == 403
    assert svc(h, "GET", "/courses/workshop", out_tok).status_code == 404
    assert "outsider" not in hub.request("GET", "/groups/workshop").json()["users"]
    mine = svc(h, "GET", "/courses", p_tok).json()
    assert [c["name"] for c in mine] == ["workshop"] and "participants" not in mine[0]

    # ---- reservations: one that does not fit is refused with the reason
    window = {"start": (now - timedelta(minutes=1)).isoformat(), "end": (now + timedelta(hours=2)).isoformat()}
    r = svc(h, "POST", "/reservations", json={"course": "workshop", "profile": "minimal", "seats": 30, **window})
    assert r.status_code == 409 and "needs 30 CPU, 6 free" in r.json()["message"], r.text
    past = {"start": (now - timedelta(hours=3)).isoformat(), "end": (now - timedelta(hours=2)).isoformat()}
    r = svc(h, "POST", "/reservations", json={"course": "workshop", "profile": "minimal", "seats": 2, **past})
    assert r.status_code == 400 and "in the past" in r.json()["message"]
    r = svc(h, "POST", "/reservations", json={"course": "workshop", "profile": "minimal", "seats": 5, **window})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]

    # ---- a restart keeps reservations and courses, and gives the runtime course's instructor her role
    h.stop_hub()
    h.start()
    assert [x["id"] for x in svc(h, "GET", "/reservations").json()] == [rid]
    assert svc(h, "GET", "/courses/workshop").json()["group"] == "workshop"

    # ---- pre-warming: the service's start-up pass finds the reserved profile's environment ready and says so
    deadline = time.monotonic() + 120
    while True:
        got = svc(h, "GET", "/reservations").json()[0]
        if got["prewarmed_at"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert got["prewarmed_at"] and got["prewarm"]["environment"] == "minimal", got
    assert got["prewarm"]["status"] == "ready" and got["prewarm"]["spark"] is None, got

    # ---- participants get the notebooks and the read-only dataset
    for u in ("ws01", "ws02"):
        model = hub.spawn(u, {"profile": "minimal"})
        assert any("Course ML Workshop" in e.get("message", "") for e in model["events"]), model["events"]
    p_tok = hub.user_token("ws01")
    d = files_in(h, "ws01", p_tok, "~/workshop")
    assert {"01-welcome.ipynb", "02-first-model.ipynb", "README.md", "data"} <= set(d["files"]), d
    assert d["data"].startswith("day,temp") and d["write"] == "PermissionError", d
    assert d["env"]["ESKER_COURSE"] == "workshop" and d["env"]["ESKER_COURSES"] == "workshop"

    # ---- a participant's edit survives a content update
    run_code(hub.server_url("ws01"), p_tok, """
import json, os
p = os.path.expanduser('~/workshop/01-welcome.ipynb')
nb = json.load(open(p)); nb['cells'].append({'cell_type': 'markdown', 'metadata': {}, 'source': 'MY NOTES'})
json.dump(nb, open(p, 'w'))
""")
    nb = json.loads((h.content / "01-welcome.ipynb").read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "UPSTREAM FIX"})
    (h.content / "01-welcome.ipynb").write_text(json.dumps(nb))
    (h.content / "03-new.ipynb").write_text((h.content / "02-first-model.ipynb").read_text())
    ines_tok = hub.user_token("ines")
    r = svc(h, "POST", "/courses/workshop/sync", ines_tok)
    assert r.status_code == 200 and "conflicts" in r.json()["merged"]["ws01"], r.text
    assert svc(h, "POST", "/courses/workshop/sync", out_tok).status_code == 403
    out = run_code(hub.server_url("ws01"), p_tok, """
import os
d = os.path.expanduser('~/workshop/')
print('MINE' if 'MY NOTES' in open(d + '01-welcome.ipynb').read() else 'LOST')
print('UP' if 'UPSTREAM FIX' in open(d + '01-welcome.upstream.ipynb').read() else 'NOUP')
print('NEW' if os.path.exists(d + '03-new.ipynb') else 'NONEW')
""")
    assert out["stdout"].split() == ["MINE", "UP", "NEW"], out
    d2 = files_in(h, "ws02", hub.user_token("ws02"), "~/workshop")
    assert "03-new.ipynb" in d2["files"] and "01-welcome.upstream.ipynb" not in d2["files"]  # ws02 had no edit

    # ---- the instructor reaches participants' servers, and nobody else's (her own token, from her login:
    # one minted by the admin token could not carry access:servers, which the admin token lacks)
    ines_tok = h.hub.login_token("ines")
    assert hub.request("GET", "/users/ws01", token=ines_tok).status_code == 200
    assert hub.request("GET", "/users/outsider", token=ines_tok).status_code in (403, 404)
    listed = {u["name"] for u in hub.request("GET", "/users", token=ines_tok).json()}
    assert "ws01" in listed and "outsider" not in listed
    r = requests.get(f"{hub.server_url('ws01')}api/contents/workshop",
                     headers={"Authorization": f"token {ines_tok}"}, allow_redirects=False)
    assert r.status_code == 200, r.status_code

    # ---- during the window: outsiders fit only in what is not promised; participants keep their seats
    hub.spawn("outsider", {"profile": "minimal"})  # 6 CPU - 5 promised = 1 free
    r = requests.get(f"{hub.server_url('outsider')}api/contents", headers={"Authorization": f"token {ines_tok}"},
                     allow_redirects=False)
    assert r.status_code in (302, 403), r.status_code  # not her participant
    hub.ensure_user("latecomer")
    with pytest.raises(SpawnRefused) as e:
        hub.spawn("latecomer", {"profile": "minimal"})
    assert e.value.status in (409, 503) and "capacity reserved for ML Workshop until" in e.value.message, e.value
    hub.spawn("ws03", {"profile": "minimal"})  # a participant still gets a seat

    # ---- after the reservation is gone, the latecomer gets in
    assert svc(h, "DELETE", f"/reservations/{rid}", p_tok).status_code == 403
    assert svc(h, "DELETE", f"/reservations/{rid}", ines_tok).status_code == 204
    for u in ("ws02", "ws03", "outsider"):
        hub.stop(u)
    hub.spawn("latecomer", {"profile": "minimal"})
    for u in ("ws01", "latecomer"):
        hub.stop(u)


def test_cli_talks_to_the_service(course_hub):
    h = course_hub
    env = {**os.environ, "ESKER_ADMIN_TOKEN": h.token, "ESKER_URL": h.url}
    esker = ESKER
    r = subprocess.run([esker, "course", "list"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "workshop" in r.stdout, r.stdout + r.stderr
    now = datetime.now(timezone.utc)
    r = subprocess.run([esker, "reserve", "create", "workshop", "--profile", "minimal", "--seats", "40",
                        "--start", (now + timedelta(days=1)).isoformat(), "--hours", "3"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "needs 40 CPU, 6 free" in r.stderr, r.stdout + r.stderr
