"""The bucket-mount builders (esker.objectstore.mounts) and the Spark settings that point s3a:// at them, as
plain data; one real s3fs-free check of the home link (it must not follow what the user planted)."""

from __future__ import annotations

import json
import os

from esker.core.contributors import viewfs_conf
from esker.objectstore import mounts as M

GRANT = {"bucket": "esker-alice", "endpoint": "http://127.0.0.1:9", "access_key": "AK", "secret_key": "SK",
         "datasets": json.dumps({"weather": "s3://esker-data/weather/", "census": "s3://census/",
                                 "deep": "s3://esker-data/a/b/", "inside": "s3://census/2020/"}),
         "writable": json.dumps(["deep"])}


def test_plan_mirrors_the_s3_names_and_mounts_read_only_what_is_only_readable():
    plan = {m.name: m for m in M.plan_mounts(GRANT, "/r/alice")}
    assert set(plan) == {"bucket", "weather", "census", "deep"}  # "inside" is shown by the census mount
    assert plan["bucket"].path == "/r/alice/esker-alice" and not plan["bucket"].read_only
    assert plan["weather"].path == "/r/alice/esker-data/weather" and plan["weather"].read_only
    assert plan["weather"].source == "esker-data:/weather"
    assert plan["deep"].path == "/r/alice/esker-data/a/b" and not plan["deep"].read_only
    assert plan["census"].source == "census" and plan["census"].read_only
    dirs = M.dataset_dirs(plan.values(), GRANT, "/r/alice")
    assert dirs == {"weather": "/r/alice/esker-data/weather", "census": "/r/alice/census",
                    "deep": "/r/alice/esker-data/a/b", "inside": "/r/alice/census/2020"}


def test_no_datasets_is_the_bucket_alone():
    plan = M.plan_mounts({"bucket": "esker-bob"}, "/r/bob")
    assert [(m.name, m.path) for m in plan] == [("bucket", "/r/bob/esker-bob")]


def test_the_command_has_no_secret_and_the_environment_nothing_of_the_hub():
    m = M.plan_mounts(GRANT, "/r/alice")[1]
    cmd = M.s3fs_command(m, GRANT["endpoint"], 1001, 1002)
    text = " ".join(cmd)
    assert "SK" not in cmd and "secret" not in text.lower()
    opts = cmd[cmd.index("-o") + 1].split(",")
    assert {"allow_other", "default_permissions", "uid=1001", "gid=1002", "umask=077", "ro", "nodev",
            "nosuid", "auto_cache", "multipart_size=10", "parallel_count=2"} <= set(opts)
    assert not any(o.startswith("use_cache") for o in opts)
    assert cmd[:4] == ["s3fs", m.source, m.path, "-f"]
    env = M.s3fs_env(m, "AK", "SK", "/state")
    assert env == {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
                   M.MARKER: "/state", M.POINT: m.path, "HOME": "/nonexistent"}


def test_viewfs_maps_each_mounted_bucket_onto_its_folder():
    conf = viewfs_conf({"root": "/r/alice/", "buckets": "esker-data,esker-alice"})
    assert conf["spark.hadoop.fs.s3a.impl"] == "org.apache.hadoop.fs.viewfs.ViewFileSystemOverloadScheme"
    assert conf["spark.hadoop.fs.viewfs.mounttable.esker-alice.linkFallback"] == "file:///r/alice/esker-alice"
    assert conf["spark.hadoop.fs.viewfs.mounttable.esker-data.linkFallback"] == "file:///r/alice/esker-data"
    assert viewfs_conf(None) == {} and viewfs_conf({"root": "/r", "buckets": ""}) == {}


def test_home_link_is_made_once_and_never_through_a_planted_one(tmp_path):
    home, root = tmp_path / "home", str(tmp_path / "root")
    home.mkdir()
    uid, gid = os.getuid(), os.getgid()
    assert M.link_home(str(home), root, uid, gid) == str(home / "s3")
    assert os.readlink(home / "s3") == root
    assert M.link_home(str(home), root, uid, gid) == str(home / "s3")  # again: the same link
    other = tmp_path / "other"
    other.mkdir()
    (home / "s3").unlink()
    (home / "s3").symlink_to(other)  # the user's own link elsewhere: theirs, kept
    assert M.link_home(str(home), root, uid, gid) == ""
    assert os.readlink(home / "s3") == str(other)
    # A home that is itself a link is refused (O_NOFOLLOW), not followed.
    (tmp_path / "h2").symlink_to(other)
    try:
        M.link_home(str(tmp_path / "h2"), root, uid, gid)
    except OSError:
        pass
    else:
        raise AssertionError("followed a linked home")
    assert not (other / "s3").exists()


def test_a_read_only_dataset_has_one_shared_mount_per_owner_key_readable_only_through_binds():
    weather = {m.name: m for m in M.plan_mounts(GRANT, "/r/alice")}["weather"]
    for_bob = {m.name: m for m in M.plan_mounts(GRANT, "/r/bob")}["weather"]
    point = M.shared_point("/state", weather, "OWNER-AK")
    assert point.startswith("/state/mounts/.shared/") and "OWNER" not in point
    assert M.shared_point("/state", for_bob, "OWNER-AK") == point  # every reader's plan meets the same mount
    assert M.shared_point("/state", weather, "ROTATED-AK") != point  # a new owner key: a new mount
    census = {m.name: m for m in M.plan_mounts(GRANT, "/r/alice")}["census"]
    assert M.shared_point("/state", census, "OWNER-AK") != point
    src, cmd = M.shared_command(weather, point, GRANT["endpoint"])
    assert src.path == point and src.source == weather.source and src.read_only
    assert cmd[:3] == ["s3fs", "esker-data:/weather", point]
    opts = cmd[cmd.index("-o") + 1].split(",")
    assert {"uid=0", "gid=0", "umask=0222", "mp_umask=0222", "ro", "allow_other", "default_permissions",
            "nosuid", "nodev"} <= set(opts)
    assert M.s3fs_env(src, "AK", "SK", "/state")[M.POINT] == point  # `esker stop --all` finds it


MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:55 / /s/mounts/.shared/abc ro,nosuid,nodev,relatime shared:40 - fuse.s3fs s3fs ro,user_id=0
91 22 0:55 / /s/mounts/alice/esker-data/weather ro,nosuid,nodev,relatime shared:40 - fuse.s3fs s3fs ro
92 22 0:56 / /s/mounts/alice/esker-alice rw,nosuid,nodev,relatime shared:41 - fuse.s3fs s3fs rw
93 22 0:55 / /s/mounts/bob\\040b/esker-data/weather ro,nosuid,nodev,relatime shared:40 - fuse.s3fs s3fs ro
"""


def test_binds_are_the_other_mount_points_of_the_same_device():
    assert M.binds_in(MOUNTINFO, "/s/mounts/.shared/abc") == ["/s/mounts/alice/esker-data/weather",
                                                              "/s/mounts/bob b/esker-data/weather"]
    assert M.binds_in(MOUNTINFO, "/s/mounts/alice/esker-alice") == []
    assert M.binds_in(MOUNTINFO, "/not/mounted") == []
