"""Instructors reach their participants' servers as soon as the courses service changes a course, with no hub
restart: a course created at run time through the service's API, a participant added at run time to a course of
esker.yaml, someone joining with the password; and the access goes when they leave. A real embedded hub; the same
service code and role run in the Kubernetes chart's hub (the shares it keeps are plain hub REST calls).
"""

from __future__ import annotations


import pytest
import requests

from conftest import needs_root
from esker import devhub
from esker.courses.hubsync import SHARED_SCOPES

pytestmark = [pytest.mark.integration, needs_root]

SVC = "/services/esker-courses/api"


def svc(h, method, path, token=None, **kw):
    return requests.request(method, f"{h.url}{SVC}{path}", headers={"Authorization": f"token {token or h.token}"},
                            timeout=120, **kw)


@pytest.fixture(scope="module")
def access_hub():
    devhub.prepare_environments(["minimal"])
    cfg = devhub.test_config("", "", spark={"enabled": False}, storage={"enabled": False},
                             courses=[{"name": "stats", "group": "stats", "instructors": ["ivo"],
                                       "participants": ["sam"], "profiles": ["minimal"]}])
    h = devhub.RunningHub(cfg)  # the hub's own account prefix and homes replace the blanks
    try:
        h.start()
        yield h
    finally:
        h.teardown()


def opens(h, user: str, token: str) -> int:
    """What the user's single-user server answers to the token (its REST API, as a notebook client would)."""
    r = requests.get(f"{h.hub.server_url(user)}api/status", headers={"Authorization": f"token {token}"},
                     allow_redirects=False, timeout=60)
    return r.status_code


def shared_with(h, user: str, token: str) -> set[str]:
    r = h.hub.request("GET", f"/users/{user}/shared", token=token)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert all(set(SHARED_SCOPES) <= {s.split("!")[0] for s in i["scopes"]} for i in items), items
    return {i["server"]["user"]["name"] for i in items}


def test_instructors_reach_run_time_participants_without_a_restart(access_hub):
    h, hub = access_hub, access_hub.hub
    hub_pid = h.proc.pid

    # ---- a course created at run time, through the service
    r = svc(h, "POST", "/courses", json={"name": "lab", "group": "lab", "instructors": ["ines"],
                                         "participants": ["pat"], "password": "open-sesame",
                                         "profiles": ["minimal"]})
    assert r.status_code == 201, r.text
    ines, ivo, outsider = (h.hub.login_token(u) for u in ("ines", "ivo", "outsider"))
    assert shared_with(h, "ines", ines) == {"pat"}
    assert shared_with(h, "outsider", outsider) == set()

    # the instructor starts her participant's server herself, and opens it with her own token
    r = hub.request("POST", "/users/pat/server", token=ines, json={"profile": "minimal"})
    assert r.status_code in (201, 202), r.text
    if r.status_code == 202:
        hub.follow_progress("pat")
    assert hub.request("GET", "/users/pat").json()["servers"][""]["ready"]
    assert opens(h, "pat", ines) == 200
    assert opens(h, "pat", ivo) == 403  # another course's instructor
    assert opens(h, "pat", outsider) == 403
    assert hub.request("POST", "/users/outsider/server", token=ines, json={}).status_code in (403, 404)

    # ---- a participant added at run time to a course from esker.yaml (its instructor adds her)
    r = svc(h, "PATCH", "/courses/stats", ivo, json={"participants": ["sam", "pia"]})
    assert r.status_code == 200, r.text
    assert "pia" in hub.request("GET", "/groups/stats").json()["users"]
    hub.spawn("pia", {"profile": "minimal"})
    assert opens(h, "pia", ivo) == 200  # the role from esker.yaml alone would need a restart for this
    assert opens(h, "pia", ines) == 403
    assert shared_with(h, "ivo", ivo) == {"sam", "pia"}

    # ---- someone joining with the password is reached too
    r = svc(h, "POST", "/courses/lab/join", outsider, json={"password": "open-sesame"})
    assert r.status_code == 200, r.text
    assert shared_with(h, "ines", ines) == {"pat", "outsider"}

    # ---- leaving takes it away: pat is dropped from lab, and ines no longer gets in
    r = svc(h, "PATCH", "/courses/lab", ines, json={"participants": []})
    assert r.status_code == 200, r.text
    assert "pat" not in hub.request("GET", "/groups/lab").json()["users"]
    assert shared_with(h, "ines", ines) == {"outsider"}
    # a token the server has not seen (single-user servers cache what a token may do for a few minutes)
    assert opens(h, "pat", h.hub.login_token("ines")) == 403
    assert opens(h, "pia", ivo) == 200  # the other course is untouched
    # and for a participant named in esker.yaml (reached through the share the service made at its start):
    # dropped at run time, out at once (a role naming her would have kept her open until a restart)
    hub.spawn("sam", {"profile": "minimal"})
    assert opens(h, "sam", ivo) == 200
    r = svc(h, "PATCH", "/courses/stats", ivo, json={"participants": ["pia"]})
    assert r.status_code == 200, r.text
    assert opens(h, "sam", h.hub.login_token("ivo")) == 403

    # ---- an admin drops the instructor: her shares go
    r = svc(h, "PATCH", "/courses/lab", json={"instructors": ["ivo"]})
    assert r.status_code == 200, r.text
    assert shared_with(h, "ines", ines) == set() and shared_with(h, "ivo", ivo) == {"pia", "outsider"}

    assert h.proc.pid == hub_pid and h.proc.poll() is None  # all of it without a hub restart
    for u in ("pat", "pia", "sam"):
        hub.stop(u)
