"""esker_client.functions.store on a real Ceph RADOS Gateway: versions, aliases, deletion refusal, and that
another user's keys cannot read or change alice's functions."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from ceph_fixture import ceph  # noqa: F401  (session fixture)
from esker.core.contributors import storage_env

try:
    import esker_client  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images" / "esker-client" / "src"))

from esker_client.functions.store import FunctionStore  # noqa: E402
from esker_client.functions.versions import VersionInUse, aliases_after_publish, version_id  # noqa: E402

pytestmark = pytest.mark.ceph


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def grants(ceph, tmp_path_factory):  # noqa: F811
    svc = ceph.storage_service(tmp_path_factory.mktemp("state"), bucket_prefix=f"f{uuid.uuid4().hex[:6]}-",
                               timeout=5)
    return run(svc.prepare("alice")), run(svc.prepare("bob"))


def manifest(name, code, created, semver=None):
    return {"name": name, "vid": version_id(code, "minimal", {}, ["x==1"]), "semver": semver, "entry": "f",
            "profile": "minimal", "options": {}, "source": "module", "origin": "/home/alice/m.py",
            "created": created, "timeout": None, "concurrency": None, "schema": {}, "packages_hash": "0"}


def test_store_versions_aliases_and_isolation(ceph, grants, monkeypatch):  # noqa: F811
    a, b = grants
    # alice's store built the way a notebook builds it: from the injected environment
    env = storage_env(None, type("P", (), {"grants": {"storage": a}})(), None)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    st = FunctionStore()
    assert st.bucket == a["bucket"]

    m1 = manifest("predict", "def f(): return 1\n", "2026-01-01T00:00:00Z", "1.0.0")
    m2 = manifest("predict", "def f(): return 2\n", "2026-01-02T00:00:00Z")
    st.put_version("predict", m1, "def f(): return 1\n")
    st.put_version("predict", m2, "def f(): return 2\n")
    st.put_version("score", manifest("score", "def f(): return 3\n", "2026-01-03T00:00:00Z"), "def f(): return 3\n")
    assert st.list_functions() == ["predict", "score"]
    assert [m["vid"] for m in st.list_versions("predict")] == [m2["vid"], m1["vid"]]  # newest first
    assert st.get_manifest("predict", m1["vid"]) == m1
    assert st.get_code("predict", m2["vid"]) == "def f(): return 2\n"
    assert st.get_manifest("predict", "0" * 16) is None and st.get_aliases("nothing") == {}

    al = aliases_after_publish(aliases_after_publish({}, m1["vid"], "1.0.0"), m2["vid"])
    st.set_aliases("predict", al)
    assert st.get_aliases("predict") == al
    # the exact layout of docs/functions.md
    keys = sorted(o["Key"] for o in ceph.s3(a["access_key"], a["secret_key"]).list_objects_v2(
        Bucket=a["bucket"], Prefix=".esker/functions/predict/")["Contents"])
    assert keys == sorted([".esker/functions/predict/aliases.json"] + [
        f".esker/functions/predict/versions/{m['vid']}/{f}" for m in (m1, m2) for f in ("code.py", "manifest.json")])

    with pytest.raises(VersionInUse, match="1.0.0") as e:
        st.delete_version("predict", m1["vid"])
    assert e.value.aliases == ["1", "1.0", "1.0.0"]
    assert st.get_code("predict", m1["vid"]) is not None  # nothing was lost

    # bob, with his own keys, can neither read, list, overwrite nor delete alice's functions
    sb = ceph.s3(b["access_key"], b["secret_key"])
    key = f".esker/functions/predict/versions/{m1['vid']}/code.py"
    for call, kw in ((sb.get_object, {"Key": key}), (sb.list_objects_v2, {"Prefix": ".esker/"}),
                     (sb.put_object, {"Key": ".esker/functions/predict/aliases.json", "Body": b"{}"}),
                     (sb.delete_object, {"Key": key})):
        with pytest.raises(ClientError) as err:
            call(Bucket=a["bucket"], **kw)
        assert err.value.response["Error"]["Code"] in ("AccessDenied", "403"), call
    with pytest.raises(ClientError):
        FunctionStore(sb, a["bucket"]).list_functions()
    assert st.get_aliases("predict") == al and st.get_code("predict", m1["vid"]) == "def f(): return 1\n"

    # once no alias names it, a version can go; then the whole function
    st.set_aliases("predict", {"latest": m2["vid"]})
    st.delete_version("predict", m1["vid"])
    assert [m["vid"] for m in st.list_versions("predict")] == [m2["vid"]]
    assert st.get_code("predict", m1["vid"]) is None
    st.delete_function("predict")
    assert st.list_functions() == ["score"] and st.get_aliases("predict") == {}


def test_concurrent_alias_updates_on_the_gateway_lose_nothing(ceph, grants):  # noqa: F811
    """The gateway honours the ETag preconditions update_aliases relies on (If-Match, If-None-Match: *)."""
    a, _ = grants
    s3 = ceph.s3(a["access_key"], a["secret_key"])
    key = ".esker/functions/race/aliases.json"
    s3.put_object(Bucket=a["bucket"], Key=key, Body=b"{}", IfNoneMatch="*")
    for cond in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket=a["bucket"], Key=key, Body=b'{"latest": "x"}', **cond)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412, cond
    assert s3.get_object(Bucket=a["bucket"], Key=key)["Body"].read() == b"{}"

    mine, theirs = FunctionStore(s3, a["bucket"]), FunctionStore(s3, a["bucket"])
    rounds = []

    def latest(al):
        rounds.append(dict(al))
        if len(rounds) == 1:  # another publish lands between our read and our write
            theirs.update_aliases("race", lambda x: {**x, "1.0.0": "a" * 16})
        return {**al, "latest": "b" * 16}

    mine.update_aliases("race", latest)
    assert len(rounds) == 2
    assert mine.get_aliases("race") == {"1.0.0": "a" * 16, "latest": "b" * 16}
