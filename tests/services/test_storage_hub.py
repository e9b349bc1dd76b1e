"""Object storage end to end through the real hub and a real Ceph RGW: two users spawned, each working in
its own bucket from its kernel with only the injected environment (boto3, pandas + s3fs), the shared
dataset readable and not writable, an instructor writing it, key rotation, and RGW going down."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import needs_root
from esker.hubapi import run_code

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.ceph, needs_root]

S3_PROBE = """
import json, os, boto3, botocore
s3 = boto3.client("s3")   # endpoint, keys and region all come from the injected AWS_* variables
me = os.environ["ESKER_BUCKET"]
r = {"bucket": me, "endpoint": os.environ["AWS_ENDPOINT_URL"] == os.environ["S3_ENDPOINT_URL"]}
def attempt(name, fn):
    try:
        fn(); r[name] = "ok"
    except botocore.exceptions.ClientError as e:
        r[name] = e.response["Error"]["Code"]
attempt("put_own", lambda: s3.put_object(Bucket=me, Key="hello.txt", Body=b"hi from " + me.encode()))
attempt("get_own", lambda: s3.get_object(Bucket=me, Key="hello.txt")["Body"].read())
other = OTHER
attempt("get_other", lambda: s3.get_object(Bucket=other, Key="hello.txt"))
attempt("put_other", lambda: s3.put_object(Bucket=other, Key="x", Body=b"x"))
attempt("list_other", lambda: s3.list_objects_v2(Bucket=other))
r["buckets"] = [b["Name"] for b in s3.list_buckets()["Buckets"]]
ds = json.loads(os.environ["ESKER_DATASETS"])["weather"]
bucket, prefix = ds[5:].split("/", 1)
attempt("read_dataset", lambda: s3.get_object(Bucket=bucket, Key=prefix + "stations.json")["Body"].read())
attempt("write_dataset", lambda: s3.put_object(Bucket=bucket, Key=prefix + "vandalism.txt", Body=b"x"))
print("S3" + json.dumps(r))
"""

PANDAS = """
import os, pandas as pd
url = f"s3://{os.environ['ESKER_BUCKET']}/frame.csv"
pd.DataFrame({"t": [1.5, 2.5, 3.0]}).to_csv(url, index=False)   # s3fs reads AWS_ENDPOINT_URL
print("MEAN", pd.read_csv(url)["t"].mean())
"""


def url(h, name):
    return f"{h.url}/user/{name}/"


def s3_probe(h, hub, name, other_bucket):
    out = run_code(url(h, name), hub.user_token(name), S3_PROBE.replace("OTHER", repr(other_bucket)))
    assert out["error"] is None, out["error"]
    return json.loads(out["stdout"].split("S3", 1)[1])


def test_two_users_own_buckets_shared_dataset_and_instructor(running_hub, hub, ceph):
    h = running_hub
    hub.ensure_user("s3-ann")
    hub.ensure_user("s3-ben")
    hub.ensure_user("s3-teacher", groups=["instructors"])
    try:
        for u in ("s3-ann", "s3-ben", "s3-teacher"):
            model = hub.spawn(u, {"profile": "scikit-learn"})
            assert any("Object storage ready" in e.get("message", "") for e in model["events"]), model["events"]
        # The instructor publishes the dataset from their own server, with their own injected keys.
        out = run_code(url(h, "s3-teacher"), hub.user_token("s3-teacher"), """
import json, os, boto3
ds = json.loads(os.environ["ESKER_DATASETS"])["weather"]
bucket, prefix = ds[5:].split("/", 1)
boto3.client("s3").put_object(Bucket=bucket, Key=prefix + "stations.json", Body=b'[{"id": 1}]')
print("PUBLISHED")
""")
        assert "PUBLISHED" in out["stdout"], out

        state = hub.request("GET", "/users/s3-ann").json()["servers"][""]["state"]
        ann = s3_probe(h, hub, "s3-ann", "placeholder")
        ben = s3_probe(h, hub, "s3-ben", ann["bucket"])
        ann = s3_probe(h, hub, "s3-ann", ben["bucket"])
        for me, r in (("ann", ann), ("ben", ben)):
            assert r["endpoint"] and r["put_own"] == r["get_own"] == "ok", (me, r)
            assert r["get_other"] in ("AccessDenied", "NoSuchBucket", "403"), (me, r)
            assert r["put_other"] == "AccessDenied" and r["list_other"] == "AccessDenied", (me, r)
            assert r["buckets"] == [r["bucket"]], (me, r)  # cannot list anybody else's bucket
            assert r["read_dataset"] == "ok" and r["write_dataset"] == "AccessDenied", (me, r)
        assert ann["bucket"] != ben["bucket"]
        # the hub database holds no keys: they live encrypted in Esker's own store
        assert state and "secret" not in json.dumps(state).lower()

        out = run_code(url(h, "s3-ann"), hub.user_token("s3-ann"), PANDAS)
        assert out["error"] is None, out["error"]
        assert "MEAN 2.333" in out["stdout"]
    finally:
        for u in ("s3-ann", "s3-ben", "s3-teacher"):
            hub.stop(u)


def test_key_rotation_invalidates_old_keys(running_hub, hub):
    h = running_hub
    hub.ensure_user("s3-rot")
    hub.spawn("s3-rot", {"profile": "minimal"})
    try:
        token = hub.user_token("s3-rot")
        code = ("import boto3, os\n"
                "print('LIST', boto3.client('s3').list_objects_v2(Bucket=os.environ['ESKER_BUCKET'])['KeyCount'])")
        assert "LIST" in run_code(url(h, "s3-rot"), token, code)["stdout"]
        r = subprocess.run([str(REPO / ".venv" / "bin" / "esker"), "storage", "rotate", "s3-rot"],
                           env=h.env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out = run_code(url(h, "s3-rot"), token, code)  # the running server still has the old keys
        assert out["error"] and "InvalidAccessKeyId" in out["error"], out
    finally:
        hub.stop("s3-rot")
    # the next spawn gets the new keys
    hub.spawn("s3-rot", {"profile": "minimal"})
    try:
        assert "LIST" in run_code(url(h, "s3-rot"), hub.user_token("s3-rot"), code)["stdout"]
    finally:
        hub.stop("s3-rot")


def test_rgw_down_spawns_without_storage_and_says_why(running_hub, hub, ceph):
    if ceph.cluster is None:
        pytest.skip("external gateway: cannot stop it")
    h = running_hub
    hub.ensure_user("s3-down")
    ceph.cluster.stop_daemon("rgw")
    try:
        model = hub.spawn("s3-down", {"profile": "minimal"})
        messages = " ".join(e.get("message", "") for e in model["events"])
        assert "Object storage is unavailable" in messages and "starting without it" in messages
        out = run_code(url(h, "s3-down"), hub.user_token("s3-down"),
                       "import os; print('ENDPOINT', os.environ.get('AWS_ENDPOINT_URL'))")
        assert "ENDPOINT None" in out["stdout"]
        hub.stop("s3-down")
    finally:
        ceph.restart_rgw()
    # back up: the next spawn provisions (and repairs) the user
    hub.spawn("s3-down", {"profile": "minimal"})
    try:
        out = run_code(url(h, "s3-down"), hub.user_token("s3-down"),
                       "import boto3, os; boto3.client('s3').head_bucket(Bucket=os.environ['ESKER_BUCKET']); print('OK')")
        assert "OK" in out["stdout"], out
    finally:
        hub.stop("s3-down")
