"""The function server reading its versions from a real bucket (Ceph RGW), with the variables the hub injects
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ESKER_BUCKET)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from ceph_fixture import ceph  # noqa: F401  (session fixture)
from tests.unit.fnserver_fixtures import SCOPE, FakeHub, Server, auth

pytestmark = pytest.mark.ceph

V1, V2 = "0123456789abcdef", "fedcba9876543210"


def put_version(s3, bucket, vid, answer):
    base = f".esker/functions/demo/versions/{vid}"
    s3.put_object(Bucket=bucket, Key=f"{base}/code.py", Body=f"def predict(x: float) -> float:\n    return x * {answer}\n")
    s3.put_object(Bucket=bucket, Key=f"{base}/manifest.json", Body=json.dumps(
        {"name": "demo", "vid": vid, "semver": None, "entry": "predict", "timeout": 10, "concurrency": 1}))


def test_versions_come_from_the_owners_bucket_and_a_rollback_follows_it(ceph, tmp_path):  # noqa: F811
    bucket = f"fn{uuid.uuid4().hex[:8]}"
    s3 = ceph.s3()
    s3.create_bucket(Bucket=bucket)
    hub = FakeHub()
    hub.add("alice-token", "alice", [SCOPE])
    server = None
    try:
        put_version(s3, bucket, V1, 2)
        put_version(s3, bucket, V2, 3)
        s3.put_object(Bucket=bucket, Key=".esker/functions/demo/aliases.json",
                      Body=json.dumps({"latest": V2, "1.0.0": V1}))
        server = Server(tmp_path, hub, "", ESKER_BUCKET=bucket, AWS_ENDPOINT_URL=ceph.endpoint,
                        AWS_ACCESS_KEY_ID=ceph.access_key, AWS_SECRET_ACCESS_KEY=ceph.secret_key,
                        AWS_DEFAULT_REGION=ceph.region).start()
        r = requests.post(server.url, json={"x": 2}, headers=auth("alice-token"), timeout=30)
        assert r.status_code == 200 and r.json() == 6.0 and r.headers["X-Esker-Version"] == V2
        assert set(requests.get(server.url + "api", headers=auth("alice-token"), timeout=10).json()["versions"]) \
            == {V1, V2}
        s3.put_object(Bucket=bucket, Key=".esker/functions/demo/aliases.json",
                      Body=json.dumps({"latest": V1, "1.0.0": V1}))  # the rollback
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = requests.post(server.url, json={"x": 2}, headers=auth("alice-token"), timeout=30)
            if r.headers.get("X-Esker-Version") == V1:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.json() == 4.0 and r.headers["X-Esker-Version"] == V1
        code = server.scratch / "esker-functions" / "demo" / V1 / "code.py"
        assert code.stat().st_mode & 0o077 == 0 and code.parent.stat().st_mode & 0o077 == 0
    finally:
        if server:
            server.stop()
        hub.close()
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        s3.delete_bucket(Bucket=bucket)


def test_a_bucket_it_cannot_read_is_a_one_line_startup_error(ceph, tmp_path):  # noqa: F811
    import subprocess
    import sys
    hub = FakeHub()
    try:
        s = Server(tmp_path, hub, "", ESKER_BUCKET=f"nobucket{uuid.uuid4().hex[:6]}", AWS_ENDPOINT_URL=ceph.endpoint,
                   AWS_ACCESS_KEY_ID=ceph.access_key, AWS_SECRET_ACCESS_KEY=ceph.secret_key,
                   AWS_DEFAULT_REGION=ceph.region)
        p = subprocess.run([sys.executable, "-m", "esker_client.functions.serve"], env=s.env, capture_output=True,
                           text=True, timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "NoSuchBucket" in lines[0], p.stderr
    finally:
        hub.close()
