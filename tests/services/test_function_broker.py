"""The functions' task broker on a real redis-server (Debian's, on loopback, with an ACL file as the chart runs
it): the hub's admin makes a function's user, the function server keeps its tasks there, and a hostile
function's user can reach nothing of another's (docs/functions.md, "Async calls")."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import redis
import requests

from esker.core import broker as names
from esker.functions.broker import BrokerAdmin
from esker_client.functions.tasks import RESTARTED, RedisTasks, TaskStoreError, connect
from tests.unit.fnserver_fixtures import FakeHub, Server, auth, publish, set_aliases

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server (scripts/install-system.sh broker)")
ADMIN_PW = "a" * 8 + "-admin-password-for-the-test-only-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, d):
        self.dir, self.port = d, free_port()
        (d / "users.acl").write_text(f"user default off\nuser esker-hub on >{ADMIN_PW} ~* &* +@all\n")
        (d / "redis.conf").write_text(
            f"bind 127.0.0.1\nport {self.port}\nprotected-mode yes\ndir {d}\naclfile {d / 'users.acl'}\n"
            "appendonly yes\nsave \"\"\n")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", str(self.dir / "redis.conf")], stdout=open(self.dir / "redis.log", "ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, username="esker-hub", password=ADMIN_PW).ping()
                return self
            except redis.ConnectionError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "redis-server did not start"
                time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture
def broker(tmp_path):
    r = Redis(tmp_path).start()
    try:
        yield r
    finally:
        r.stop()


def as_user(grant) -> redis.Redis:
    return redis.Redis.from_url(grant["url"], username=grant["user"], password=grant["password"])


def test_a_function_user_reaches_its_own_keys_only(broker):
    admin = BrokerAdmin(broker.url, "esker-hub", ADMIN_PW)
    alice, bob = admin.grant("alice", "predict"), admin.grant("bob", "predict")
    assert alice["prefix"] != bob["prefix"] and alice["user"] != bob["user"]
    tasks = RedisTasks(connect(alice), alice["prefix"], ttl=60)
    tid = tasks.create("user:alice", "0123456789abcdef")
    tasks.running(tid)
    tasks.finish(tid, "done", result={"secret": "alice-marker"})
    assert tasks.get(tid)["result"] == {"secret": "alice-marker"}
    key = f"{alice['prefix']}task:{tid}"

    b = as_user(bob)
    attempts = {
        "read alice's task": lambda: b.hgetall(key),
        "overwrite it": lambda: b.hset(key, "status", "failed"),
        "delete it": lambda: b.delete(key),
        "list keys": lambda: b.keys("*"),
        "scan keys": lambda: b.scan(0),
        "a random key": lambda: b.randomkey(),
        "read the ACL": lambda: b.execute_command("ACL", "LIST"),
        "make a user": lambda: b.execute_command("ACL", "SETUSER", "x", "on", ">x", "+@all", "~*"),
        "read the config": lambda: b.config_get("*"),
        "list clients": lambda: b.client_list(),
        "kill clients": lambda: b.execute_command("CLIENT", "KILL", "TYPE", "normal"),
        "flush everything": lambda: b.flushall(),
        "run a script": lambda: b.eval("return redis.call('HGETALL', KEYS[1])", 1, key),
        "publish to a channel": lambda: b.publish("x", "y"),
        "monitor": lambda: b.execute_command("MONITOR"),
        "copy alice's key to his": lambda: b.copy(key, bob["prefix"] + "stolen"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
            pytest.fail(f"bob could {what}")
    assert tasks.get(tid)["result"] == {"secret": "alice-marker"}  # untouched

    # her user gone at stop: its connection is closed and the password no longer works
    admin.revoke("alice", "predict")
    with pytest.raises(TaskStoreError):
        tasks.get(tid)
    with pytest.raises(TaskStoreError):
        connect(alice)
    # the next start's user reads the result again (results outlive a cull), with a new password
    again = admin.grant("alice", "predict")
    assert again["password"] != alice["password"]
    assert RedisTasks(connect(again), again["prefix"], ttl=60).get(tid)["status"] == "done"
    assert admin.forget("alice", "predict") >= 1  # `esker fn delete`
    assert RedisTasks(connect(again), again["prefix"], ttl=60).get(tid) is None


def test_users_and_results_survive_a_broker_restart_and_unfinished_tasks_fail(broker):
    admin = BrokerAdmin(broker.url, "esker-hub", ADMIN_PW)
    g = admin.grant("carol", "train")
    t = RedisTasks(connect(g), g["prefix"], ttl=60)
    done, live = t.create("user:carol", "v" * 16), t.create("user:carol", "v" * 16)
    t.finish(done, "done", result=[1, 2, 3])
    t.running(live)
    t.close()
    broker.stop()
    broker.start()  # the ACL file (ACL SAVE) and the append-only file bring back user and keys
    assert names.acl_user("carol", "train") in admin.users()
    t = RedisTasks(connect(g), g["prefix"], ttl=60)  # a restarted server fails what was in flight
    assert t.get(done)["result"] == [1, 2, 3]
    assert t.get(live)["status"] == "failed" and t.get(live)["error"] == RESTARTED
    assert t.get("not-an-id") is None and t.get("../" * 10) is None


def test_finished_tasks_expire_after_the_ttl(broker):
    g = BrokerAdmin(broker.url, "esker-hub", ADMIN_PW).grant("dave", "quick")
    t = RedisTasks(connect(g), g["prefix"], ttl=0.3)
    tid = t.create("user:dave", "v" * 16)
    t.finish(tid, "failed", error={"type": "X", "message": "y"})
    assert t.get(tid)["error"] == {"type": "X", "message": "y"}
    time.sleep(0.6)
    assert t.get(tid) is None


def test_the_function_server_keeps_async_tasks_in_the_broker(broker, tmp_path):
    admin = BrokerAdmin(broker.url, "esker-hub", ADMIN_PW)
    g = admin.grant("alice", "demo")
    hub = FakeHub()
    hub.add("alice-token", "alice", ["access:servers!server=alice/fn-demo"])
    root = tmp_path / "bucket"
    vid = "0123456789abcdef"
    publish(root, "demo", vid, "import time\n\ndef slow(n: int) -> int:\n    time.sleep(n)\n    return n * 2\n", "slow")
    set_aliases(root, "demo", {"latest": vid})
    env = {"ESKER_FUNCTION_BROKER_URL": g["url"], "ESKER_FUNCTION_BROKER_USER": g["user"],
           "ESKER_FUNCTION_BROKER_PASSWORD": g["password"], "ESKER_FUNCTION_BROKER_PREFIX": g["prefix"]}
    s = Server(tmp_path, hub, f"dir:{root}", **env).start()
    try:
        r = requests.post(s.url + "async", json={"n": 0}, headers=auth("alice-token"), timeout=30)
        assert r.status_code == 202, r.text
        tid = r.json()["task"]
        deadline = time.monotonic() + 30
        while (t := requests.get(s.url + f"tasks/{tid}", headers=auth("alice-token"), timeout=30).json())[
                "status"] != "done":
            assert time.monotonic() < deadline, t
            time.sleep(0.1)
        assert t["result"] == 0
        admin_r = redis.Redis.from_url(broker.url, username="esker-hub", password=ADMIN_PW)
        assert admin_r.hget(f"{g['prefix']}task:{tid}", "status") == b"done"  # in Redis, not in SQLite
        assert not (s.home / ".esker" / "functions" / "demo.tasks.sqlite").exists()
        # the broker away: a clear 503, and the server is fine once it is back
        broker.stop()
        r = requests.post(s.url + "async", json={"n": 0}, headers=auth("alice-token"), timeout=30)
        assert r.status_code == 503 and r.json()["error"]["type"] == "BrokerUnavailable", r.text
        assert r.headers.get("Retry-After")
        broker.start()
        r = requests.post(s.url + "async", json={"n": 0}, headers=auth("alice-token"), timeout=30)
        assert r.status_code == 202, r.text
    finally:
        s.stop()
        hub.close()
    # a revoked user cannot start a server: it exits with status 2 and says why
    admin.revoke("alice", "demo")
    s2 = Server(tmp_path, FakeHub(), f"dir:{root}", **env)
    with pytest.raises(RuntimeError, match="task broker"):
        s2.start()


def test_the_charts_redis_config_and_acl_seed_run_on_a_real_redis(tmp_path):
    """templates/functions-broker.yaml's redis.conf and seed-acl.sh, run here (paths and port moved to the test's):
    the seeded admin manages users, ACL SAVE keeps them, and a re-seed (a pod restart) keeps them too."""
    from tests.kubernetes.test_chart import by, render

    (cm,) = by(render(), "ConfigMap", "esker-functions-broker")
    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    conf = cm["data"]["redis.conf"].replace("/data", str(data)).replace("port 6379", f"port {port}\nbind 127.0.0.1")
    (tmp_path / "redis.conf").write_text(conf)
    seed = tmp_path / "seed-acl.sh"
    seed.write_text(cm["data"]["seed-acl.sh"].replace("/data", str(data)))

    def run_seed():
        subprocess.run(["sh", str(seed)], env={"ESKER_ADMIN_PASSWORD": ADMIN_PW, "PATH": "/usr/bin:/bin"}, check=True)

    def start():
        p = subprocess.Popen(["redis-server", str(tmp_path / "redis.conf")], stdout=open(tmp_path / "log", "ab"),
                             stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port, username="esker-hub", password=ADMIN_PW).ping()
                return p
            except redis.ConnectionError:
                assert time.monotonic() < deadline and p.poll() is None, (tmp_path / "log").read_text()
                time.sleep(0.05)

    run_seed()
    assert oct((data / "users.acl").stat().st_mode & 0o777) == "0o600"
    p = start()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()  # default is off: no anonymous client
        g = BrokerAdmin(url, "esker-hub", ADMIN_PW).grant("alice", "predict")
        tid = RedisTasks(connect(g), g["prefix"], 60).create("user:alice", "v" * 16)
    finally:
        p.terminate()
        p.wait(20)
    run_seed()  # the pod's next start
    p = start()
    try:
        assert RedisTasks(connect(g), g["prefix"], 60).get(tid)["status"] == "failed"  # restarted: in flight failed
        assert (data / "users.acl").read_text().count("user esker-hub ") == 1
    finally:
        p.terminate()
        p.wait(20)
