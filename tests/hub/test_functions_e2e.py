"""Functions end to end on the session's real hub (real proxy, real Ceph, the real function server): alice
publishes from a module and from a notebook inside her own server with `esker fn publish`; calls with her
token answer, bob's do not until she shares (and again not after she revokes), no token is 401; an async call
returns its result; a stopped function is started by a call; pinned aliases and a rollback; a function of the
Spark profile reads alice's bucket with Spark from the injected environment (docs/functions.md)."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
import requests

from conftest import needs_root
from esker.hubapi import run_code

pytestmark = [pytest.mark.integration, needs_root]

SVC = "/services/esker-functions"
DEMO = Path(__file__).resolve().parents[2] / "notebooks" / "demo" / "functions-predict.ipynb"

ADD_V1 = '''
from esker_client import function


@function(timeout=20, concurrency=2)
def add(a: int, b: int) -> dict:
    return {"sum": a + b, "code": "v1"}
'''
ADD_V2 = ADD_V1.replace('"v1"', '"v2"')


def call(running_hub, path, token=None, method="POST", **kw):
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.request(method, f"{running_hub.url}{SVC}{path}", headers=headers, timeout=300, **kw)


def in_server(running_hub, hub, user, code):
    out = run_code(f"{running_hub.url}/user/{user}/", hub.user_token(user), code, timeout=600)
    assert out["error"] is None, (out["error"], out["stderr"][-3000:], out["stdout"][-3000:])
    return out["stdout"]


def sh(command: str) -> str:
    """Kernel code that runs a shell command in the server (as its user) and fails the cell if it fails."""
    return (f"import subprocess\np = subprocess.run({command!r}, shell=True, capture_output=True, text=True)\n"
            "print(p.stdout)\nassert p.returncode == 0, p.stdout + p.stderr\n")


def publish_module(running_hub, hub, user, code, *args):
    write = f"open('addfn.py', 'w').write({code!r})\n"
    return in_server(running_hub, hub, user, write + sh("esker fn publish addfn.py " + " ".join(map(shlex.quote, args))))


def fn_model(hub, user, name):
    return (hub.request("GET", f"/users/{user}").json().get("servers") or {}).get(f"fn-{name}")


@pytest.fixture(scope="module")
def alice(running_hub, hub):
    """fn-alice with a minimal notebook server, and the module function `add` published from it as 1.0.0."""
    hub.ensure_user("fn-alice")
    hub.ensure_user("fn-bob")
    hub.spawn("fn-alice", {"profile": "minimal"})
    try:
        publish_module(running_hub, hub, "fn-alice", ADD_V1, "--name", "add", "--version", "1.0.0")
        yield hub.login_token("fn-alice")
    finally:
        for server in ("fn-add", "fn-iris"):
            hub.request("DELETE", f"/users/fn-alice/servers/{server}", json={"remove": True})
        hub.stop("fn-alice")


def test_owner_calls_her_module_function_and_strangers_are_refused(running_hub, hub, alice):
    r = call(running_hub, "/call/fn-alice/add", alice, json={"a": 2, "b": 3})
    assert r.status_code == 200, r.text
    assert r.json() == {"sum": 5, "code": "v1"} and r.headers.get("X-Esker-Version")
    assert call(running_hub, "/call/fn-alice/add", json={"a": 1, "b": 1}).status_code == 401
    bad = call(running_hub, "/call/fn-alice/add", alice, json={"a": "two", "b": 3})
    assert bad.status_code == 422 and "a" in json.dumps(bad.json()["error"]), bad.text


def test_a_share_opens_the_function_and_its_revocation_closes_it(running_hub, hub, alice):
    bob = hub.login_token("fn-bob")
    r = call(running_hub, "/call/fn-alice/add", bob, json={"a": 1, "b": 2})
    assert r.status_code == 403, r.text
    in_server(running_hub, hub, "fn-alice", sh("esker fn share add --user fn-bob"))
    bob = hub.login_token("fn-bob")  # a fresh login carries the share's scope
    deadline = time.monotonic() + 30
    while (r := call(running_hub, "/call/fn-alice/add", bob, json={"a": 1, "b": 2})).status_code == 403:
        assert time.monotonic() < deadline, r.text
        time.sleep(1)
    assert r.status_code == 200 and r.json()["sum"] == 3, r.text
    in_server(running_hub, hub, "fn-alice", sh("esker fn share add --user fn-bob --revoke"))
    deadline = time.monotonic() + 30  # the function server's token cache is a few seconds
    while (r := call(running_hub, "/call/fn-alice/add", bob, json={"a": 1, "b": 2})).status_code == 200:
        assert time.monotonic() < deadline, "the revoked share still works"
        time.sleep(1)
    assert r.status_code == 403, r.text


def test_an_async_call_returns_its_result(running_hub, hub, alice):
    r = call(running_hub, "/call/fn-alice/add/async", alice, json={"a": 20, "b": 22})
    assert r.status_code == 202, r.text
    task = r.json()["task"]
    deadline = time.monotonic() + 60
    while (s := call(running_hub, f"/call/fn-alice/add/tasks/{task}", alice, method="GET").json())["status"] in (
            "queued", "running"):
        assert time.monotonic() < deadline, s
        time.sleep(0.2)
    assert s["status"] == "done" and s["result"] == {"sum": 42, "code": "v1"}, s
    bob = hub.login_token("fn-bob")  # another caller never sees alice's task
    assert call(running_hub, f"/call/fn-alice/add/tasks/{task}", bob, method="GET").status_code in (403, 404)


def test_a_stopped_function_is_started_by_a_call(running_hub, hub, alice):
    r = hub.request("DELETE", "/users/fn-alice/servers/fn-add")
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 60
    while fn_model(hub, "fn-alice", "add"):
        assert time.monotonic() < deadline, "fn-add did not stop"
        time.sleep(0.3)
    r = call(running_hub, "/call/fn-alice/add", alice, json={"a": 5, "b": 6})
    assert r.status_code == 200 and r.json()["sum"] == 11, r.text
    assert float(r.headers["X-Esker-Cold-Start-Seconds"]) > 0
    assert fn_model(hub, "fn-alice", "add")["ready"]


def test_pinned_versions_floating_aliases_and_a_rollback(running_hub, hub, alice):
    publish_module(running_hub, hub, "fn-alice", ADD_V2, "--name", "add", "--version", "1.1.0")
    body = {"a": 1, "b": 1}
    assert call(running_hub, "/call/fn-alice/add", alice, json=body).json()["code"] == "v2"
    assert call(running_hub, "/call/fn-alice/add/v/1.0.0", alice, json=body).json()["code"] == "v1"
    assert call(running_hub, "/call/fn-alice/add/v/1", alice, json=body).json()["code"] == "v2"
    # 1.0.0 is pinned: publishing other code as 1.0.0 is refused and changes nothing
    out = run_code(f"{running_hub.url}/user/fn-alice/", hub.user_token("fn-alice"),
                   f"open('addfn.py', 'w').write({ADD_V2.replace('v2', 'v3')!r})\n"
                   + sh("esker fn publish addfn.py --name add --version 1.0.0"), timeout=300)
    assert out["error"] is not None and "1.0.0" in out["stdout"] + str(out["error"])
    in_server(running_hub, hub, "fn-alice", sh("esker fn alias add latest 1.0.0"))  # the rollback
    deadline = time.monotonic() + 30
    while (r := call(running_hub, "/call/fn-alice/add", alice, json=body)).json().get("code") != "v1":
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    # an aliased version cannot be deleted
    out = run_code(f"{running_hub.url}/user/fn-alice/", hub.user_token("fn-alice"),
                   sh("esker fn delete add --version 1.0.0"), timeout=300)
    assert out["error"] is not None and "alias" in (out["stdout"] + str(out["error"])).lower()


def test_the_demo_notebook_trains_on_the_bucket_and_publishes_predict(running_hub, hub):
    user = "fn-carol"
    hub.ensure_user(user)
    hub.spawn(user, {"profile": "scikit-learn"})
    try:
        token = hub.user_token(user)
        r = requests.put(f"{running_hub.url}/user/{user}/api/contents/functions-predict.ipynb",
                         headers={"Authorization": f"token {token}"},
                         json={"type": "notebook", "content": json.loads(DEMO.read_text())}, timeout=60)
        assert r.status_code in (200, 201), r.text
        code = "\n".join(
            ("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for c in json.loads(DEMO.read_text())["cells"] if c["cell_type"] == "code")
        ipython = "from IPython import get_ipython\nget_ipython().run_cell(" + repr(code) + ").raise_error()\n"
        out = in_server(running_hub, hub, user, ipython)
        result = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("RESULT: "))[8:])
        assert result["accuracy"] > 0.9 and result["answer"]["species"] == "virginica", result
        r = call(running_hub, f"/call/{user}/iris/v/1.0", hub.login_token(user),
                 json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2})
        assert r.status_code == 200 and r.json()["species"] == "setosa", r.text
    finally:
        hub.request("DELETE", f"/users/{user}/servers/fn-iris", json={"remove": True})
        hub.stop(user)


SPARK_FN = '''
import esker_client as ec
from esker_client import function

_spark = None


@function(timeout=300, concurrency=1)
def stations(key: str) -> dict:
    """Rows and distinct stations of a CSV in the owner's bucket, counted by Spark's executors."""
    global _spark
    if _spark is None:  # one driver per worker process, kept across calls
        _spark = ec.spark_session("fn-stations")
    df = _spark.read.option("header", True).csv(f"s3a://{ec.bucket()}/{key}")
    return {"rows": df.count(), "stations": df.select("station").distinct().count(),
            "master": _spark.sparkContext.master}
'''


def test_a_spark_function_reads_the_owners_bucket_with_the_injected_environment(running_hub, hub, alice):
    rows = "station,temp\n" + "".join(f"s{i % 7},{i}\n" for i in range(500))
    put = ("import esker_client as ec\n"
           f"ec.s3_client().put_object(Bucket=ec.bucket(), Key='fn/readings.csv', Body={rows!r}.encode())\n"
           f"open('stationsfn.py', 'w').write({SPARK_FN!r})\n")
    in_server(running_hub, hub, "fn-alice",
              put + sh("esker fn publish stationsfn.py --name stations --profile spark"))
    try:
        r = call(running_hub, "/call/fn-alice/stations", alice, json={"key": "fn/readings.csv"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["rows"] == 500 and answer["stations"] == 7, answer
        assert answer["master"].startswith("spark://127.0.0.1:"), answer  # the function server's own cluster
        bob = hub.login_token("fn-bob")
        assert call(running_hub, "/call/fn-alice/stations", bob, json={"key": "fn/readings.csv"}).status_code == 403
    finally:
        hub.request("DELETE", "/users/fn-alice/servers/fn-stations", json={"remove": True})
