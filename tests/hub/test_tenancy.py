"""Tenancy on the embedded hub, as real per-user accounts: while alice's Spark driver runs with her S3 keys,
bob's kernel finds no secret of anyone's on any command line (/proc/*/cmdline) nor in any file of the state
directory he can read, and the hub's own state (databases, ports, secrets, locks) is closed to him."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs_root
from esker.hubapi import run_code

pytestmark = [pytest.mark.integration, pytest.mark.ceph, needs_root]

ALICE_KEYS = """
import os
print("ALICE" + repr((os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["SCRATCH_DIR"],
                      oct(os.stat(os.environ["SPARK_CONF_DIR"] + "/spark-defaults.conf").st_mode & 0o777))))
"""

# Her driver runs until the test says so (the file RELEASE appears), so that bob looks while it runs.
ALICE_SPARK = """
import os, time
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
assert spark.sparkContext.parallelize(range(10)).sum() == 45
has_key = spark.sparkContext.getConf().get("spark.hadoop.fs.s3a.secret.key") == os.environ["AWS_SECRET_ACCESS_KEY"]
open(READY, "w").close()
deadline = time.time() + 200
while not os.path.exists(RELEASE) and time.time() < deadline:
    time.sleep(0.5)
spark.stop()
print("SPARK", has_key)
"""

BOB_PROBE = """
import json, os
state, secrets = STATE, SECRETS + [os.environ["AWS_SECRET_ACCESS_KEY"]]
mine = (os.path.realpath(os.environ["HOME"]), os.path.realpath(os.environ["SCRATCH_DIR"]))
r = {"cmdline_hits": [], "cmdlines": 0, "driver_seen": False, "readable": [], "secret_files": [], "writable": []}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        r["cmdlines"] += 1
        r["driver_seen"] |= "SparkSubmit" in args and "pyspark-shell" in args
        r["cmdline_hits"] += [pid for s in secrets if s in args]

def own(p):
    p = os.path.realpath(p)
    return any(p == m or p.startswith(m + "/") for m in mine)

shared = [os.path.join(state, "envs")]  # the environments: read-only for every account, on purpose
def is_shared(p):
    return any(p == s or p.startswith(s + "/") for s in shared)

files, dirs = set(), []
for name in ("jupyterhub.sqlite", "jupyterhub.sqlite-journal", "courses.sqlite", "ledger.sqlite", "ports.json",
             "run/proxy.pid", "run/jupyterhub.pid", "hub.log", "secrets/cookie_secret", "secrets/proxy_auth_token", "secrets/shared-password",
             "secrets/admin-password", "secrets/storage", "esker.yaml"):
    files.add(os.path.join(state, name))
for root, ds, fs in os.walk(state, onerror=lambda e: None):
    dirs.append(root)
    files.update(os.path.join(root, f) for f in fs)
for f in sorted(files):
    if own(f) or os.path.islink(f):
        continue
    try:
        data = open(f, "rb").read()
    except OSError:
        continue
    if any(s.encode() in data for s in secrets):
        r["secret_files"].append(f)
    if not is_shared(f):
        r["readable"].append(f)
    try:
        open(f, "ab").close()
        r["writable"].append(f)
    except OSError:
        pass
for d in dirs:
    if own(d):
        continue
    probe = os.path.join(d, ".bob-was-here")
    try:
        open(probe, "x").close()
        os.unlink(probe)
        r["writable"].append(d)
    except OSError:
        pass
print("BOB" + json.dumps(r))
"""


def url(h, name):
    return f"{h.url}/user/{name}/"


def test_no_secret_in_argv_or_readable_files_and_hub_state_closed(running_hub, hub):
    h = running_hub
    for u in ("ten-alice", "ten-bob"):
        hub.ensure_user(u)
    try:
        hub.spawn("ten-alice", {"profile": "spark"})
        hub.spawn("ten-bob", {"profile": "minimal"})
        out = run_code(url(h, "ten-alice"), hub.user_token("ten-alice"), ALICE_KEYS)
        assert out["error"] is None, out
        secret, scratch, mode = eval(out["stdout"].split("ALICE", 1)[1].strip())
        assert mode == "0o600"  # $SPARK_CONF_DIR/spark-defaults.conf: hers alone
        ready, release = f"{scratch}/tmp/driver-ready", f"{scratch}/tmp/driver-release"
        code = ALICE_SPARK.replace("READY", repr(ready)).replace("RELEASE", repr(release))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            alice = pool.submit(run_code, url(h, "ten-alice"), hub.user_token("ten-alice"), code, 300)
            deadline = time.time() + 240
            while not os.path.exists(ready) and time.time() < deadline and not alice.done():
                time.sleep(0.5)
            try:
                assert os.path.exists(ready), alice.result() if alice.done() else "no driver after 240 s"
                # Alice's driver JVM runs: bob looks now.
                probe = BOB_PROBE.replace("STATE", repr(h.state_dir)).replace("SECRETS", repr([secret]))
                out = run_code(url(h, "ten-bob"), hub.user_token("ten-bob"), probe, timeout=240)
            finally:
                Path(release).touch()
            spark = alice.result()
        assert spark["error"] is None and "SPARK True" in spark["stdout"], spark  # her driver had the key
        assert out["error"] is None, out
        r = json.loads(out["stdout"].split("BOB", 1)[1])
        assert r["driver_seen"] and r["cmdlines"] > 10, r  # he does see her driver's command line
        assert r["cmdline_hits"] == [], r
        assert r["secret_files"] == [], r
        assert r["readable"] == [], r
        assert r["writable"] == [], r
    finally:
        for u in ("ten-alice", "ten-bob"):
            hub.stop(u)


# -- Spark: bob against alice's own cluster, from his kernel and from his executors ------------------------

ALICE_JOB = """
import os, time
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
sc = spark.sparkContext
M = MARKER
# Her marker goes through a shuffle (shuffle files on her local dirs) and into an executor's stdout.
assert sc.parallelize(range(400), 4).map(lambda i: (M + str(i % 3), 1)).reduceByKey(lambda a, b: a + b).count() == 3
sc.parallelize([0], 1).foreach(lambda _: print(M, flush=True))
rpc = [l.split(" ", 1)[1].strip() for l in open(os.environ["SPARK_CONF_DIR"] + "/spark-defaults.conf")
       if l.startswith("spark.authenticate.secret ")][0]
open(READY, "w").write(rpc + "\\n" + sc.applicationId)
deadline = time.time() + 400
while not os.path.exists(RELEASE) and time.time() < deadline:
    time.sleep(0.5)
spark.stop()
print("ALICE-DONE")
"""

# What bob tries. ``attack`` runs in his kernel and, shipped as a task, on his own executor.
BOB_SPARK = r"""
import json, os, subprocess, sys, tempfile, time, urllib.request, urllib.error
T = TARGETS

def attack(_=None):
    import os, urllib.request, urllib.error
    r = {"uid": os.getuid(), "cmdline_hits": [], "secret_files": [], "readable": [], "writable": [], "http": {},
         "cmdlines": 0, "alice_master_seen": False, "dirs_tried": 0}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                args = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            r["cmdlines"] += 1
            r["alice_master_seen"] |= "deploy.master.Master" in args and T["master"].rsplit(":", 1)[1] in args
            r["cmdline_hits"] += [pid for s in T["secrets"] if s in args]
    mine = [os.path.realpath(p) for p in (os.environ["HOME"], os.environ["SCRATCH_DIR"])]
    own = lambda p: any(os.path.realpath(p) == m or os.path.realpath(p).startswith(m + "/") for m in mine)
    for top in T["roots"]:
        for root, dirs, files in os.walk(top, onerror=lambda e: None):
            if root.startswith(T["shared"]):
                dirs[:] = []
                continue
            if own(root):
                continue
            for f in files:
                p = os.path.join(root, f)
                try:
                    data = open(p, "rb").read()
                except OSError:
                    continue
                if not os.path.islink(p):
                    r["readable"].append(p)
                if any(s.encode() in data for s in T["secrets"]):
                    r["secret_files"].append(p)
            r["dirs_tried"] += 1
            try:
                open(os.path.join(root, ".bob-was-here"), "x").close()
                os.unlink(os.path.join(root, ".bob-was-here"))
                r["writable"].append(root)
            except OSError:
                pass
    # Listing is refused on the way (0711, 0700), so also try the paths he can guess or see in argv.
    for f in T["files"]:
        try:
            data = open(f, "rb").read()
        except OSError:
            continue
        r["readable"].append(f)
        if any(s.encode() in data for s in T["secrets"]):
            r["secret_files"].append(f)
    for d in T["dirs"]:
        r["dirs_tried"] += 1
        try:
            open(os.path.join(d, ".bob-was-here"), "x").close()
            os.unlink(os.path.join(d, ".bob-was-here"))
            r["writable"].append(d)
        except OSError:
            pass
    for name, url in T["urls"].items():
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                r["http"][name] = resp.status
        except urllib.error.HTTPError as e:
            r["http"][name] = e.code
        except Exception as e:
            r["http"][name] = type(e).__name__
    try:
        import boto3, botocore
        s3 = boto3.client("s3")
        for what, fn in (("list", lambda: s3.list_objects_v2(Bucket=T["bucket"])),
                         ("get", lambda: s3.get_object(Bucket=T["bucket"], Key="alice.txt")),
                         ("put", lambda: s3.put_object(Bucket=T["bucket"], Key="bob.txt", Body=b"x"))):
            try:
                fn(); r["s3_" + what] = "ok"
            except botocore.exceptions.ClientError as e:
                r["s3_" + what] = e.response["Error"]["Code"]
    except ImportError as e:
        r["s3"] = str(e)
    return r

# Submitting to alice's master: with no secret at all, and with his own.
probe = "import os; from pyspark.sql import SparkSession; s = SparkSession.builder.getOrCreate(); " \
        "print('RAN-AS', s.sparkContext.parallelize([0], 1).map(lambda _: os.getuid()).collect(), flush=True)"
subs = {}
for name, conf_dir in (("no_secret", tempfile.mkdtemp()), ("his_secret", os.environ["SPARK_CONF_DIR"])):
    env = dict(os.environ, SPARK_CONF_DIR=conf_dir,
               PYSPARK_SUBMIT_ARGS=f"--master {T['master']} --conf spark.ui.enabled=false pyspark-shell")
    subs[name] = subprocess.Popen([sys.executable, "-c", probe], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)

from pyspark.sql import SparkSession
spark = SparkSession.builder.config("spark.cores.max", "64").getOrCreate()   # more than his share
sc = spark.sparkContext
out = {"kernel": attack(), "executor": sc.parallelize([0], 1).map(attack).collect()[0]}
spans = sc.parallelize(range(4), 4).map(lambda _: (time.time(), (time.sleep(2), time.time())[1])).collect()
out["max_parallel_tasks"] = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
for name, p in subs.items():
    try:
        text, _ = p.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        p.kill()
        text, _ = p.communicate()
    out["submit_" + name] = {"ran": "RAN-AS" in text, "auth_refused": any(
        w in text for w in ("SaslMessage", "Outbox is stopped", "Failed to connect to master",
                            "All masters are unresponsive", "Authentication"))}
spark.stop()
print("BOB" + json.dumps(out))
"""


def executor_archives(uid: int) -> list[str]:
    """The class archives (``*.jsa`` beyond the JDK's own) that a uid's Spark executors have mapped."""
    found = set()
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit() or d.stat().st_uid != uid or \
                    b"CoarseGrainedExecutorBackend" not in (d / "cmdline").read_bytes():
                continue
            maps = (d / "maps").read_text().splitlines()
        except OSError:
            continue
        found |= {m.split()[-1] for m in maps if m.endswith(".jsa") and "/lib/server/" not in m}
    return sorted(found)


def listening_ports(uid: int) -> list[int]:
    """TCP ports a uid listens on (root's view of /proc/net/tcp)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[7]) == uid:  # LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def test_hostile_user_against_anothers_spark(running_hub, hub):
    """alice runs a Spark job (a marker shuffled and printed by her executor); bob, from his kernel and from his
    own executors, searches every command line and every file he can open for her secrets and marker, tries to
    write into her and the hub's folders, opens her Spark UIs and every port she listens on, uses his keys on
    her bucket, submits to her master, and asks for more than his share. Nothing works."""
    import pwd
    import secrets as pysecrets

    h = running_hub
    for u in ("sp-alice", "sp-bob"):
        hub.ensure_user(u)
    try:
        hub.spawn("sp-alice", {"profile": "spark"})
        hub.spawn("sp-bob", {"profile": "spark"})
        out = run_code(url(h, "sp-alice"), hub.user_token("sp-alice"), ALICE_KEYS + """
import boto3; boto3.client("s3").put_object(Bucket=os.environ["ESKER_BUCKET"], Key="alice.txt", Body=b"hers")
print("BUCKET", os.environ["ESKER_BUCKET"], os.environ["HOME"])
""")
        assert out["error"] is None, out
        s3_secret, scratch, _ = eval(out["stdout"].split("ALICE", 1)[1].splitlines()[0].strip())
        bucket, home = out["stdout"].split("BUCKET", 1)[1].split()[:2]
        marker = "MARK-" + pysecrets.token_hex(12)
        ready, release = f"{scratch}/tmp/job-ready", f"{scratch}/tmp/job-release"
        code = (ALICE_JOB.replace("MARKER", repr(marker)).replace("READY", repr(ready))
                .replace("RELEASE", repr(release)))
        alice_uid = pwd.getpwnam(h.cfg["users"]["system_user_prefix"] + "sp-alice").pw_uid
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(run_code, url(h, "sp-alice"), hub.user_token("sp-alice"), code, 500)
            deadline = time.time() + 300
            while not os.path.exists(ready) and time.time() < deadline and not job.done():
                time.sleep(0.5)
            try:
                assert os.path.exists(ready), job.result() if job.done() else "alice's job did not start"
                rpc_secret, app_id = Path(ready).read_text().split()
                from esker.spark.cluster import running_daemons
                mine = [d for d in running_daemons() if d["uid"] == alice_uid]
                master = next(d for d in mine if d["role"] == "master")
                # Her executor maps its environment's class archive (esker.spark.archive; Java maps it only
                # once it has checked it against the executor's class path), which is root's and read-only.
                archives = executor_archives(alice_uid)
                assert archives and all(a.endswith("/share/esker/spark/executor.jsa") for a in archives), archives
                for a in archives:
                    st = os.stat(a)
                    assert st.st_uid == 0 and st.st_mode & 0o022 == 0, (a, oct(st.st_mode))
                worker = next(d for d in mine if d["role"] == "worker")
                urls = {"master_ui": f"http://127.0.0.1:{master['webui_port']}/json/",
                        "worker_ui": f"http://127.0.0.1:{worker['webui_port']}/",
                        "executor_log": f"http://127.0.0.1:{worker['webui_port']}/logPage/?appId={app_id}"
                                        "&executorId=0&logType=stdout"}
                for port in listening_ports(alice_uid) + [6066]:  # 6066: the master's REST submissions
                    urls[f"port_{port}"] = f"http://127.0.0.1:{port}/api/kernels"
                    urls[f"rest_{port}"] = f"http://127.0.0.1:{port}/v1/submissions/status/driver-0"
                # Every file and folder of hers and of the hub's (root's view), for him to try by name.
                files, dirs = [], []
                for top in (h.state_dir, scratch, home):
                    for root, ds, fs in os.walk(top):
                        if root.startswith(os.path.join(h.state_dir, "envs")):
                            ds[:] = []
                            continue
                        if root.startswith(os.path.join(h.state_dir, "sp-bob")) or "sp-bob" in root:
                            continue
                        dirs.append(root)
                        files += [os.path.join(root, f) for f in fs]
                assert any(f.endswith("/stdout") and "/spark/work/" in f for f in files), files
                targets = {"files": files, "dirs": dirs,
                           "secrets": [s3_secret, rpc_secret, marker], "master": f"spark://127.0.0.1:{master['port']}",
                           "roots": [h.state_dir, os.path.dirname(scratch), home, scratch],
                           "shared": os.path.join(h.state_dir, "envs"), "urls": urls, "bucket": bucket}
                bob = run_code(url(h, "sp-bob"), hub.user_token("sp-bob"),
                               BOB_SPARK.replace("TARGETS", repr(targets)), timeout=400)
            finally:
                Path(release).touch()
            alice = job.result()
        assert alice["error"] is None and "ALICE-DONE" in alice["stdout"], alice
        assert bob["error"] is None, bob["error"] + bob["stderr"][-3000:]
        r = json.loads(bob["stdout"].split("BOB", 1)[1])
        bob_uid = pwd.getpwnam(h.cfg["users"]["system_user_prefix"] + "sp-bob").pw_uid
        assert r["kernel"]["uid"] == r["executor"]["uid"] == bob_uid  # his executors are his account
        # alice's marker did reach her own files (shuffle, executor stdout): the search below can find it.
        hits = subprocess.run(["grep", "-rl", marker, scratch], capture_output=True, text=True).stdout.split()
        assert any("/spark/work/" in f for f in hits), hits
        for side in ("kernel", "executor"):
            a = r[side]
            assert a["cmdlines"] > 10 and a["alice_master_seen"] and a["dirs_tried"] > 10, (side, a)  # he looked
            assert a["cmdline_hits"] == [] and a["secret_files"] == [], (side, a)
            assert a["readable"] == [], (side, a["readable"][:20])
            assert a["writable"] == [], (side, a["writable"])
            assert a["http"]["master_ui"] == a["http"]["worker_ui"] == a["http"]["executor_log"] == 403, (side, a)
            assert not [k for k, v in a["http"].items() if v == 200], (side, a["http"])
            assert a["http"]["rest_6066"] == "URLError", (side, a["http"])  # no REST submission server
            assert a["s3_list"] == a["s3_get"] == a["s3_put"] == "AccessDenied", (side, a)
        assert r["max_parallel_tasks"] <= h.cfg["spark"]["cores_per_user"], r  # cores.max=64 changed nothing
        for how in ("no_secret", "his_secret"):
            assert not r[f"submit_{how}"]["ran"] and r[f"submit_{how}"]["auth_refused"], (how, r)
    finally:
        for u in ("sp-alice", "sp-bob"):
            hub.stop(u)
