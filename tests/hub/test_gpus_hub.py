"""GPUs on one machine, against a real hub: the type chosen is the type given, each server's cgroup lets it open
its own GPUs' device nodes and no other's (nodes made with mknod for NVIDIA's major 195: "no such device" where
allowed, as no driver is loaded here, "operation not permitted" where the kernel forbids), a SIGKILLed server gives
its GPU and its device rule back, a hub restart keeps both, and the GPU policy stops a server whose GPUs stay idle.

There is no GPU here: the devices are pinned ids with types, and the hub reads NVML's answers from a file the test
writes (the shape `esker status --nvml` prints), in place of the driver.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import needs_root
from esker.devhub import RunningHub
from esker.devhub import test_config as hub_config
from esker.hubapi import SpawnRefused, run_code

pytestmark = needs_root

TYPES = {"a100": {"display_name": "NVIDIA A100", "products": ["NVIDIA A100*"]},
         "h200": {"display_name": "NVIDIA H200", "products": ["NVIDIA H200*"]}}
DEVICES = [{"id": "0", "type": "a100"}, {"id": "1", "type": "a100"}, {"id": "2", "type": "h200"}]
IDLE_TIMEOUT = 6  # seconds: the policy of this test's hub


def nvml(busy: set[str]) -> dict:
    """NVML's answer with the given devices busy (a training process at 95%) and the others idle."""
    names = {"a100": "NVIDIA A100-SXM4-40GB", "h200": "NVIDIA H200"}
    return {"driver": "570.124.06", "devices": [
        {"index": int(d["id"]), "name": names[d["type"]], "uuid": "", "minor": int(d["id"]),
         "memory_total": 42949672960, "memory_used": 30 << 30 if d["id"] in busy else 0,
         "utilization": 95.0 if d["id"] in busy else 0.0, "processes": [4242] if d["id"] in busy else []}
        for d in DEVICES]}


# The hub reads NVML's answers from this file (written by the test) instead of the driver; polls every 2 s.
EXTRA = """
import json as _json
from esker.runtime import get_runtime as _get_runtime
_rt = _get_runtime()
_rt.gpu_usage.interval = 0
_rt.gpu_usage._read = lambda: _json.load(open({path!r}))
c.Spawner.poll_interval = 2
"""

# Opens every node of the folder: the errno's name for each, or "opened". Run in a server's kernel, and in one of
# its Spark executors (the Python worker its own worker's JVM starts).
PROBE = """
import errno, json, os
def probe(_=None):
    import errno, os
    out = {{}}
    for name in sorted(os.listdir({nodes!r})):
        try:
            os.close(os.open(os.path.join({nodes!r}, name), os.O_RDWR))
            out[name] = "opened"
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
    for dev in ("/dev/null", "/dev/urandom"):  # the rule is about GPUs only
        os.close(os.open(dev, os.O_RDONLY))
    return [out]
"""
OPEN_NODES = PROBE + """
print("NODES" + json.dumps(probe()[0]))
"""
EXECUTOR_NODES = PROBE + """
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
print("EXEC" + json.dumps(spark.sparkContext.parallelize([0], 1).mapPartitions(probe).collect()[0]))
spark.stop()
"""
ALLOWED = {"ENXIO", "ENODEV"}  # the cgroup let the open through; no driver answers for the node


@pytest.fixture(scope="module")
def gpu_hub(environments):
    state = tempfile.mkdtemp(prefix="esker-test-gpus-", dir="/tmp")
    os.chmod(state, 0o755)
    replay = os.path.join(state, "nvml.json")
    Path(replay).write_text(json.dumps(nvml(busy={"0", "1", "2"})))
    cfg = hub_config("x", os.path.join(state, "homes"), gpus={"devices": DEVICES, "types": TYPES,
                                                               "policy": {"idle_timeout": IDLE_TIMEOUT}})
    tf = next(p for p in cfg["profiles"] if p["slug"] == "tensorflow")
    tf["options"]["gpus"]["choices"].update({
        "h200": {"display_name": "1 H200", "groups": ["gpu-users"], "override": {"gpus": 1, "gpu_type": "h200"}},
        "h200x2": {"display_name": "2 H200", "groups": ["gpu-users"], "override": {"gpus": 2, "gpu_type": "h200"}},
    })
    h = RunningHub(cfg=cfg, state_dir=state, extra_config=EXTRA.format(path=replay))
    h.replay = replay
    # Device nodes of NVIDIA's major number, outside /dev, that every account may try to open.
    h.nodes = tempfile.mkdtemp(prefix="esker-test-nvnodes-", dir="/tmp")
    os.chmod(h.nodes, 0o755)
    for name, minor in (("nvidia0", 0), ("nvidia1", 1), ("nvidia2", 2), ("nvidiactl", 255)):
        os.mknod(os.path.join(h.nodes, name), 0o666 | stat.S_IFCHR, os.makedev(195, minor))
        os.chmod(os.path.join(h.nodes, name), 0o666)
    try:
        h.start()
        yield h
    finally:
        h.teardown()
        for name in os.listdir(h.nodes):
            os.unlink(os.path.join(h.nodes, name))
        os.rmdir(h.nodes)


def url(h, name):
    return f"{h.url}/user/{name}/"


def nodes_seen(h, name) -> dict:
    out = run_code(url(h, name), h.hub.user_token(name), OPEN_NODES.format(nodes=h.nodes))
    assert "NODES" in out["stdout"], out
    return json.loads(out["stdout"].split("NODES", 1)[1])


def held(h) -> dict:
    import sqlite3

    with sqlite3.connect(os.path.join(h.state_dir, "ledger.sqlite")) as db:
        return dict(db.execute("SELECT item, owner FROM assignments WHERE kind='gpu'").fetchall())


def devices_cgroup(h, name) -> Path | None:
    model = h.hub.request("GET", f"/users/{name}").json()["servers"].get("", {})
    paths = (model.get("state") or {}).get("cgroup", {}).get("paths", [])
    return next((Path(p) for p in paths if "/devices/" in p), None)


def open_in_group(group: Path, node: str) -> str:
    """Open ``node`` from a process of nobody's in the devices cgroup ``group`` (while the hub is down, when no
    server's kernel can be reached): the errno's name, or "opened"."""
    code = ("import errno, os\ntry:\n    os.close(os.open(%r, os.O_RDWR)); print('opened')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])" % node)

    def enter():
        Path(group, "cgroup.procs").write_text(str(os.getpid()))
        os.setgid(65534)
        os.setuid(65534)

    return subprocess.run(["/usr/bin/python3", "-c", code], preexec_fn=enter, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_types_refusals_device_rules_sigkill_and_restart(gpu_hub):
    h, hub = gpu_hub, gpu_hub.hub
    for u in ("gpa", "gpb", "gpc", "gpd"):
        hub.ensure_user(u, groups=["gpu-users"])
    hub.spawn("gpa", {"profile": "tensorflow", "gpus": "1"})  # any type: the first free
    hub.spawn("gpb", {"profile": "tensorflow", "gpus": "h200"})
    hub.spawn("gpd", {"profile": "spark"})
    assert held(h) == {"0": "gpa/", "2": "gpb/"}

    # More of a type than the hub has: 409 with what is free. None of it free: 503 with who holds it.
    with pytest.raises(SpawnRefused) as e:
        hub.spawn("gpc", {"profile": "tensorflow", "gpus": "h200x2"})
    assert e.value.status == 409 and "this hub has 1 NVIDIA H200 GPU(s), 0 free" in e.value.message
    with pytest.raises(SpawnRefused) as e:
        hub.spawn("gpc", {"profile": "tensorflow", "gpus": "h200"})
    assert e.value.status == 503 and "No NVIDIA H200 GPU is free" in e.value.message and "gpb" in e.value.message
    assert held(h) == {"0": "gpa/", "2": "gpb/"}  # the refusals took nothing

    # The spawn page says how many of each type are free.
    s = requests.Session()
    r = s.get(f"{h.url}/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
    r = s.post(f"{h.url}/hub/login?next=/hub/spawn", data={"username": "gpc", "password": "x", "_xsrf": xsrf})
    assert "0 of 1 NVIDIA H200 GPU free" in r.text and "1 of 3 GPUs free" in r.text

    # The kernel decides, whatever the environment says: each server opens its own GPU's node only.
    a = nodes_seen(h, "gpa")
    assert a["nvidia0"] in ALLOWED and a["nvidiactl"] in ALLOWED and a["nvidia1"] == a["nvidia2"] == "EPERM"
    b = nodes_seen(h, "gpb")
    assert b["nvidia2"] in ALLOWED and b["nvidia0"] == b["nvidia1"] == "EPERM"
    d = nodes_seen(h, "gpd")  # no GPU asked for: none at all
    assert d["nvidia0"] == d["nvidia1"] == d["nvidia2"] == "EPERM" and d["nvidiactl"] in ALLOWED
    out = run_code(url(h, "gpd"), hub.user_token("gpd"), EXECUTOR_NODES.format(nodes=h.nodes))
    assert "EXEC" in out["stdout"], out
    e = json.loads(out["stdout"].split("EXEC", 1)[1])  # from his Spark executor: the same rule
    assert e["nvidia0"] == e["nvidia1"] == e["nvidia2"] == "EPERM" and e["nvidiactl"] in ALLOWED
    out = run_code(url(h, "gpd"), hub.user_token("gpd"), "import os; os.environ.pop('CUDA_VISIBLE_DEVICES', None); "
                   f"os.open({h.nodes!r} + '/nvidia2', os.O_RDWR)")
    assert "PermissionError" in (out.get("error") or "") + out["stderr"] + out["stdout"]

    # SIGKILL: the hub sees the server gone and gives back its GPU and its device rule (the cgroup).
    cg_a = devices_cgroup(h, "gpa")
    assert cg_a is not None and cg_a.is_dir()
    pid = hub.request("GET", "/users/gpa").json()["servers"][""]["state"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for("gpa's GPU released", lambda: "0" not in held(h))
    wait_for("gpa's cgroup removed", lambda: not cg_a.exists())

    # A restart keeps gpb's assignment and its device rule, and puts the rule back where it went missing while
    # the hub was down (here: gpb's cgroup opened to every device by hand).
    cg_b = devices_cgroup(h, "gpb")
    assert open_in_group(cg_b, f"{h.nodes}/nvidia0") == "EPERM"
    h.stop_hub()
    (cg_b / "devices.allow").write_text("a")
    assert open_in_group(cg_b, f"{h.nodes}/nvidia0") in ALLOWED  # the rule is gone
    h.start()
    assert open_in_group(cg_b, f"{h.nodes}/nvidia0") == "EPERM"  # and back
    assert held(h) == {"2": "gpb/"}
    b = nodes_seen(h, "gpb")
    assert b["nvidia2"] in ALLOWED and b["nvidia0"] == b["nvidia1"] == "EPERM"
    hub.spawn("gpc", {"profile": "tensorflow", "gpus": "2"})  # both A100s: 0 came back
    assert held(h) == {"0": "gpc/", "1": "gpc/", "2": "gpb/"}
    for u in ("gpb", "gpc", "gpd"):
        hub.stop(u)


def test_gpu_policy_stops_a_server_whose_gpus_stay_idle(gpu_hub):
    h, hub = gpu_hub, gpu_hub.hub
    for u in ("idle-a", "busy-b"):
        hub.ensure_user(u, groups=["gpu-users"])
    Path(h.replay).write_text(json.dumps(nvml(busy={"0", "1", "2"})))
    hub.spawn("idle-a", {"profile": "tensorflow", "gpus": "1"})
    hub.spawn("busy-b", {"profile": "tensorflow", "gpus": "1"})
    mine = {v: k for k, v in held(h).items()}
    idle_dev, busy_dev = mine["idle-a/"], mine["busy-b/"]
    time.sleep(IDLE_TIMEOUT + 4)  # busy: nobody is stopped
    assert hub.request("GET", "/users/idle-a").json()["servers"]
    Path(h.replay).write_text(json.dumps(nvml(busy={busy_dev})))  # idle-a's training ended, its process too
    wait_for("idle-a stopped by the policy", lambda: not hub.request("GET", "/users/idle-a").json()["servers"],
             timeout=IDLE_TIMEOUT + 40)
    assert idle_dev not in held(h)
    assert hub.request("GET", "/users/busy-b").json()["servers"][""]["ready"]
    log = Path(h.log_path).read_text(errors="replace")
    assert re.search(r"idle-a.*stopped by the GPU policy \(idle\): its GPUs were idle", log)
    metrics = requests.get(f"{h.url}/hub/metrics", headers={"Authorization": f"token {h.token}"}, timeout=10).text
    assert re.search(r'esker_gpu_servers_stopped_total\{reason="idle"\} [1-9]', metrics)
    assert re.search(r'esker_gpu_idle_seconds\{server="",user="busy-b"\} 0\.0', metrics)
    # Its user reads why on the next spawn page.
    s = requests.Session()
    r = s.get(f"{h.url}/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
    r = s.post(f"{h.url}/hub/login?next=/hub/spawn", data={"username": "idle-a", "password": "x", "_xsrf": xsrf})
    assert "stopped" in r.text and "by this hub&#39;s GPU policy: its GPUs were idle" in r.text
    hub.stop("busy-b")
