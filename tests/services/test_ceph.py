"""Object storage on a real Ceph RADOS Gateway: per-user identities, isolation, shared datasets, rotation,
deletion, repair of interrupted operations, and a gateway that is down."""

from __future__ import annotations

import json

import asyncio
import uuid

import pytest
from botocore.exceptions import ClientError

from ceph_fixture import ceph  # noqa: F401  (session fixture)
from esker.core.contributors import storage_env
from esker.objectstore.errors import StorageUnavailable
from esker.objectstore.names import rgw_name
from esker.objectstore.rgwadmin import Deadline as _Deadline

pytestmark = pytest.mark.ceph

DATASETS = [
    {"name": "climate", "bucket": "workshop-data", "prefix": "climate"},
    {"name": "genomes", "bucket": "workshop-data", "prefix": "genomes", "groups": ["bio"], "writers": ["bio-staff"]},
    {"name": "public", "bucket": "public-data"},
]


def run(coro):
    return asyncio.run(coro)


def denied(fn, *args, **kw) -> bool:
    try:
        fn(*args, **kw)
    except ClientError as e:
        code = e.response["Error"]["Code"]
        assert code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"), code
        return True
    return False


@pytest.fixture(scope="module")
def svc(ceph, tmp_path_factory):  # noqa: F811
    # a fresh prefix per run keeps the tests independent of anything already on the gateway
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    datasets = [{**d, "bucket": f"{prefix[:-1]}x-{d['bucket']}"} for d in DATASETS]
    return ceph.storage_service(tmp_path_factory.mktemp("state"), bucket_prefix=prefix, datasets=datasets,
                                admin_users=["root"], timeout=5)


def client(ceph, grant):  # noqa: F811
    return ceph.s3(grant["access_key"], grant["secret_key"])


def test_grant_shape_and_env(svc):
    g = run(svc.prepare("alice"))
    assert set(g) == {"endpoint", "access_key", "secret_key", "region", "bucket", "datasets", "writable"}
    assert g["bucket"] == rgw_name("alice", svc.prefix)
    assert g["endpoint"] == svc.endpoint
    ds = json.loads(g["datasets"])
    assert set(ds) == {"climate", "public"}  # genomes is for the bio group
    assert json.loads(g["writable"]) == []  # alice is no instructor: her mounts of them are read-only
    env = storage_env(None, type("P", (), {"grants": {"storage": g}})(), None)
    assert env["AWS_ACCESS_KEY_ID"] == g["access_key"] and env["ESKER_BUCKET"] == g["bucket"]
    # prepare is idempotent: same keys, no new key
    assert run(svc.prepare("alice")) == g


def test_own_bucket_read_write_and_isolation(ceph, svc):  # noqa: F811
    a = run(svc.prepare("alice"))
    b = run(svc.prepare("Bob.Smith"))
    assert a["bucket"] != b["bucket"] and a["access_key"] != b["access_key"]
    sa, sb = client(ceph, a), client(ceph, b)
    sa.put_object(Bucket=a["bucket"], Key="notes/x.txt", Body=b"alice's")
    assert sa.get_object(Bucket=a["bucket"], Key="notes/x.txt")["Body"].read() == b"alice's"
    sb.put_object(Bucket=b["bucket"], Key="y", Body=b"bob's")
    # neither reads, writes, lists or deletes in the other's bucket
    assert denied(sb.get_object, Bucket=a["bucket"], Key="notes/x.txt")
    assert denied(sb.put_object, Bucket=a["bucket"], Key="evil", Body=b"x")
    assert denied(sb.list_objects_v2, Bucket=a["bucket"])
    assert denied(sb.delete_object, Bucket=a["bucket"], Key="notes/x.txt")
    assert denied(sa.get_object, Bucket=b["bucket"], Key="y")
    # list_buckets shows only one's own buckets
    assert [x["Name"] for x in sa.list_buckets()["Buckets"]] == [a["bucket"]]
    assert [x["Name"] for x in sb.list_buckets()["Buckets"]] == [b["bucket"]]
    # and a user cannot create (squat) other bucket names
    assert denied_or_limited(sa.create_bucket, Bucket=svc.prefix + "squat")


def denied_or_limited(fn, **kw) -> bool:
    try:
        fn(**kw)
    except ClientError as e:
        return e.response["Error"]["Code"] in ("TooManyBuckets", "AccessDenied")
    return False


def test_shared_dataset_read_only_for_students_writable_by_instructors(ceph, svc):  # noqa: F811
    inst = run(svc.prepare("ina", groups=["instructors"]))
    bucket = next(d.bucket for d in svc.datasets if d.name == "climate")
    si = client(ceph, inst)
    si.put_object(Bucket=bucket, Key="climate/temps.csv", Body=b"year,t\n2020,1.2\n")
    a = run(svc.prepare("alice"))
    b = run(svc.prepare("Bob.Smith"))
    for g in (a, b):
        s = client(ceph, g)
        assert s.get_object(Bucket=bucket, Key="climate/temps.csv")["Body"].read().startswith(b"year")
        keys = [o["Key"] for o in s.list_objects_v2(Bucket=bucket, Prefix="climate/")["Contents"]]
        assert keys == ["climate/temps.csv"]
        assert denied(s.put_object, Bucket=bucket, Key="climate/evil.csv", Body=b"x")
        assert denied(s.delete_object, Bucket=bucket, Key="climate/temps.csv")
        assert denied(s.get_object, Bucket=bucket, Key="genomes/x")  # group-only dataset
        assert denied(s.list_objects_v2, Bucket=bucket, Prefix="genomes/")
    # an admin writes every dataset, too
    root = client(ceph, run(svc.prepare("root")))
    root.put_object(Bucket=bucket, Key="climate/by-admin.csv", Body=b"x")
    # multipart upload by an instructor (what `aws s3 cp` does for large files)
    mp = si.create_multipart_upload(Bucket=bucket, Key="climate/big.bin")
    part = si.upload_part(Bucket=bucket, Key="climate/big.bin", UploadId=mp["UploadId"], PartNumber=1,
                          Body=b"z" * (5 * 1024 * 1024))
    si.complete_multipart_upload(Bucket=bucket, Key="climate/big.bin", UploadId=mp["UploadId"],
                                 MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    assert client(ceph, a).head_object(Bucket=bucket, Key="climate/big.bin")["ContentLength"] == 5 * 1024 * 1024


def test_dataset_writers_group_and_policy_follows_group_changes(ceph, svc):  # noqa: F811
    bucket = next(d.bucket for d in svc.datasets if d.name == "genomes")
    w = run(svc.prepare("wes", groups=["bio-staff"]))
    sw = client(ceph, w)
    sw.put_object(Bucket=bucket, Key="genomes/g1.fa", Body=b">x\nACGT\n")
    assert denied(sw.put_object, Bucket=bucket, Key="climate/not-mine.csv", Body=b"x")  # writer of genomes only
    c = run(svc.prepare("carl"))
    sc = client(ceph, c)
    assert denied(sc.get_object, Bucket=bucket, Key="genomes/g1.fa")
    c = run(svc.prepare("carl", groups=["bio"]))  # joins the group: the policy is rebuilt
    assert sc.get_object(Bucket=bucket, Key="genomes/g1.fa")["Body"].read() == b">x\nACGT\n"
    assert "genomes" in json.loads(c["datasets"])
    run(svc.prepare("carl", groups=[]))  # leaves it
    assert denied(sc.get_object, Bucket=bucket, Key="genomes/g1.fa")
    run(svc.prepare("wes", groups=[]))  # no longer a writer
    assert denied(sw.put_object, Bucket=bucket, Key="genomes/g2.fa", Body=b"x")


def test_public_dataset_whole_bucket(ceph, svc):  # noqa: F811
    bucket = next(d.bucket for d in svc.datasets if d.name == "public")
    si = client(ceph, run(svc.prepare("ina", groups=["instructors"])))
    si.put_object(Bucket=bucket, Key="readme.txt", Body=b"hello")
    sa = client(ceph, run(svc.prepare("alice")))
    assert [o["Key"] for o in sa.list_objects_v2(Bucket=bucket)["Contents"]] == ["readme.txt"]
    assert denied(sa.put_object, Bucket=bucket, Key="x", Body=b"x")
    # anonymous access stays denied
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{svc.endpoint}/{bucket}/readme.txt", timeout=5)
    assert e.value.code == 403


def test_rotation_invalidates_old_keys(ceph, svc):  # noqa: F811
    old = run(svc.prepare("rita"))
    s_old = client(ceph, old)
    s_old.put_object(Bucket=old["bucket"], Key="keep", Body=b"data")
    new = run(svc.rotate("rita"))
    assert new["access_key"] != old["access_key"] and new["secret_key"] != old["secret_key"]
    assert denied(s_old.get_object, Bucket=old["bucket"], Key="keep")
    s_new = client(ceph, new)
    assert s_new.get_object(Bucket=new["bucket"], Key="keep")["Body"].read() == b"data"
    assert run(svc.prepare("rita")) == new  # the next spawn gets the new keys
    info = svc.admin().get_user(new["bucket"], _Deadline(5, "test"))
    assert [k["access_key"] for k in info["keys"]] == [new["access_key"]]


def test_delete_user_disables_keys_and_keeps_data(ceph, svc):  # noqa: F811
    g = run(svc.prepare("dora"))
    s = client(ceph, g)
    s.put_object(Bucket=g["bucket"], Key="thesis.tex", Body=b"\\documentclass")
    run(svc.delete_user("dora"))
    assert denied(s.get_object, Bucket=g["bucket"], Key="thesis.tex")
    assert svc.store.get("dora") is None
    info = svc.admin().get_user(g["bucket"], _Deadline(5, "test"))
    assert info["suspended"] and not info["keys"]
    again = run(svc.prepare("dora"))  # back: new keys, same data
    assert client(ceph, again).get_object(Bucket=g["bucket"], Key="thesis.tex")["Body"].read() == b"\\documentclass"
    run(svc.delete_user("dora", purge=True))
    assert svc.admin().get_user(g["bucket"], _Deadline(5, "test")) is None
    with pytest.raises(ClientError) as e:  # the bucket went with it
        ceph.s3().head_bucket(Bucket=g["bucket"])
    assert e.value.response["Error"]["Code"] == "404"


def test_repairs_user_created_without_recorded_keys(ceph, svc):  # noqa: F811
    """An earlier call created the RGW user but died before recording its keys."""
    uid = rgw_name("erin", svc.prefix)
    orphan = svc.admin().create_user(uid, "erin", 1, _Deadline(5, "test"))["keys"][0]
    svc.admin().create_key(uid, _Deadline(5, "test"))  # and a second stray key
    g = run(svc.prepare("erin"))
    assert g["access_key"] != orphan["access_key"]
    info = svc.admin().get_user(uid, _Deadline(5, "test"))
    assert [k["access_key"] for k in info["keys"]] == [g["access_key"]]  # unknown keys removed
    assert denied(ceph.s3(orphan["access_key"], orphan["secret_key"]).list_buckets)
    client(ceph, g).put_object(Bucket=g["bucket"], Key="ok", Body=b"1")


def test_repairs_interrupted_rotation(ceph, svc):  # noqa: F811
    g = run(svc.prepare("ivan"))
    svc.admin().create_key(g["bucket"], _Deadline(5, "test"))  # rotation died before removing anything
    assert run(svc.prepare("ivan")) == g
    info = svc.admin().get_user(g["bucket"], _Deadline(5, "test"))
    assert [k["access_key"] for k in info["keys"]] == [g["access_key"]]


def test_username_is_sent_as_data_not_as_query_syntax(svc):
    """The RGW display name is the hub username: `&`, `=`, `+` and `#` reach the gateway as characters,
    so a username can neither add Admin Ops parameters (here: an admin cap) nor break the signature."""
    name = "mallory&user-caps=users=*&x+y#z"
    g = run(svc.prepare(name))
    info = svc.admin().get_user(g["bucket"], _Deadline(5, "test"))
    assert info["display_name"] == name
    assert info["caps"] == [] and info["max_buckets"] == svc.user_max_buckets


def test_gateway_down_fails_fast_and_leaves_nothing(ceph, svc, monkeypatch):  # noqa: F811
    """Fails fast: the first refused connection ends the operation with StorageUnavailable; nothing waits
    for storage.timeout and nothing is retried."""
    if ceph.cluster is None:
        pytest.skip("external gateway: cannot stop radosgw")
    run(svc.prepare("alice"))
    admin = svc.admin()
    calls = []
    real = admin.request

    def counted(method, path, params, deadline):
        calls.append((method, path))
        return real(method, path, params, deadline)

    monkeypatch.setattr(admin, "request", counted)
    ceph.cluster.stop_daemon("rgw")
    try:
        with pytest.raises(StorageUnavailable) as e:
            run(svc.prepare("nina"))
        # The refusal itself, not an expired deadline ("did not answer within ..."), after one call.
        assert str(e.value) == f"object storage at {svc.endpoint} is unreachable (connection refused)"
        assert calls == [("GET", "/admin/user")]
        assert svc.store.get("nina") is None
        calls.clear()
        with pytest.raises(StorageUnavailable, match="connection refused"):  # nor is an existing user
            run(svc.prepare("alice"))                                        # served from the cache
        assert calls == [("GET", "/admin/user")]
    finally:
        ceph.restart_rgw()
    assert svc.admin().get_user(rgw_name("nina", svc.prefix), _Deadline(5, "test")) is None
    g = run(svc.prepare("nina"))
    client(ceph, g).put_object(Bucket=g["bucket"], Key="after", Body=b"1")


def test_admin_keys_are_checked(ceph, tmp_path):  # noqa: F811
    from esker.objectstore.errors import StorageError
    from esker.objectstore.service import StorageService

    bad = StorageService(ceph.endpoint, (ceph.access_key, "wrong-secret"), tmp_path, timeout=3)
    with pytest.raises(StorageError, match="refused the admin keys"):
        run(bad.prepare("alice"))


def test_dataset_bucket_owned_by_someone_else_is_skipped(ceph, tmp_path):  # noqa: F811
    """A dataset pointing at another user's bucket is logged and skipped; users still get storage."""
    taken = f"taken-{uuid.uuid4().hex[:6]}"
    ceph.s3().create_bucket(Bucket=taken)  # owned by the admin user, not the datasets owner
    svc2 = ceph.storage_service(tmp_path, bucket_prefix=f"s{uuid.uuid4().hex[:6]}-",
                                datasets=[{"name": "bad", "bucket": taken}, {"name": "good", "bucket": taken + "-ok"}])
    g = run(svc2.prepare("alice"))
    assert json.loads(g["datasets"]) == {"good": f"s3://{taken}-ok/"}
    client(ceph, g).put_object(Bucket=g["bucket"], Key="x", Body=b"1")
