"""The embedded hub end to end: a real JupyterHub, configurable-http-proxy, single-user servers, and the
each Spark server's own master and worker, all on loopback. Code runs in kernels of the spawned servers."""

from __future__ import annotations

import json
import os
import re
import sqlite3

import pytest
import requests

from conftest import needs_root
from esker.devhub import RunningHub
from esker.hubapi import SpawnRefused, run_code

pytestmark = [pytest.mark.integration, needs_root]

ENV_PROBE = """
import json, os, getpass, stat
d = {k: os.environ.get(k) for k in ("SPARK_MASTER", "SCRATCH_DIR", "TMPDIR", "CUDA_VISIBLE_DEVICES",
                                    "ESKER_PROFILE", "PYSPARK_SUBMIT_ARGS", "JUPYTERHUB_API_TOKEN", "HOME")}
d["user"] = getpass.getuser()
st = os.stat(d["SCRATCH_DIR"]); d["scratch_mode"] = oct(stat.S_IMODE(st.st_mode)); d["scratch_uid"] = st.st_uid
d["home_mode"] = oct(stat.S_IMODE(os.stat(d["HOME"]).st_mode))
d["uid"] = os.getuid()
import tempfile; d["tempdir"] = tempfile.gettempdir()
print("PROBE" + json.dumps(d))
"""


def probe(server_url: str, token: str) -> dict:
    out = run_code(server_url, token, ENV_PROBE)
    assert out["error"] is None, out["error"]
    return json.loads(out["stdout"].split("PROBE", 1)[1])


def server_url(h, name: str) -> str:
    return f"{h.url}/user/{name}/"


def ledger_rows(state_dir: str) -> dict:
    with sqlite3.connect(os.path.join(state_dir, "ledger.sqlite")) as db:
        return dict(db.execute("SELECT item, owner FROM assignments WHERE kind='gpu'").fetchall())


def test_login_form_and_spawn_page(running_hub, hub):
    """A person logs in through the HTML form and sees the profiles the catalog offers them."""
    s = requests.Session()
    r = s.get(f"{running_hub.url}/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
    r = s.post(f"{running_hub.url}/hub/login?next=/hub/spawn", data={"username": "formuser", "password": "x",
                                                                     "_xsrf": xsrf})
    assert r.status_code == 200 and "/hub/spawn" in r.url
    for slug in ("spark", "tensorflow", "scikit-learn", "minimal"):
        assert f'value="{slug}"' in r.text
    assert 'name="profile-option-tensorflow--gpus"' in r.text
    assert "2 GPUs" not in r.text  # GPU choices are for gpu-users only


@pytest.mark.parametrize("profile", ["minimal", "scikit-learn", "tensorflow"])
def test_each_profile_spawns_with_its_environment(running_hub, hub, profile):
    name = f"p-{profile}"
    hub.ensure_user(name)
    try:
        model = hub.spawn(name, {"profile": profile})
        messages = [e.get("message", "") for e in model["events"]]
        assert any("Scratch ready" in m for m in messages), messages  # progress reached the user
        d = probe(server_url(running_hub, name), hub.user_token(name))
        assert d["ESKER_PROFILE"] == profile
        assert d["user"].startswith(running_hub.prefix) and d["uid"] != 0
        assert d["SCRATCH_DIR"].endswith(d["user"]) and d["scratch_mode"] == "0o700"
        assert d["home_mode"] == "0o700"
        assert d["tempdir"] == d["SCRATCH_DIR"] + "/tmp"
        assert d["CUDA_VISIBLE_DEVICES"] == ""  # no GPU asked for, none visible
        assert d["SPARK_MASTER"] is None
        if profile == "scikit-learn":
            out = run_code(server_url(running_hub, name), hub.user_token(name),
                           "import sklearn, sklearn.datasets as ds; print(ds.load_iris().data.shape)")
            assert "(150, 4)" in out["stdout"], out
        scratch = d["SCRATCH_DIR"]
    finally:
        hub.stop(name)
    assert not os.path.exists(scratch), "scratch is wiped at stop"


def test_spark_job_from_a_users_server(running_hub, hub):
    hub.ensure_user("sparky")
    hub.spawn("sparky", {"profile": "spark"})
    url, token = server_url(running_hub, "sparky"), hub.user_token("sparky")
    d = probe(url, token)
    assert re.fullmatch(r"spark://127\.0\.0\.1:\d+", d["SPARK_MASTER"]), d  # the server's own master
    code = """
import os
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()   # no configuration cell
sc = spark.sparkContext
print("MASTER", sc.master)
print("LOCALDIR", spark.conf.get("spark.local.dir"))
print("EXECUTORS", sorted(set(sc.parallelize(range(8), 4).map(
    lambda _: (os.getuid(), open("/proc/self/cgroup").read().strip(), os.getcwd())).collect())))
print("DRIVER", (os.getuid(), open("/proc/self/cgroup").read().strip()))
print("SUM", spark.range(100000).selectExpr("sum(id) as s").collect()[0]["s"])
print("PARTS", sc.parallelize(range(1000), 4).map(lambda x: x * 2).sum())
spark.stop()
"""
    out = run_code(url, token, code, timeout=300)
    assert out["error"] is None, out["error"] + out["stderr"][-2000:]
    assert f"MASTER {d['SPARK_MASTER']}" in out["stdout"]
    assert f"LOCALDIR {d['SCRATCH_DIR']}/spark" in out["stdout"]
    # Executors run as the user, in the server's control group, in a work dir on the user's scratch.
    driver = eval(out["stdout"].split("DRIVER", 1)[1].splitlines()[0])
    [(uid, cgroup, cwd)] = eval(out["stdout"].split("EXECUTORS", 1)[1].splitlines()[0])
    assert (uid, cgroup) == driver and uid == d["uid"], (driver, uid, cgroup)
    assert cwd.startswith(f"{d['SCRATCH_DIR']}/spark/work/"), cwd
    assert "SUM 4999950000" in out["stdout"] and "PARTS 999000" in out["stdout"]
    hub.stop("sparky")


def test_users_cannot_read_each_other(running_hub, hub):
    for n in ("iso-a", "iso-b"):
        hub.ensure_user(n)
        hub.spawn(n, {"profile": "minimal"})
    try:
        b = probe(server_url(running_hub, "iso-b"), hub.user_token("iso-b"))
        run_code(server_url(running_hub, "iso-b"), hub.user_token("iso-b"),
                 "open('secret.txt','w').write('b'); open(__import__('os').environ['SCRATCH_DIR']+'/s','w').write('b')")
        code = f"""
import os
files = [{b['HOME']!r} + '/secret.txt', {b['SCRATCH_DIR']!r} + '/s']
dirs = [{b['HOME']!r}, {b['SCRATCH_DIR']!r}]
for p in files + dirs:
    try:
        os.listdir(p) if p in dirs else open(p).read()
        print('READ', p)
    except PermissionError:
        print('DENIED', p)
"""
        out = run_code(server_url(running_hub, "iso-a"), hub.user_token("iso-a"), code)
        assert out["error"] is None, out["error"]
        assert out["stdout"].count("DENIED") == 4 and "READ" not in out["stdout"], out["stdout"]
        # Tokens carry least scope: a's token cannot reach b's server.
        r = requests.get(f"{server_url(running_hub, 'iso-b')}api/contents",
                         headers={"Authorization": f"token {hub.user_token('iso-a')}"}, allow_redirects=False)
        assert r.status_code in (302, 403)
    finally:
        for n in ("iso-a", "iso-b"):
            hub.stop(n)


def test_forged_requests_are_refused_and_leak_nothing(running_hub, hub):
    hub.ensure_user("forger")
    forged = [
        ({"profile": "root-shell"}, 400, "unknown profile"),
        ({"profile": "tensorflow", "gpus": "1"}, 403, "reserved for the groups gpu-users"),
        ({"profile": "tensorflow", "gpus": "64"}, 400, "not a choice"),
        ({"profile": "minimal", "image": "evil"}, 400, "no option 'image'"),
    ]
    for options, status, fragment in forged:
        with pytest.raises(SpawnRefused) as e:
            hub.spawn("forger", options)
        assert e.value.status == status and fragment in e.value.message, e.value
    assert ledger_rows(running_hub.state_dir) == {} or all(not o.startswith("forger") for o in
                                                           ledger_rows(running_hub.state_dir).values())
    assert not any(n.endswith("forger") for n in os.listdir(os.path.join(running_hub.state_dir, "scratch")))
    assert hub.request("GET", "/users/forger").json()["servers"] == {}
    # the hub is still up and the user can still spawn something allowed
    hub.spawn("forger", {"profile": "minimal"})
    hub.stop("forger")


def test_gpus_are_exclusive_released_and_refused_when_gone(running_hub, hub):
    users = ["gpu-a", "gpu-b", "gpu-c"]
    for u in users:
        hub.ensure_user(u, groups=["gpu-users"])
    try:
        hub.spawn("gpu-a", {"profile": "tensorflow", "gpus": "1"})
        hub.spawn("gpu-b", {"profile": "tensorflow", "gpus": "1"})
        da = probe(server_url(running_hub, "gpu-a"), hub.user_token("gpu-a"))
        db_ = probe(server_url(running_hub, "gpu-b"), hub.user_token("gpu-b"))
        assert {da["CUDA_VISIBLE_DEVICES"], db_["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
        with pytest.raises(SpawnRefused) as e:
            hub.spawn("gpu-c", {"profile": "tensorflow", "gpus": "1"})
        assert e.value.status == 503 and "No GPU is free" in e.value.message
        assert set(ledger_rows(running_hub.state_dir).values()) == {"gpu-a/", "gpu-b/"}  # c took nothing
        hub.stop("gpu-a")
        assert set(ledger_rows(running_hub.state_dir).values()) == {"gpu-b/"}
        hub.spawn("gpu-c", {"profile": "tensorflow", "gpus": "1"})
        dc = probe(server_url(running_hub, "gpu-c"), hub.user_token("gpu-c"))
        assert dc["CUDA_VISIBLE_DEVICES"] == da["CUDA_VISIBLE_DEVICES"]
    finally:
        for u in users:
            hub.stop(u)
    assert ledger_rows(running_hub.state_dir) == {}


def test_hub_restart_keeps_servers_and_assignments(environments):
    """Restart the hub with servers running: nothing is lost, nothing is assigned twice."""
    h = RunningHub()
    try:
        h.start()
        hub = h.hub
        hub.ensure_user("keep-a", groups=["gpu-users"])
        hub.ensure_user("keep-b", groups=["gpu-users"])
        hub.spawn("keep-a", {"profile": "tensorflow", "gpus": "1"})
        token = hub.user_token("keep-a")
        before = probe(server_url(h, "keep-a"), token)
        run_code(server_url(h, "keep-a"), token, "open('notes.txt','w').write('kept')")
        pids = h.server_pids()
        h.stop_hub()
        h.start()
        assert h.server_pids() == pids
        model = hub.request("GET", "/users/keep-a").json()["servers"][""]
        assert model["ready"] and model["state"]["gpus"] == [before["CUDA_VISIBLE_DEVICES"]]
        out = run_code(server_url(h, "keep-a"), token, "print(open('notes.txt').read())")
        assert "kept" in out["stdout"]
        hub.spawn("keep-b", {"profile": "tensorflow", "gpus": "1"})
        after = probe(server_url(h, "keep-b"), hub.user_token("keep-b"))
        assert after["CUDA_VISIBLE_DEVICES"] != before["CUDA_VISIBLE_DEVICES"]
    finally:
        h.teardown()


def test_broken_config_fails_at_start(tmp_path):
    h = RunningHub()
    try:
        h.cfg["profiles"][0]["cpu_limit"] = 0
        from pathlib import Path

        import yaml

        Path(h.config_file).write_text(yaml.safe_dump(h.cfg))
        with pytest.raises(RuntimeError) as e:
            h.start(timeout=60)
        assert "profiles[0].cpu_limit" in str(e.value)
    finally:
        h.teardown()


def test_cpu_and_memory_limits_are_enforced(running_hub, hub):
    from esker.system.cgroups import Limiter

    if not Limiter("esker-probe").enabled:
        pytest.skip("no writable cgroup hierarchy on this machine: limits are reported only")
    hub.ensure_user("limited")
    hub.spawn("limited", {"profile": "minimal"})
    try:
        code = """
import os
from pathlib import Path
groups = dict((l.split(':')[1], l.split(':')[2]) for l in Path('/proc/self/cgroup').read_text().splitlines())
if 'memory' in groups:
    base = Path('/sys/fs/cgroup/memory') / groups['memory'].lstrip('/')
    print('MEM', (base / 'memory.limit_in_bytes').read_text().strip())
    cpu = Path('/sys/fs/cgroup/cpu') / groups['cpu'].lstrip('/')
    print('CPU', (cpu / 'cpu.cfs_quota_us').read_text().strip(), (cpu / 'cpu.cfs_period_us').read_text().strip())
else:
    base = Path('/sys/fs/cgroup') / groups[''].lstrip('/')
    print('MEM', (base / 'memory.max').read_text().strip())
    print('CPU', *(base / 'cpu.max').read_text().split())
print('PATH', groups.get('memory', groups.get('')))
"""
        out = run_code(server_url(running_hub, "limited"), hub.user_token("limited"), code)
        assert out["error"] is None, out["error"]
        assert f"MEM {2 * 1024**3}" in out["stdout"]  # minimal: mem_limit 2G
        assert "CPU 100000 100000" in out["stdout"]  # minimal: cpu_limit 1
        assert "esker/limited" in out["stdout"]
    finally:
        hub.stop("limited")


def spark_daemons(uid: int) -> dict[str, list[int]]:
    """The Spark masters' and workers' JVMs running as ``uid``."""
    from esker.spark.cluster import running_daemons

    found: dict[str, list[int]] = {"master": [], "worker": []}
    for d in running_daemons():
        if d["uid"] == uid:
            found[d["role"]].append(d["pid"])
    return found


def test_own_spark_cluster_lives_and_dies_with_its_server(running_hub, hub):
    """A Spark server's master and worker run as its user, in its control group, behind the UI filter;
    they are gone after a stop and after the server is killed with SIGKILL."""
    import signal
    import time

    from esker.spark.cluster import master_status, running_masters

    hub.ensure_user("own-spark")
    hub.spawn("own-spark", {"profile": "spark"})
    d = probe(server_url(running_hub, "own-spark"), hub.user_token("own-spark"))
    uid = d["uid"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all((daemons := spark_daemons(uid)).values()):
        time.sleep(0.3)
    assert len(daemons["master"]) == 1 and len(daemons["worker"]) == 1, daemons
    server_cgroup = open(f"/proc/{daemons['master'][0]}/cgroup").read()
    assert "/esker/" in server_cgroup, server_cgroup
    assert open(f"/proc/{daemons['worker'][0]}/cgroup").read() == server_cgroup
    [m] = [m for m in running_masters() if m["uid"] == uid]
    assert d["SPARK_MASTER"] == f"spark://127.0.0.1:{m['port']}"
    with pytest.raises(Exception, match="403"):
        master_status(m["webui_port"])  # no token: the UI filter refuses
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not master_status(m["webui_port"], m["ui_key"])["aliveworkers"]:
        time.sleep(0.5)
    st = master_status(m["webui_port"], m["ui_key"])
    assert st["aliveworkers"] == 1 and st["cores"] == running_hub.cfg["spark"]["cores_per_user"], st
    hub.stop("own-spark")
    assert spark_daemons(uid) == {"master": [], "worker": []}

    hub.spawn("own-spark", {"profile": "spark"})
    deadline = time.monotonic() + 30  # the worker is launched by then; its JVM follows spark-class's launcher
    while time.monotonic() < deadline and not all((daemons := spark_daemons(uid)).values()):
        time.sleep(0.3)
    assert daemons["master"] and daemons["worker"], daemons
    server = [int(p.name) for p in __import__("pathlib").Path("/proc").iterdir() if p.name.isdigit()
              and p.stat().st_uid == uid and b"jupyterhub-singleuser" in (p / "cmdline").read_bytes()]
    assert server
    for pid in server:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120  # JupyterHub polls servers every 30 s
    while time.monotonic() < deadline and any(spark_daemons(uid).values()):
        time.sleep(1)
    assert spark_daemons(uid) == {"master": [], "worker": []}, "Spark outlived its killed server"
    hub.stop("own-spark")
