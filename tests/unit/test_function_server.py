"""The function server (esker_client.functions.serve), for real: uvicorn in a subprocess on loopback, worker
processes, a directory with the bucket's layout, and a loopback hub answering /hub/api/user for tokens."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.unit.fnserver_fixtures import CLIENT_SRC, SCOPE, FakeHub, Server, auth, publish, set_aliases

CODE = '''
import os, time
if os.environ.get("IMPORT_LOG"):  # who imported this code: it must never be the server process
    with open(os.environ["IMPORT_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
from typing import Optional
from pydantic import BaseModel

class Point(BaseModel):
    x: float
    y: float

def run(a: int, b: int = 1, mode: str = "add", seconds: float = 0.0, point: Optional[Point] = None,
        path: str = ""):
    if mode == "raise":
        raise ValueError(f"a must not be {a}")
    if mode == "sleep":
        if path:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        start = time.time()
        time.sleep(seconds)
        return {"pid": os.getpid(), "start": start, "end": time.time()}
    if mode == "exit":
        os._exit(3)
    if mode == "notjson":
        return {1, 2}
    if mode == "env":
        return sorted(k for k in os.environ if k.startswith("JUPYTERHUB_API") or k == "JPY_API_TOKEN")
    if mode == "print":
        print("noise on stdout")
    return {"sum": a + b, "point": point.model_dump() if point else None, "version": VERSION, "pid": os.getpid()}
'''
A, B, C = "a1b2c3d4e5f60001", "b1b2c3d4e5f60002", "c1b2c3d4e5f60003"


def wait_for(check, timeout=30.0, every=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    h.add("alice-token", "alice", [SCOPE, "self"])
    h.add("bob-token", "bob", [SCOPE])  # a share to bob
    h.add("carol-token", "carol", ["self"])  # no share
    h.add("svc-token", "esker-functions", [], kind="service")
    yield h
    h.close()


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket")
    publish(root, "demo", A, CODE + 'VERSION = "A"\n', "run", semver="1.0.0", concurrency=2)
    publish(root, "demo", B, CODE + 'VERSION = "B"\n', "run", semver="1.1.0", concurrency=2)
    publish(root, "demo", C, CODE + 'VERSION = "C"\n', "run", semver="2.0.0", concurrency=1, timeout=1.5)
    set_aliases(root, "demo", {"latest": B, "1.0.0": A, "1.0": A, "1.1.0": B, "1.1": B, "1": B, "2.0.0": C,
                               "2.0": C, "2": C})
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub, bucket):
    tmp = tmp_path_factory.mktemp("srv")
    s = Server(tmp, hub, f"dir:{bucket}", IMPORT_LOG=str(tmp / "imports")).start()
    yield s
    s.stop()


def post(server, path="", token="alice-token", **kw):
    return requests.post(server.url + path, headers=auth(token), timeout=30, **kw)


def get(server, path, token="alice-token", **kw):
    return requests.get(server.url + path, headers=auth(token), timeout=30, **kw)


# --- authentication ---------------------------------------------------------------------------------------

def test_no_token_invalid_token_and_token_in_the_url_are_401(server):
    assert requests.post(server.url, json={"a": 1}, timeout=10).status_code == 401
    assert post(server, token="forged", json={"a": 1}).status_code == 401
    r = requests.get(server.url + "api?token=alice-token", timeout=10)  # URLs leak into logs: not accepted
    assert r.status_code == 401 and r.json()["error"]["type"] == "Unauthorized"
    r = requests.post(server.url, json={"a": 1}, headers={"Authorization": "Bearer alice-token"}, timeout=10)
    assert r.status_code == 200


def test_a_user_without_the_scope_gets_403_everywhere(server):
    for method, path in [("post", ""), ("post", f"v/{A}"), ("post", "async"), ("get", "api"),
                         ("get", "openapi.json"), ("get", "stats"), ("get", "tasks/x"), ("post", "reload")]:
        r = requests.request(method, server.url + path, headers=auth("carol-token"), json={"a": 1}, timeout=10)
        assert r.status_code == 403, (method, path, r.text)
        assert "carol" in r.json()["error"]["message"]


def test_a_revoked_share_stops_working_after_the_auth_cache(server, hub):
    hub.add("dave-token", "dave", [SCOPE])
    assert post(server, token="dave-token", json={"a": 1}).status_code == 200
    hub.add("dave-token", "dave", [])  # the share revoked: the hub no longer grants the scope
    assert wait_for(lambda: post(server, token="dave-token", json={"a": 1}).status_code == 403, timeout=15)
    del hub.tokens["dave-token"]  # the token itself revoked
    assert wait_for(lambda: post(server, token="dave-token", json={"a": 1}).status_code == 401, timeout=15)


# --- calls ------------------------------------------------------------------------------------------------

def test_call_answers_the_result_with_version_headers(server):
    r = post(server, json={"a": 2, "b": 3, "point": {"x": 1, "y": 2}})
    assert r.status_code == 200, r.text
    assert r.json()["sum"] == 5 and r.json()["point"] == {"x": 1.0, "y": 2.0} and r.json()["version"] == "B"
    assert r.headers["X-Esker-Version"] == B and float(r.headers["X-Esker-Duration-Ms"]) >= 0
    assert post(server, token="bob-token", json={"a": 1}).json()["sum"] == 2  # shared: bob may call


def test_prints_do_not_corrupt_the_protocol(server):
    r = post(server, json={"a": 1, "mode": "print"})
    assert r.status_code == 200 and r.json()["sum"] == 2


@pytest.mark.parametrize("body,loc", [({"a": "not a number"}, ["a"]), ({}, ["a"]), ({"a": 1, "zzz": 2}, ["zzz"]),
                                      ({"a": 1, "point": {"x": 1}}, ["point", "y"])])
def test_bad_arguments_are_422_naming_the_field(server, body, loc):
    r = post(server, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "ValidationError" and loc in [f["loc"] for f in err["fields"]]
    assert ".".join(map(str, loc)) in err["message"]


def test_a_body_that_is_not_an_object_or_not_json(server):
    assert post(server, json=[1, 2]).status_code == 422
    r = requests.post(server.url, data=b"{nope", headers={**auth("alice-token"), "Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]


def test_the_function_raising_is_500_with_its_type_and_message_and_the_server_still_serves(server):
    r = post(server, json={"a": 7, "mode": "raise"})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "ValueError" and err["message"] == "a must not be 7"
    assert all("code.py" in line for line in err["traceback"]) and err["traceback"]
    assert "esker_client" not in r.text and "worker.py" not in r.text  # no platform frames
    assert post(server, json={"a": 1}).status_code == 200


def test_a_result_that_is_not_json_names_its_type(server):
    r = post(server, json={"a": 1, "mode": "notjson"})
    assert r.status_code == 500 and "set" in r.json()["error"]["message"]


def test_workers_do_not_get_the_servers_hub_token(server):
    r = post(server, json={"a": 1, "mode": "env"})
    assert r.status_code == 200 and r.json() == ["JUPYTERHUB_API_URL"]  # the hub's URL is kept, its token is not


def test_a_worker_that_exits_is_500_and_replaced(server):
    r = post(server, json={"a": 1, "mode": "exit"})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "WorkerExited" and "exit status 3" in r.json()["error"]["message"]
    assert post(server, json={"a": 1}).status_code == 200


def test_a_call_past_its_timeout_is_504_the_worker_is_killed_and_the_next_call_works(server, tmp_path):
    pidfile = tmp_path / "pid"
    r = post(server, f"v/{C}", json={"a": 1, "mode": "sleep", "seconds": 30, "path": str(pidfile)})
    assert r.status_code == 504 and r.json()["error"]["type"] == "Timeout"
    pid = int(pidfile.read_text())

    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    assert wait_for(gone, timeout=10), "the timed-out worker is still running"
    r = post(server, f"v/{C}", json={"a": 1})
    assert r.status_code == 200 and r.json()["version"] == "C" and r.json()["pid"] != pid


def test_at_most_concurrency_calls_run_at_once(server):
    results = []

    def one():
        results.append(post(server, f"v/{A}", json={"a": 1, "mode": "sleep", "seconds": 1.0}))
    threads = [threading.Thread(target=one) for _ in range(3)]  # concurrency 2, queue 1: all three admitted
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 3, [r.text for r in results]
    spans = [(r.json()["start"], r.json()["end"]) for r in results]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2, spans  # two at once, never three
    assert len({r.json()["pid"] for r in results}) == 2  # two worker processes, reused


def test_callers_beyond_the_queue_get_429(server):
    # version C: concurrency 1, queue 1. One call runs, one waits, the third is refused.
    def slow():
        post(server, f"v/{C}", json={"a": 1, "mode": "sleep", "seconds": 1.2})
    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: get(server, "stats").json()["versions"].get(C, {}).get("in_flight") == 2)
    r = post(server, f"v/{C}", json={"a": 1})
    for t in threads:
        t.join()
    assert r.status_code == 429 and r.json()["error"]["type"] == "TooManyRequests"
    assert post(server, f"v/{C}", json={"a": 1}).status_code == 200


def test_only_workers_import_the_functions_code(server):
    assert post(server, f"v/{B}", json={"a": 1}).status_code == 200
    pids = {int(p) for p in (server.home.parent / "imports").read_text().split()}
    assert pids and server.proc.pid not in pids


def test_the_client_package_imports_nothing_of_the_hub():
    import ast
    for path in (CLIENT_SRC / "esker_client" / "functions").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not [n for n in names if n == "esker" or n.startswith("esker.")], path


# --- versions ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref,version", [("latest", "B"), ("1.0.0", "A"), ("1.0", "A"), ("1", "B"),
                                         ("2", "C"), (A, "A"), (A[:6], "A"), (B[:8], "B")])
def test_alias_resolution(server, ref, version):
    r = post(server, f"v/{ref}", json={"a": 1})
    assert r.status_code == 200 and r.json()["version"] == version


@pytest.mark.parametrize("ref", ["9.9.9", "a1b2c", "ffffffffffffffff", "..%2f..%2fetc", "b1b2c3d4e5f6000"[:5]])
def test_unknown_versions_are_404(server, ref):
    r = post(server, f"v/{ref}", json={"a": 1})
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"


def test_a_rollback_takes_effect_within_seconds_and_reload_is_the_owners(server, bucket):
    try:
        set_aliases(bucket, "demo", {**json.loads((bucket / ".esker/functions/demo/aliases.json").read_text()),
                                     "latest": A})
        assert wait_for(lambda: post(server, json={"a": 1}).json()["version"] == "A", timeout=10)
        assert post(server, "reload", token="bob-token").status_code == 403
        r = post(server, "reload")
        assert r.status_code == 200 and r.json()["aliases"]["latest"] == A
    finally:
        set_aliases(bucket, "demo", {**json.loads((bucket / ".esker/functions/demo/aliases.json").read_text()),
                                     "latest": B})
        post(server, "reload")
    assert post(server, json={"a": 1}).json()["version"] == "B"


def test_readiness_lists_the_versions(server):
    r = get(server, "api")
    assert r.status_code == 200 and r.json()["function"] == "demo" and set(r.json()["versions"]) == {A, B, C}


def test_openapi_from_the_type_hints(server):
    r = get(server, "openapi.json", params={"version": "1.0"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["x-esker-version"] == A
    assert doc["info"]["version"] == "1.0.0"
    body = doc["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) >= {"a", "b", "point"} and body["required"] == ["a"]
    assert body["properties"]["a"]["type"] == "integer"
    assert "Point" in doc["components"]["schemas"] and "#/components/schemas/Point" in json.dumps(body)
    assert "$defs" not in json.dumps(doc)
    assert get(server, "openapi.json", params={"version": "nope"}).status_code == 404


# --- async ------------------------------------------------------------------------------------------------

def test_async_submit_status_result_and_visibility(server):
    r = post(server, "async", token="bob-token", json={"a": 40, "b": 2})
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["status"] == "queued" and len(task["task"]) >= 32 and task["url"].endswith(task["task"])
    url = f"tasks/{task['task']}"
    done = wait_for(lambda: get(server, url, token="bob-token").json()["status"] == "done")
    assert done
    t = get(server, url, token="bob-token").json()
    assert t["result"]["sum"] == 42 and t["version"] == B
    assert get(server, url, token="alice-token").status_code == 200  # the owner sees every task
    for token, code in [("carol-token", 403), ("svc-token", 403), ("eve-token", 401)]:
        assert get(server, url, token=token).status_code == code


def test_another_caller_with_access_cannot_see_a_task(server, hub):
    hub.add("erin-token", "erin", [SCOPE])
    tid = post(server, "async", token="bob-token", json={"a": 1}).json()["task"]
    r = get(server, f"tasks/{tid}", token="erin-token")
    assert r.status_code == 404  # not 403: does not even say the task exists
    assert requests.delete(server.url + f"tasks/{tid}", headers=auth("erin-token"), timeout=10).status_code == 404


def test_async_errors_are_recorded(server):
    tid = post(server, "async/v/1.0", json={"a": 3, "mode": "raise"}).json()["task"]
    assert wait_for(lambda: get(server, f"tasks/{tid}").json()["status"] == "failed")
    err = get(server, f"tasks/{tid}").json()["error"]
    assert err["type"] == "ValueError" and err["message"] == "a must not be 3"


def test_cancel_a_running_task_kills_its_worker(server, tmp_path):
    pidfile = tmp_path / "pid"
    tid = post(server, f"async/v/{A}", json={"a": 1, "mode": "sleep", "seconds": 60, "path": str(pidfile)}).json()["task"]
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text())
    assert get(server, f"tasks/{tid}").json()["status"] == "running"
    pid = int(pidfile.read_text())
    r = requests.delete(server.url + f"tasks/{tid}", headers=auth("alice-token"), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"

    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    assert wait_for(gone, timeout=10)
    assert get(server, f"tasks/{tid}").json()["status"] == "cancelled"
    assert post(server, f"v/{A}", json={"a": 1}).status_code == 200


def test_tasks_survive_a_restart_and_unfinished_ones_fail_clearly(tmp_path, hub, bucket):
    s = Server(tmp_path, hub, f"dir:{bucket}").start()
    try:
        done = post(s, "async", json={"a": 1}).json()["task"]
        assert wait_for(lambda: get(s, f"tasks/{done}").json()["status"] == "done")
        running = post(s, "async", json={"a": 1, "mode": "sleep", "seconds": 60}).json()["task"]
        assert wait_for(lambda: get(s, f"tasks/{running}").json()["status"] == "running")
        db = s.home / ".esker" / "functions" / "demo.tasks.sqlite"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
        s.stop()  # a clean stop (SIGTERM) fails the unfinished task itself
        shutil.rmtree(s.scratch)  # the spawner releases scratch at every stop: results must not live there
        s.start()
        assert get(s, f"tasks/{done}").json()["result"]["sum"] == 2
        t = get(s, f"tasks/{running}").json()
        assert t["status"] == "failed" and t["error"]["type"] == "ServerRestarted"
        crashed = post(s, "async", json={"a": 1, "mode": "sleep", "seconds": 60, "path": str(tmp_path / "pid")}).json()["task"]
        assert wait_for(lambda: get(s, f"tasks/{crashed}").json()["status"] == "running")
        s.proc.kill()  # a crash: nothing runs at exit, the next start fails the task
        s.proc.wait()
        s.stop()
        worker = int((tmp_path / "pid").read_text())
        assert wait_for(lambda: not os.path.exists(f"/proc/{worker}"), timeout=10), "worker outlived its server"
        s.start()
        t = get(s, f"tasks/{crashed}").json()
        assert t["status"] == "failed" and t["error"]["type"] == "ServerRestarted"
        assert get(s, f"tasks/{done}").json()["status"] == "done"
    finally:
        s.stop()


def test_a_busy_server_reports_activity_and_an_idle_one_does_not(tmp_path, hub, bucket):
    s = Server(tmp_path, hub, f"dir:{bucket}", JUPYTERHUB_API_TOKEN="busy-servers-token").start()
    try:
        time.sleep(1.5)  # idle: three report periods pass without a report
        assert not [a for a in hub.activity if a[1] == "token busy-servers-token"]
        tid = post(s, "async", json={"a": 1, "mode": "sleep", "seconds": 3}).json()["task"]
        assert wait_for(lambda: get(s, f"tasks/{tid}").json()["status"] == "done", timeout=20)
        mine = [a for a in hub.activity if a[1] == "token busy-servers-token"]
        assert mine, "no activity reported during a 3 s task"
        path, _, body = mine[-1]
        assert path == "/hub/api/users/alice/activity" and set(body["servers"]) == {"fn-demo"}
        n = len(mine)
        time.sleep(1.5)  # idle again: no more reports
        assert len([a for a in hub.activity if a[1] == "token busy-servers-token"]) == n
    finally:
        s.stop()


def test_expired_results_are_purged(tmp_path, hub, bucket):
    s = Server(tmp_path, hub, f"dir:{bucket}", ESKER_FUNCTION_RESULT_TTL="1").start()
    try:
        tid = post(s, "async", json={"a": 1}).json()["task"]
        assert wait_for(lambda: get(s, f"tasks/{tid}").status_code == 404, timeout=15)
    finally:
        s.stop()


# --- stats and logs ---------------------------------------------------------------------------------------

def test_stats_for_the_owner_and_the_functions_service_only(server):
    before = get(server, "stats").json()["versions"].get(B, {"calls": 0, "errors": 0})
    post(server, json={"a": 1})
    post(server, json={"a": "x"})
    r = get(server, "stats", token="svc-token")
    assert r.status_code == 200
    st = r.json()
    assert st["function"] == "demo" and st["started"].endswith("Z")
    v = st["versions"][B]
    assert v["calls"] == before["calls"] + 2 and v["errors"] == before["errors"] + 1
    b = v["latency_buckets"]
    assert list(b) == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
                       "+Inf"]
    assert b["+Inf"] == v["calls"] and all(x <= y for x, y in zip(list(b.values()), list(b.values())[1:]))
    assert v["latency_sum"] > 0
    assert get(server, "stats", token="bob-token").status_code == 403  # a share does not show the counters


def test_stats_count_timeouts(server):
    before = get(server, "stats").json()["versions"].get(C, {"timeouts": 0})["timeouts"]
    assert post(server, f"v/{C}", json={"a": 1, "mode": "sleep", "seconds": 10}).status_code == 504
    v = get(server, "stats").json()["versions"][C]
    assert v["timeouts"] == before + 1 and v["errors"] >= v["timeouts"]


def test_one_log_line_per_call_in_a_private_file_without_tokens(server):
    post(server, token="bob-token", json={"a": 123456789})
    path = server.home / ".esker" / "functions" / "demo.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert f"user:bob {B} call 200" in text
    for secret in ("bob-token", "alice-token", "the-servers-own-token", "123456789"):
        assert secret not in text and secret not in server.log()


# --- startup ----------------------------------------------------------------------------------------------

def startup(tmp_path, hub, **env):
    s = Server(tmp_path, hub, env.pop("source", f"dir:{tmp_path}"), **env)
    p = subprocess.run([sys.executable, "-m", "esker_client.functions.serve"], env=s.env, capture_output=True,
                       text=True, timeout=60)
    return p.returncode, p.stderr.strip().splitlines()


def test_startup_errors_are_one_line(tmp_path, hub):
    rc, lines = startup(tmp_path, hub)
    assert rc == 2 and len(lines) == 1 and "no published versions" in lines[0]
    rc, lines = startup(tmp_path, hub, ESKER_FUNCTION="")
    assert rc == 2 and "ESKER_FUNCTION is not set" in lines[0]
    rc, lines = startup(tmp_path, hub, ESKER_FUNCTION="../etc")
    assert rc == 2 and "not a function name" in lines[0]
    rc, lines = startup(tmp_path, hub, source="")
    assert rc == 2 and "ESKER_BUCKET" in lines[0]
    rc, lines = startup(tmp_path, hub, ESKER_FUNCTION_QUEUE="many")
    assert rc == 2 and "ESKER_FUNCTION_QUEUE" in lines[0]


def test_help_describes_the_environment():
    p = subprocess.run([sys.executable, "-m", "esker_client.functions.serve", "--help"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(CLIENT_SRC)}, timeout=60)
    assert p.returncode == 0 and "ESKER_FUNCTION_AUTH_CACHE" in p.stdout and "JUPYTERHUB_SERVICE_URL" in p.stdout


def test_a_broken_publish_answers_500_and_other_versions_still_serve(tmp_path, hub):
    root = tmp_path / "b"
    publish(root, "demo", A, "raise RuntimeError('broken at import')\n", "run")
    publish(root, "demo", B, "def run(): return 1\n", "run")
    set_aliases(root, "demo", {"latest": B, "1": A})
    s = Server(tmp_path, hub, f"dir:{root}").start()
    try:
        r = post(s, "v/1", json={})
        assert r.status_code == 500 and "broken at import" in r.json()["error"]["message"]
        assert post(s, json={}).json() == 1
    finally:
        s.stop()
