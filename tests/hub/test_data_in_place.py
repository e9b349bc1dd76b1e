"""Data in place, embedded: a real hub, the session's real Ceph RGW, real s3fs mounts and each Spark server's
own cluster. A user uploads with the injected environment, Spark reads and writes s3a:// on its executors,
pandas and open() see the same objects as files; datasets are read-only for participants and writable for
instructors; nobody reaches another user's mount; the mounts end with the server."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import needs_root
from esker.hubapi import run_code
from esker.objectstore import mounts

pytestmark = [pytest.mark.integration, needs_root,
              pytest.mark.skipif(mounts.unsupported() is not None, reason=str(mounts.unsupported()))]


def run(h, hub, name: str, code: str, timeout: float = 300) -> str:
    out = run_code(f"{h.url}/user/{name}/", hub.user_token(name), code, timeout=timeout)
    assert out["error"] is None, out["error"] + out["stderr"][-3000:] + "\nhub log:\n" + h.log_tail(40)
    return out["stdout"]


def result(stdout: str, tag: str):
    return json.loads(stdout.split(tag, 1)[1].splitlines()[0])


def mounted_under(root: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(root.rstrip("/") + "/")]


SPARK_ROUND_TRIP = r"""
import json, os, pandas as pd, esker_client as ec
from pyspark.sql import SparkSession
b, root = os.environ["ESKER_BUCKET"], os.environ["ESKER_S3_DIR"]
ec.s3_client().put_object(Bucket=b, Key="in/cities.json",
    Body=b'{"city": "Boston", "t": 3}\n{"city": "Paris", "t": 5}\n{"city": "Boston", "t": 7}\n')
spark = SparkSession.builder.getOrCreate()   # no setup cell
df = spark.read.json(f"s3a://{b}/in/cities.json")
sums = {r["city"]: r["s"] for r in df.groupBy("city").agg({"t": "sum"}).withColumnRenamed("sum(t)", "s").collect()}
df.write.mode("overwrite").partitionBy("city").parquet(f"s3a://{b}/out/by_city")
df.write.mode("overwrite").option("header", True).csv(f"s3a://{b}/out/csv")
paris = spark.read.parquet(f"s3a://{b}/out/by_city").where("city = 'Paris'")
plan = paris._jdf.queryExecution().executedPlan().toString()
csv = spark.read.option("header", True).csv(f"s3a://{b}/out/csv").count()
keys = sorted(o["Key"] for o in ec.s3_client().list_objects_v2(Bucket=b, Prefix="out/")["Contents"])
local = os.path.join(root, b)
print("R" + json.dumps({
    "sums": sums, "paris": [r["t"] for r in paris.collect()], "pruned": "PartitionFilters: [isnotnull(city" in plan,
    "csv": csv, "keys": keys, "ls": sorted(os.listdir(local)), "ls_home": sorted(os.listdir(os.path.expanduser("~/s3/" + b))),
    "pandas": int(pd.read_parquet(os.path.join(local, "out/by_city"))["t"].sum()),
    "open": open(os.path.join(local, "in/cities.json")).read().count("city"),
    "executors": sorted(set(spark.sparkContext.parallelize(range(4), 2).map(lambda _: os.getuid()).collect())),
    "uid": os.getuid(), "root": root}))
spark.stop()
"""


def test_spark_pandas_and_files_read_and_write_the_users_bucket(running_hub, hub):
    h, name = running_hub, "data-alice"
    hub.ensure_user(name)
    hub.spawn(name, {"profile": "spark"})
    try:
        r = result(run(h, hub, name, SPARK_ROUND_TRIP), "R")
        assert r["sums"] == {"Boston": 10, "Paris": 5}
        assert r["paris"] == [5] and r["pruned"], r
        assert r["csv"] == 3
        assert any(k.startswith("out/by_city/city=Paris/") and k.endswith(".parquet") for k in r["keys"]), r["keys"]
        assert "out/by_city/_SUCCESS" in r["keys"] and not any(k.endswith(".crc") for k in r["keys"]), r["keys"]
        assert not any("_temporary" in k for k in r["keys"]), r["keys"]  # the committer's scratch is gone
        assert r["ls"] == ["in", "out"] and r["ls_home"] == r["ls"]
        assert r["pandas"] == 15 and r["open"] == 3
        assert r["executors"] == [r["uid"]]  # the reads ran as the user
        root = r["root"]
        assert root.startswith(os.path.join(h.state_dir, "mounts") + "/")
        st = os.stat(root)
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o750"), "root's folder, the user's group only"
        # No secret of hers on the s3fs command lines (they are root's; their environment is root's alone).
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        secret = run(h, hub, name, "import os; print('S' + os.environ['AWS_SECRET_ACCESS_KEY'])").split("S", 1)[1].strip()
        assert secret not in ps
        assert [p for p, point in mounts.running() if point.startswith(root)], "her s3fs daemons"
    finally:
        hub.stop(name)
    assert mounted_under(root) == [], "the mounts end with the server"
    assert not [p for p, point in mounts.running() if point.startswith(root)], "and so do their daemons"


WRITE_DATASET = r"""
import json, os, errno
d = json.loads(os.environ["ESKER_DATASET_DIRS"])["weather"]
out = {"dir": d}
try:
    with open(os.path.join(d, "from-instructor.json"), "w") as f:
        f.write('{"day": 1, "t": 20}\n')
    out["wrote"] = True
except OSError as e:
    out["wrote"], out["errno"] = False, errno.errorcode.get(e.errno)
out["ls"] = sorted(os.listdir(d))
try:
    import esker_client as ec
    ec.s3_client().put_object(Bucket=os.environ["ESKER_DATASETS"] and json.loads(os.environ["ESKER_DATASETS"])["weather"].split("/")[2],
                              Key="weather/by-api.json", Body=b"{}")
    out["api"] = "written"
except Exception as e:
    out["api"] = type(e).__name__ + ":" + str(getattr(e, "response", {}).get("Error", {}).get("Code"))
print("W" + json.dumps(out))
"""


def test_datasets_are_read_only_for_participants_and_writable_for_instructors(running_hub, hub):
    h = running_hub
    hub.ensure_user("data-teacher", groups=["instructors"])
    hub.ensure_user("data-student")
    hub.spawn("data-teacher", {"profile": "minimal"})
    try:
        w = result(run(h, hub, "data-teacher", WRITE_DATASET), "W")
        assert w["wrote"] and "from-instructor.json" in w["ls"], w
        assert w["api"] == "written", w
    finally:
        hub.stop("data-teacher")
    hub.spawn("data-student", {"profile": "minimal"})
    try:
        out = run(h, hub, "data-student", WRITE_DATASET + r"""
print("C" + json.dumps({f: open(os.path.join(d, f)).read() for f in ("from-instructor.json", "by-api.json")}))
""")
        w = result(out, "W")
        assert not w["wrote"] and w["errno"] == "EROFS", w
        assert "from-instructor.json" in w["ls"] and "by-api.json" in w["ls"], w
        assert w["api"].endswith(":AccessDenied"), w
        # Both readable through her mount: the one written through the instructor's mount and the one he
        # uploaded with his own keys (his object, by S3's ownership, which the mount's keys read by policy).
        assert result(out, "C") == {"from-instructor.json": '{"day": 1, "t": 20}\n', "by-api.json": "{}"}
    finally:
        hub.stop("data-student")


def test_a_dataset_policy_change_reaches_the_participant_at_the_next_start(running_hub, hub):
    """Made an instructor (a writer of every dataset) between two starts, dana can write the dataset, through
    the mount and the S3 API alike; no longer one, the next start is read-only again, at both doors."""
    h, name = running_hub, "data-dana"
    hub.ensure_user(name)
    hub.ensure_user("data-teacher", groups=["instructors"])  # the group exists

    def attempt() -> dict:
        hub.spawn(name, {"profile": "minimal"})
        try:
            return result(run(h, hub, name, WRITE_DATASET), "W")
        finally:
            hub.stop(name)

    w = attempt()
    assert not w["wrote"] and w["errno"] == "EROFS" and w["api"].endswith(":AccessDenied"), w
    hub.request("POST", "/groups/instructors/users", json={"users": [name]}).raise_for_status()
    w = attempt()
    assert w["wrote"] and w["api"] == "written", w
    hub.request("DELETE", "/groups/instructors/users", json={"users": [name]}).raise_for_status()
    w = attempt()
    assert not w["wrote"] and w["errno"] == "EROFS" and w["api"].endswith(":AccessDenied"), w


def test_a_user_cannot_reach_another_users_mounts(running_hub, hub):
    h = running_hub
    hub.ensure_user("data-carol")
    hub.ensure_user("data-mallory")
    hub.spawn("data-carol", {"profile": "minimal"})
    hub.spawn("data-mallory", {"profile": "minimal"})
    try:
        root, bucket = run(h, hub, "data-carol", "import os; print('D' + os.environ['ESKER_S3_DIR'] + ' ' + "
                           "os.environ['ESKER_BUCKET'])").split("D", 1)[1].split()
        run(h, hub, "data-carol", "import os, esker_client as ec; "
            "open(os.path.join(os.environ['ESKER_S3_DIR'], ec.bucket(), 'private.txt'), 'w').write('carol only')")
        code = f"""
import json, os
root, bucket = {root!r}, {bucket!r}
out = {{}}
for what, f in [("list_root", lambda: os.listdir(root)),
                ("list_bucket", lambda: os.listdir(os.path.join(root, bucket))),
                ("read", lambda: open(os.path.join(root, bucket, "private.txt")).read()),
                ("write", lambda: open(os.path.join(root, bucket, "planted.txt"), "w").write("x"))]:
    try:
        f(); out[what] = "ok"
    except OSError as e:
        out[what] = type(e).__name__
# Every s3fs daemon's environment (her keys) is root's.
envs = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            if open(f"/proc/{{pid}}/comm").read().strip() == "s3fs":
                try:
                    open(f"/proc/{{pid}}/environ").read(); envs.append("readable")
                except OSError as e:
                    envs.append(type(e).__name__)
        except OSError:
            pass
out["s3fs_environ"] = sorted(set(envs))
print("M" + json.dumps(out))
"""
        m = result(run(h, hub, "data-mallory", code), "M")
        assert {m[k] for k in ("list_root", "list_bucket", "read", "write")} == {"PermissionError"}, m
        assert m["s3fs_environ"] == ["PermissionError"], m
    finally:
        hub.stop("data-carol")
        hub.stop("data-mallory")


def test_readers_of_a_dataset_share_one_mount_and_its_page_cache(running_hub, hub):
    """Two participants read the weather dataset through one s3fs daemon: what the first reads, the second
    finds in memory. Each reaches it only through a read-only bind in their own folder; the shared mount's
    own place is root's; it ends with its last reader."""
    h = running_hub
    hub.ensure_user("data-teacher", groups=["instructors"])
    hub.spawn("data-teacher", {"profile": "minimal"})
    try:  # 1 MB in the dataset, uploaded by its writer with his own keys (his object, by S3's ownership)
        run(h, hub, "data-teacher", "import os, json, esker_client as ec; b, _, p = json.loads(os.environ["
            "'ESKER_DATASETS'])['weather'][5:].partition('/'); ec.s3_client().put_object(Bucket=b, "
            "Key=p.rstrip('/') + '/shared-probe.bin', Body=os.urandom(1 << 20))")
    finally:
        hub.stop("data-teacher")
    names = ["data-p1", "data-p2"]
    for n in names:
        hub.ensure_user(n)
        hub.spawn(n, {"profile": "minimal"})
    shared_top = os.path.join(os.path.realpath(h.state_dir), "mounts", mounts.SHARED)
    try:
        dirs = {n: json.loads(run(h, hub, n, "import os; print('D' + os.environ['ESKER_DATASET_DIRS'])")
                              .split("D", 1)[1].splitlines()[0])["weather"] for n in names}
        daemons = [(p, point) for p, point in mounts.running() if point.startswith(shared_top + "/")]
        assert len(daemons) == 1, daemons
        point = daemons[0][1]
        with open("/proc/self/mountinfo") as f:
            info = f.read()
        binds = mounts.binds_in(info, point)
        assert sorted(binds) == sorted(os.path.realpath(d) for d in dirs.values()), (binds, dirs)
        for line in info.splitlines():
            if line.split()[4] in binds:
                assert {"ro", "nosuid", "nodev"} <= set(line.split()[5].split(",")), line
        assert (os.stat(shared_top).st_uid, oct(os.stat(shared_top).st_mode & 0o777)) == (0, "0o700")
        # The page cache is one: drop a file's pages through p2's path, p1 reads it, p2's path has it all.
        name = "shared-probe.bin"
        theirs = os.path.join(dirs["data-p2"], name)
        fd = os.open(theirs, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

        def resident(path: str = theirs) -> int:
            out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                                 capture_output=True, text=True, check=True).stdout
            return int(out.split()[0])

        assert resident() == 0
        size = int(run(h, hub, "data-p1", f"import os, json; d = json.loads(os.environ['ESKER_DATASET_DIRS'])"
                                          f"['weather']; print('N' + str(len(open(os.path.join(d, {name!r}), 'rb')"
                                          f".read())))").split("N", 1)[1].split()[0])
        assert size == 1 << 20 and resident() == size, (resident(), resident(os.path.join(point, name)))
        # p2, hostile: the shared mount's own place and p1's bind are closed to her; writing hers is EROFS.
        probe = f"""
import errno, json, os
out = {{}}
for what, f in [("shared", lambda: os.listdir({shared_top!r})), ("p1", lambda: os.listdir({dirs['data-p1']!r})),
                ("write", lambda: open(os.path.join({dirs['data-p2']!r}, "planted"), "w"))]:
    try:
        f(); out[what] = "ok"
    except OSError as e:
        out[what] = errno.errorcode.get(e.errno)
print("H" + json.dumps(out))
"""
        assert result(run(h, hub, "data-p2", probe), "H") == {"shared": "EACCES", "p1": "EACCES", "write": "EROFS"}
        hub.stop("data-p1")
        assert mounts.binds_in(open("/proc/self/mountinfo").read(), point) == [os.path.realpath(dirs["data-p2"])]
        assert name in run(h, hub, "data-p2", f"import os; print(os.listdir({dirs['data-p2']!r}))")
    finally:
        for n in names:
            hub.stop(n)
    assert not [p for p, at in mounts.running() if at.startswith(shared_top + "/")], "it ends with its last reader"
    assert mounted_under(shared_top) == [] and mounted_under(os.path.dirname(dirs["data-p2"])) == []
