"""Scratch quotas on a real root hub: each server's scratch is a filesystem of its profile's scratch_size
(a reserved image, loop-mounted). Bob, hostile, fills his from his kernel: he gets ENOSPC, alice's scratch and
the host disk do not notice, and he can neither list alice's scratch nor reach the images. A failed spawn, a
stop, a SIGKILLed server and a spawn the disk cannot hold leave nothing mounted and no loop device attached;
a hub restart keeps a running server's mount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import needs_root
from esker import devhub
from esker.devhub import RunningHub
from esker.hubapi import SpawnRefused, run_code
from esker.system import scratch

pytestmark = [pytest.mark.integration, needs_root,
              pytest.mark.skipif(scratch.quota_unsupported(os.geteuid() == 0) is not None,
                                 reason=f"no scratch quotas here: {scratch.quota_unsupported(os.geteuid() == 0)}")]

MiB = 1024**2
QUOTA = 256 * MiB
HERE = os.path.dirname(os.path.abspath(__file__))
EXTRA = f"""
import sys
sys.path.insert(0, {HERE!r})
c.JupyterHub.spawner_class = "failure_spawners.FailureModeSpawner"
c.Spawner.poll_interval = 1  # a killed server is noticed (and given back) within seconds
"""

BOB_FILLS = """
import errno, json, os
s = os.environ["SCRATCH_DIR"]
root = os.path.dirname(s)
r = {"written": 0, "errno": None, "tries": {}}
try:
    with open(os.path.join(s, "fill"), "wb", buffering=0) as f:
        while r["written"] < 4 * QUOTA:
            r["written"] += f.write(b"x" * 1048576)
        os.fsync(f.fileno())
except OSError as e:
    r["errno"] = errno.errorcode.get(e.errno)
for what, call in (("list alice's scratch", lambda: os.listdir(ALICE)), ("read alice's file", lambda: open(ALICE + "/tmp/mine").read()),
                   ("list the scratch root", lambda: os.listdir(root)), ("list the images", lambda: os.listdir(root + "/.images")),
                   ("open alice's image", lambda: open(IMAGE, "rb").read(16)), ("remove alice's scratch", lambda: os.rmdir(ALICE))):
    try:
        call()
        r["tries"][what] = "allowed"
    except OSError as e:
        r["tries"][what] = errno.errorcode.get(e.errno)
print("BOB" + json.dumps(r))
"""

ALICE_WRITES = """
import os
p = os.environ["SCRATCH_DIR"] + "/tmp/mine"
if os.path.exists(p):
    assert open(p).read() == "alice's", "her file changed"
with open(p, "w") as f:
    f.write("alice's")
with open(os.environ["SCRATCH_DIR"] + "/more", "wb") as f:  # still room for her: 64 MB, fsynced
    f.write(os.urandom(64 * 1048576)); f.flush(); os.fsync(f.fileno())
print("ALICE", os.environ["SCRATCH_DIR"])
"""


@pytest.fixture(scope="module")
def quota_hub(environments):
    cfg = devhub.test_config("x-", "/nonexistent")  # prefix and home root are RunningHub's
    for p in cfg["profiles"]:
        # scikit-learn asks for more than any disk here holds: the spawn must be refused, not overcommitted.
        p["scratch_size"] = "1000T" if p["slug"] == "scikit-learn" else f"{QUOTA // MiB}M"
    h = RunningHub(cfg=cfg, extra_config=EXTRA)
    try:
        h.start()
        yield h
    finally:
        h.teardown()


def url(h, name):
    return f"{h.url}/user/{name}/"


def left_behind(h) -> list[str]:
    """Mounts and loop devices of this hub's scratch, and images still on disk."""
    root = os.path.join(h.state_dir, "scratch")
    mounts = [m for m in scratch.mounts() if m.startswith(root + "/")]
    loops = [line for line in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
             if root in line]
    images_dir = os.path.join(root, scratch.IMAGES)
    images = os.listdir(images_dir) if os.path.isdir(images_dir) else []
    return mounts + loops + images


def run(h, name, code, timeout=120):
    out = run_code(url(h, name), h.hub.user_token(name), code, timeout=timeout)
    assert out["error"] is None, out
    return out["stdout"]


def test_bob_fills_his_scratch_and_nobody_else_notices(quota_hub):
    h, hub = quota_hub, quota_hub.hub
    for u in ("sq-alice", "sq-bob"):
        hub.ensure_user(u)
    try:
        spawned = hub.spawn("sq-alice", {"profile": "minimal"})
        assert any(e.get("message", "").startswith("Scratch ready") and "no quota" not in e["message"]
                   for e in spawned["events"]), spawned["events"]
        hub.spawn("sq-bob", {"profile": "minimal"})
        alice = run(h, "sq-alice", ALICE_WRITES).split("ALICE", 1)[1].strip()
        image = scratch.image_path(alice)
        opts = next(line.split()[3] for line in open("/proc/mounts") if line.split()[1] == alice).split(",")
        assert {"nodev", "nosuid"} <= set(opts), opts
        free_before = scratch.free_bytes(h.state_dir)
        code = BOB_FILLS.replace("QUOTA", str(QUOTA)).replace("ALICE", repr(alice)).replace("IMAGE", repr(image))
        r = json.loads(run(h, "sq-bob", code).split("BOB", 1)[1])
        free_after = scratch.free_bytes(h.state_dir)
        assert r["errno"] == "ENOSPC", r
        # ext4's metadata takes about 3% of a large image; its journal alone is 16 MB (6%) of this small one.
        assert 0.85 * QUOTA < r["written"] <= QUOTA, r
        assert r["tries"] == {"list alice's scratch": "EACCES", "read alice's file": "EACCES",
                              "list the scratch root": "EACCES", "list the images": "EACCES",
                              "open alice's image": "EACCES", "remove alice's scratch": "EACCES"}, r
        # His image was reserved at spawn: filling it took nothing more from the shared disk.
        assert free_before - free_after < QUOTA // 2, (free_before, free_after)
        bob = os.path.join(os.path.dirname(alice), next(n for n in os.listdir(os.path.dirname(alice))
                                                        if n.endswith("sq-bob")))
        assert os.stat(scratch.image_path(bob)).st_blocks * 512 <= QUOTA + 64 * 1024
        run(h, "sq-alice", ALICE_WRITES)  # her file is intact and she still writes 64 MB
    finally:
        for u in ("sq-alice", "sq-bob"):
            hub.stop(u)
    assert left_behind(h) == []


@pytest.mark.parametrize("name,profile,status,reason", [
    ("broken-sq", "minimal", None, "read-only"),  # fails after its scratch was mounted
    ("big-sq", "scikit-learn", 503, "cannot be reserved"),  # the disk cannot hold 1000 TB
])
def test_a_failed_spawn_leaves_nothing_mounted(quota_hub, name, profile, status, reason):
    hub = quota_hub.hub
    hub.ensure_user(name)
    with pytest.raises((RuntimeError, SpawnRefused)) as e:
        hub.spawn(name, {"profile": profile}, timeout=120)
    assert reason in str(e.value), e.value
    if status:
        assert isinstance(e.value, SpawnRefused) and e.value.status == status, e.value
    for _ in range(60):
        if not hub.request("GET", f"/users/{name}").json()["servers"]:
            break
        time.sleep(0.5)
    assert left_behind(quota_hub) == []


def test_a_killed_server_gives_its_scratch_back(quota_hub):
    h, hub = quota_hub, quota_hub.hub
    hub.ensure_user("sq-kill")
    before = set(h.server_pids())
    hub.spawn("sq-kill", {"profile": "minimal"})
    assert len(left_behind(h)) == 3  # its mount, its loop device, its image
    (pid,) = set(h.server_pids()) - before
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while left_behind(h) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left_behind(h) == []


def test_a_hub_restart_keeps_the_mount(quota_hub):
    h, hub = quota_hub, quota_hub.hub
    hub.ensure_user("sq-restart")
    hub.spawn("sq-restart", {"profile": "minimal"})
    try:
        path = run(h, "sq-restart", ALICE_WRITES).split("ALICE", 1)[1].strip()
        h.stop_hub()
        h.start()
        assert scratch.mounted(path)
        run(h, "sq-restart", ALICE_WRITES)  # the same filesystem: her file is there
    finally:
        hub.stop("sq-restart")
    assert left_behind(h) == []


def test_a_hub_restart_keeps_each_servers_spark(quota_hub):
    """The server's own master and worker outlive a hub restart, attached to their server (its state has
    them): the same processes afterwards, a job still runs, and the stop after the restart ends them."""
    from esker.spark.cluster import running_daemons

    h, hub = quota_hub, quota_hub.hub
    root = h.cfg["scratch"]["root"].replace("{state_dir}", h.state_dir)
    hub.ensure_user("sq-spark")
    hub.spawn("sq-spark", {"profile": "spark"})
    job = ("from pyspark.sql import SparkSession; s = SparkSession.builder.getOrCreate(); "
           "print('SUM', s.sparkContext.parallelize(range(100), 2).sum()); s.stop()")
    try:
        mine = lambda: {d["pid"] for d in running_daemons(under=root) if "sq-spark" in d["conf_dir"]}  # noqa: E731
        deadline = time.monotonic() + 30  # the worker's JVM follows spark-class's launcher
        while time.monotonic() < deadline and len(before := mine()) < 2:
            time.sleep(0.3)
        assert len(before) == 2, running_daemons(under=root)
        h.stop_hub()
        h.start()
        assert mine() == before
        out = run_code(f"{h.url}/user/sq-spark/", hub.user_token("sq-spark"), job, timeout=240)
        assert "SUM 4950" in out["stdout"], out
    finally:
        hub.stop("sq-spark")
    assert [d for d in running_daemons(under=root) if "sq-spark" in d["conf_dir"]] == []
