"""GPU exclusivity by the kernel, for real: device nodes of NVIDIA's major (195) made with mknod in a temporary
directory, opened by a process that joined a server's group and then became ``nobody``.

With no NVIDIA driver loaded, an allowed GPU node opens with ENXIO/ENODEV ("no such device") and a forbidden one
with EPERM, from the cgroup. Both mechanisms run on a hybrid host: v1's devices controller, and the BPF program on
a cgroup2 directory (there the child's v1 devices cgroup is the root's allow-all, so any EPERM is the program's).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from esker.system import devices
from esker.system.cgroups import Group, Limiter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and mknod need root")

PYTHON = "/usr/bin/python3"  # the child runs as nobody: the project's venv may be under an unreadable /root
NOBODY = pwd.getpwnam("nobody")
ALLOWED = {"ENXIO", "ENODEV", "ok"}  # "ok": a host with NVIDIA's driver loaded, where the node opens
GPU_MINORS = range(254)

PROBE = r"""
import errno, json, os, sys
out = {"uid": os.getuid(), "cgroup": open("/proc/self/cgroup").read()}
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NOCTTY))
        out[path] = "ok"
    except OSError as e:
        out[path] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def nodes():
    """name -> path: gpu0..gpu255 (char 195:N), blk0 (block 195:0), fuse (char 10:229), all 0666."""
    if not os.path.exists(PYTHON):
        pytest.skip(f"{PYTHON} is needed to run the child as nobody")
    d = tempfile.mkdtemp(prefix="esker-devnodes-")
    os.chmod(d, 0o755)
    made = {f"gpu{m}": (stat.S_IFCHR, 195, m) for m in range(256)}
    made.update(blk0=(stat.S_IFBLK, 195, 0), fuse=(stat.S_IFCHR, 10, 229))
    paths = {}
    try:
        for name, (kind, major, minor) in made.items():
            paths[name] = os.path.join(d, name)
            os.mknod(paths[name], kind | 0o666, os.makedev(major, minor))
            os.chmod(paths[name], 0o666)  # not masked by the umask
        for extra in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/ptmx"):
            paths[extra] = extra
        yield paths
    finally:
        shutil.rmtree(d)


def probe(nodes: dict[str, str], join) -> dict[str, str]:
    """Open every node as nobody, after ``join()`` (run in the child while still root)."""

    def preexec():
        join()
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)

    r = subprocess.run([PYTHON, "-I", "-S", "-c", PROBE, *nodes.values()], preexec_fn=preexec, cwd="/",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    raw = json.loads(r.stdout)
    assert raw.pop("uid") == NOBODY.pw_uid
    out = {name: raw[path] for name, path in nodes.items()}
    out["cgroup"] = raw["cgroup"]
    return out


def assert_gpus(seen: dict[str, str], allowed: set[int]) -> None:
    for m in GPU_MINORS:
        if m in allowed:
            assert seen[f"gpu{m}"] in ALLOWED, (m, seen[f"gpu{m}"])
        else:
            assert seen[f"gpu{m}"] == "EPERM", (m, seen[f"gpu{m}"])
    assert seen["gpu254"] in ALLOWED and seen["gpu255"] in ALLOWED  # nvidia-modeset and nvidiactl
    assert seen["blk0"] in ALLOWED  # a block device of that major is not a GPU
    for other in ("fuse", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/ptmx"):
        assert seen[other] == "ok", (other, seen[other])


def test_without_a_group_nothing_is_denied(nodes):
    """The baseline the other tests depend on: the EPERMs below come from the groups, not from this host."""
    seen = probe(nodes, lambda: None)
    assert all(seen[f"gpu{m}"] in ALLOWED for m in range(256)), seen
    assert seen["blk0"] in ALLOWED and seen["/dev/null"] == "ok" and seen["fuse"] == "ok"


@pytest.fixture(params=["v1", "bpf"])
def limiter(request):
    mech = request.param
    lim = Limiter(f"esker-test-{os.getpid()}-{mech}", devices="auto" if mech == "v1" else "bpf")
    if not lim.enabled:
        pytest.skip("no writable cgroup hierarchy here")
    if lim.devices != mech:
        pytest.skip(f"the {mech} device mechanism is not available here (this host: {lim.devices or 'none'})")
    yield lim
    for base in lim.bases.values():
        os.rmdir(base)  # fails the test if a group was left behind


def test_only_the_assigned_gpu_opens(limiter, nodes):
    group = limiter.create("alice/gpu", 1, 2**30, gpu_minors=(1,))
    try:
        assert group.devices == limiter.devices
        seen = probe(nodes, lambda: Limiter.join(group))
        assert group.devices_dir(limiter.devices).split("/sys/fs/cgroup/", 1)[1].split("/", 1)[1] in seen["cgroup"]
        assert seen["gpu0"] == seen["gpu2"] == "EPERM"
        assert seen["gpu1"] in ALLOWED
        assert_gpus(seen, {1})
    finally:
        Limiter.remove(group)


def test_two_gpus(limiter, nodes):
    group = limiter.create("bob", 1, 2**30, gpu_minors=(0, 3))
    try:
        assert_gpus(probe(nodes, lambda: Limiter.join(group)), {0, 3})
    finally:
        Limiter.remove(group)


def test_a_server_without_gpus_has_none(limiter, nodes):
    group = limiter.create("carol", 1, 2**30)
    try:
        assert_gpus(probe(nodes, lambda: Limiter.join(group)), set())
    finally:
        Limiter.remove(group)


def test_restrict_devices_is_idempotent(limiter, nodes):
    group = limiter.create("dave", 1, 2**30, gpu_minors=(1,))
    d = group.devices_dir(limiter.devices)
    try:
        listing = Path(d, "devices.list").read_text() if limiter.devices == "v1" else None
        if limiter.devices == "bpf":
            assert devices.query_v2(d) == 1
        again = limiter.restrict_devices(limiter.restrict_devices(group, (1,)), (1,))
        assert again == group
        if limiter.devices == "bpf":
            assert devices.query_v2(d) == 1  # no second program
        else:
            assert Path(d, "devices.list").read_text() == listing
        restored = Group.from_state(json.loads(json.dumps(group.to_state())))  # as after a hub restart
        assert limiter.restrict_devices(restored, (1,)) == group
        assert_gpus(probe(nodes, lambda: Limiter.join(again)), {1})
    finally:
        Limiter.remove(group)


def test_restrict_devices_gives_an_old_group_its_rule(limiter, nodes):
    """A group from before device rules, restored from the old state dict: its running processes are moved under
    the rule, and the group gains the devices directory."""
    old = Limiter(limiter.namespace, devices="none").create("erin", 1, 2**30)
    state = {"paths": [p for p in old.paths if p.split("/")[4] in ("memory", "cpu")], "version": old.version}
    old = Group.from_state(state)
    assert old.devices == "" and old.devices_dir(limiter.devices) is None
    member = subprocess.Popen(["sleep", "300"], preexec_fn=lambda: Limiter.join(old))
    group = old
    try:
        group = limiter.restrict_devices(old, (1,))
        d = group.devices_dir(limiter.devices)
        assert d is not None and d not in old.paths and group.devices == limiter.devices
        assert member.pid in {int(p) for p in Path(d, "cgroup.procs").read_text().split()}
        assert_gpus(probe(nodes, lambda: Limiter.join(group)), {1})
    finally:
        member.kill()
        member.wait()
        Limiter.remove(group)
    assert not any(os.path.exists(p) for p in group.paths)


def test_remove_takes_the_devices_directory_too(limiter):
    group = limiter.create("frank", 1, 2**30, gpu_minors=(2,))
    d = group.devices_dir(limiter.devices)
    assert d in group.paths and os.path.isdir(d)
    Limiter.remove(group)
    assert not any(os.path.exists(p) for p in group.paths)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_killed_member_keeps_nothing(limiter):
    """SIGKILL the server: what it started (a kernel, here a sleep) is still in the group, and remove() ends it
    and deletes every directory."""
    group = limiter.create("grace", 1, 2**30, gpu_minors=(1,))
    try:
        member = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; exec sleep 301"], stdout=subprocess.PIPE,
                                  preexec_fn=lambda: Limiter.join(group), text=True)
        orphan = int(member.stdout.readline())
        member.stdout.close()
        os.kill(member.pid, signal.SIGKILL)
        member.wait()
        assert orphan in group.procs()
    finally:
        Limiter.remove(group)
    assert not any(os.path.exists(p) for p in group.paths)
    for _ in range(100):  # killed by remove(); its parent is gone, so init reaps it
        if _gone(orphan):
            break
        time.sleep(0.1)
    assert _gone(orphan)


def test_a_failed_rule_leaves_no_group(limiter):
    with pytest.raises(ValueError):
        limiter.create("heidi", 1, 2**30, gpu_minors=(300,))
    assert not any((base / "heidi").exists() for base in limiter.bases.values())


# -- the mechanisms on their own, on directories made here ----------------------------------------------------

@pytest.fixture
def cgroup_dir(request):
    """A fresh directory in v1's devices hierarchy or under the hybrid host's cgroup2 mount."""
    mech = request.param
    root = Path("/sys/fs/cgroup/devices" if mech == "v1" else "/sys/fs/cgroup/unified")
    if not (root / ("devices.deny" if mech == "v1" else "cgroup.controllers")).exists():
        pytest.skip(f"{root} is not a {'v1 devices' if mech == 'v1' else 'cgroup2'} hierarchy here")
    d = root / f"esker-test-{os.getpid()}-raw"
    d.mkdir()
    yield mech, d
    os.rmdir(d)


@pytest.mark.parametrize("cgroup_dir", ["v1", "bpf"], indirect=True)
def test_the_rule_alone(cgroup_dir, nodes):
    mech, d = cgroup_dir
    if mech == "v1":
        devices.apply_v1(d, (1,))
    else:
        assert devices.query_v2(d) == 0
        devices.attach_v2(d, (1,))
        assert devices.query_v2(d) == 1

    def join():
        Path(d, "cgroup.procs").write_text(str(os.getpid()))

    seen = probe(nodes, join)
    assert str(d).split("/", 5)[5] in seen["cgroup"]
    assert seen["gpu0"] == seen["gpu2"] == "EPERM" and seen["gpu1"] in ALLOWED
    assert_gpus(seen, {1})


def test_no_cgroups_means_no_device_rule(monkeypatch):
    monkeypatch.setenv("ESKER_NO_CGROUPS", "1")
    lim = Limiter(f"esker-test-{os.getpid()}-off")
    assert not lim.enabled and lim.devices == "" and lim.create("x", 1, 2**30, gpu_minors=(1,)) is None
    assert lim.restrict_devices(None, (1,)) is None
