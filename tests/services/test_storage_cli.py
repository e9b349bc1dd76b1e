"""`esker storage ...` and `esker data upload` against a real Ceph RGW."""

from __future__ import annotations

import os
import uuid

import pytest
from botocore.exceptions import ClientError

from ceph_fixture import ceph  # noqa: F401  (session fixture)
from esker.cli import main

pytestmark = pytest.mark.ceph


@pytest.fixture
def env(ceph, tmp_path, monkeypatch):  # noqa: F811
    prefix = f"c{uuid.uuid4().hex[:6]}-"
    bucket = f"{prefix[:-1]}x-workshop"
    cfg = ceph.esker_config(tmp_path, storage={
        "bucket_prefix": prefix,
        "datasets": [{"name": "workshop", "bucket": bucket, "prefix": "day1"}],
    })
    monkeypatch.setenv("ESKER_CONFIG", str(cfg))
    monkeypatch.setenv("ESKER_STATE_DIR", str(tmp_path / "state"))
    return {"bucket": bucket, "prefix": prefix}


def esker(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_show_rotate_delete(ceph, env, capsys):  # noqa: F811
    code, out, err = esker(capsys, "storage", "show", "alice")
    assert code == 1 and "no object storage identity" in err
    code, out, _ = esker(capsys, "storage", "prepare", "alice", "--json", "--show-secret")
    assert code == 0
    import json

    first = json.loads(out)
    code, out, _ = esker(capsys, "storage", "show", "alice")
    assert code == 0 and first["access_key"] in out and first["secret_key"] not in out
    assert f"{env['prefix']}alice" in out and "\"workshop\": \"s3://" in out
    code, out, _ = esker(capsys, "storage", "show", "alice", "--show-secret")
    assert first["secret_key"] in out
    code, out, err = esker(capsys, "storage", "rotate", "alice", "--json")
    assert code == 0 and "old ones no longer work" in err
    rotated = json.loads(out)
    assert rotated["access_key"] != first["access_key"] and first["secret_key"] not in out
    with pytest.raises(ClientError):
        ceph.s3(first["access_key"], first["secret_key"]).list_buckets()
    code, out, _ = esker(capsys, "storage", "delete", "alice")
    assert code == 0 and "suspended" in out
    code, _, err = esker(capsys, "storage", "delete", "alice", "--purge")
    assert code == 2 and "--yes" in err
    assert esker(capsys, "storage", "delete", "alice", "--purge", "--yes")[0] == 0


def test_data_upload_directory_multipart_and_students_read_it(ceph, env, capsys, tmp_path):  # noqa: F811
    src = tmp_path / "dataset"
    (src / "raw").mkdir(parents=True)
    (src / "README.md").write_text("# Day 1\n")
    (src / "raw" / "a.csv").write_text("x,y\n1,2\n")
    big = os.urandom(1024 * 1024) * 12  # 12 MiB: multipart with 5M parts
    (src / "raw" / "big.bin").write_bytes(big)
    url = f"s3://{env['bucket']}/day1/"
    code, out, err = esker(capsys, "data", "upload", str(src), url, "--part-size", "5M")
    assert code == 0, err
    assert "big.bin" in err and "100%" in err and "done: 3 file(s)" in err
    student = ceph.s3(*[__import__("json").loads(esker(capsys, "storage", "prepare", "stu", "--json",
                                                            "--show-secret")[1])[k]
                        for k in ("access_key", "secret_key")])
    keys = sorted(o["Key"] for o in student.list_objects_v2(Bucket=env["bucket"], Prefix="day1/")["Contents"])
    assert keys == ["day1/README.md", "day1/raw/a.csv", "day1/raw/big.bin"]
    obj = student.get_object(Bucket=env["bucket"], Key="day1/raw/big.bin")
    assert obj["ETag"].strip('"').endswith("-3")  # uploaded in 3 parts
    assert obj["Body"].read() == big
    # a single file to an exact key, as an instructor (--as)
    code, _, err = esker(capsys, "storage", "prepare", "ina", "--group", "instructors")
    assert code == 0
    code, _, err = esker(capsys, "data", "upload", str(src / "README.md"), f"s3://{env['bucket']}/day1/notes.md",
                         "--as", "ina")
    assert code == 0, err
    assert student.get_object(Bucket=env["bucket"], Key="day1/notes.md")["Body"].read() == b"# Day 1\n"
    # a student's keys cannot publish
    code, _, err = esker(capsys, "data", "upload", str(src / "README.md"), url, "--as", "stu")
    assert code == 1 and "AccessDenied" in err


def test_upload_errors(ceph, env, capsys, tmp_path):  # noqa: F811
    code, _, err = esker(capsys, "data", "upload", str(tmp_path / "nope"), f"s3://{env['bucket']}/x")
    assert code == 1 and "no such file" in err
    (tmp_path / "f").write_text("x")
    code, _, err = esker(capsys, "data", "upload", str(tmp_path / "f"), "s3://not-ours-at-all/x")
    assert code == 1 and "--as USER" in err
    code, _, err = esker(capsys, "data", "upload", str(tmp_path / "f"), "bucket/x")
    assert code == 1 and "s3://" in err
