"""Courses, pure parts: schema and semantic checks, nbgitpuller merge rules, git sources, dataset ACLs,
admission control, the seat check, pre-warm manifests, RBAC roles and the traitlets."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from esker.core import config as config_mod
from esker.courses import acls, content, model, prewarm, reservations, roles, seats
from esker.state import coursestore
from esker.app import configurer as traits
from esker.core.catalog import Catalog, UserInfo
from esker.core.plan import select

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "esker.yaml").read_text())
GiB = 1024**3
T0 = datetime(2030, 3, 5, 9, 0, tzinfo=timezone.utc)  # a Tuesday, 9:00
K8S_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]


def cfg_with(courses, capacity=None):
    data = copy.deepcopy(BASE)
    data["courses"] = courses
    if capacity is not None:
        data["capacity"] = capacity
    return config_mod.validate(data)


def course(**kw):
    base = {"name": "intro-ml", "display_name": "Intro to ML", "group": "intro-ml", "instructors": ["ines"],
            "content": {"path": "courses/intro-ml"}, "datasets": ["weather"], "profiles": ["scikit-learn"]}
    base.update(kw)
    return base


# ------------------------------------------------------------------------------------------- schema
def test_schema_accepts_courses_and_capacity_with_defaults():
    cfg = cfg_with([course(window={"start": "2030-03-05T09:00", "end": "2030-03-05T12:00"}, seats=30)],
                   {"cpu": 16, "memory": "64G"})
    c = cfg["courses"][0]
    assert c["idle_timeout"] == 3600 and c["password"] is None and c["participants"] == []
    assert cfg["capacity"] == {"cpu": 16, "memory": "64G", "gpus": None, "scratch": None}
    assert model.course_problems(cfg) == []


@pytest.mark.parametrize("bad, field", [
    ({"seats": -1}, "courses[0].seats"),
    ({"colour": "red"}, "courses[0]"),
    ({"name": "Intro ML"}, "courses[0].name"),
    ({"window": {"start": "tuesday", "end": "2030-03-05T12:00"}}, "courses[0].window.start"),
])
def test_schema_errors_name_the_field(bad, field):
    with pytest.raises(config_mod.ConfigError) as e:
        cfg_with([course(**bad)])
    assert any(p.startswith(field) for p in e.value.problems), e.value.problems


def test_semantic_problems_name_the_field():
    courses = [
        course(profiles=["gpu-xl"], datasets=["climate"]),
        course(window={"start": "2030-03-05T12:00", "end": "2030-03-05T09:00"}, content={"path": "nope"}),
        course(name="other", seats=3, profiles=[], content={"path": "courses/intro-ml", "git": "file:///x"}),
    ]
    data = copy.deepcopy(BASE)
    data["courses"] = courses
    with pytest.raises(config_mod.ConfigError) as e:  # a broken course fails the whole config, at start
        config_mod.validate(data)
    assert "courses[0].profiles: 'gpu-xl' is not a profile" in str(e.value)
    filled = config_mod._fill_defaults(config_mod.SCHEMA, copy.deepcopy(data))
    problems = model.course_problems(config_mod.EskerConfig(filled, "test"))
    text = "\n".join(problems)
    assert "courses[0].profiles: 'gpu-xl' is not a profile" in text
    assert "courses[0].datasets: 'climate' is not in storage.datasets" in text
    assert "courses[1].name: 'intro-ml' is used by another course" in text
    assert "courses[1].window.end: must be after window.start" in text
    assert "courses[1].content.path:" in text
    assert "courses[2].content: give path or git, not both" in text
    assert "courses[2].seats: seats are reserved during a window" in text


def test_content_path_is_refused_in_kubernetes_mode_only_naming_the_field_and_the_way_out():
    git = course(name="git-course", group="git-course", content={"git": "https://example.org/c.git"})
    courses = [course(name="a", group="a"), git, course(name="b", group="b", content={"path": "courses/intro-ml"})]
    embedded = cfg_with(courses)  # the folder exists: fine on one machine
    assert embedded["hub"]["mode"] == "embedded" and model.course_problems(embedded) == []
    data = copy.deepcopy(BASE)
    data["courses"] = courses
    data["hub"] = {**data.get("hub", {}), "mode": "kubernetes"}
    with pytest.raises(config_mod.ConfigError) as e:  # the hub (and `esker check`) stop here, naming each one
        config_mod.validate(data)
    refused = [p for p in e.value.problems if ".content.path:" in p]
    assert [p.split(":")[0] for p in refused] == ["courses[0].content.path", "courses[2].content.path"]
    assert all("not delivered on Kubernetes" in p and "content.git" in p for p in refused)
    assert len(e.value.problems) == 2  # content.git courses are fine there; nothing else is refused
    # A folder that does not exist is refused for the same reason, not as a missing folder.
    data["courses"] = [course(content={"path": "no/such/folder"})]
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.validate(data)
    (problem,) = e.value.problems
    assert problem.startswith("courses[0].content.path: ") and "not delivered on Kubernetes" in problem
    data["courses"] = [git]
    assert config_mod.validate(data)["hub"]["mode"] == "kubernetes"


# ------------------------------------------------------------------------------------ merge rules
def write(p: Path, text: str):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_merge_rules(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "home" / "intro-ml"
    write(src / "a.ipynb", "a1")
    write(src / "b.ipynb", "b1")
    write(src / "c.ipynb", "c1")
    write(src / "d.ipynb", "d1")
    write(src / "sub" / "e.py", "e1")
    write(src / ".git" / "HEAD", "x")
    r = content.merge_content(src, dest)
    assert sorted(r.added) == ["a.ipynb", "b.ipynb", "c.ipynb", "d.ipynb", "sub/e.py"]
    assert not (dest / ".git").exists()
    # the user edits b and c, deletes d; upstream changes a (untouched by the user), c, d; adds f
    write(dest / "b.ipynb", "b-mine")
    write(dest / "c.ipynb", "c-mine")
    (dest / "d.ipynb").unlink()
    write(src / "a.ipynb", "a2")
    write(src / "c.ipynb", "c2")
    write(src / "d.ipynb", "d2")
    write(src / "f.ipynb", "f1")
    r = content.merge_content(src, dest)
    assert r.updated == ["a.ipynb"] and (dest / "a.ipynb").read_text() == "a2"
    assert r.kept == ["b.ipynb"] and (dest / "b.ipynb").read_text() == "b-mine"
    assert r.conflicts == ["c.ipynb"] and (dest / "c.ipynb").read_text() == "c-mine"
    assert (dest / "c.upstream.ipynb").read_text() == "c2"
    assert r.not_restored == ["d.ipynb"] and not (dest / "d.ipynb").exists()
    assert r.added == ["f.ipynb"]
    # idempotent: nothing new happens on a second run
    r = content.merge_content(src, dest)
    assert (r.added, r.updated, r.conflicts) == ([], [], [])
    assert r.kept == ["b.ipynb", "c.ipynb"]
    state = json.loads((dest / content.STATE_FILE).read_text())["files"]
    assert "c.upstream.ipynb" not in state and state["a.ipynb"] == content.file_hash(src / "a.ipynb")


def test_merge_a_users_own_file_of_the_same_name_is_kept(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    write(dest / "lesson.ipynb", "mine, before the course existed")
    write(src / "lesson.ipynb", "upstream")
    r = content.merge_content(src, dest)
    assert r.conflicts == ["lesson.ipynb"]
    assert (dest / "lesson.ipynb").read_text().startswith("mine")
    assert (dest / "lesson.upstream.ipynb").read_text() == "upstream"


def test_merge_never_follows_a_users_symlink(tmp_path):
    src, dest, outside = tmp_path / "src", tmp_path / "dest", tmp_path / "outside"
    write(src / "sub" / "x.txt", "1")
    outside.mkdir()
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    content.merge_content(src, dest)
    assert list(outside.iterdir()) == []
    write(src / "link.txt", "up")
    (dest / "link.txt").symlink_to(outside / "target")
    content.merge_content(src, dest)
    assert not (outside / "target").exists()


@pytest.fixture
def world_tmp():
    """A folder other accounts can traverse (pytest's tmp_path is under a 0700 folder)."""
    import shutil

    d = tempfile.mkdtemp(prefix="esker-courses-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="merging as another user needs root")
def test_merge_as_user_writes_as_that_user(world_tmp):
    tmp_path = world_tmp
    src, home = tmp_path / "src", tmp_path / "home"
    write(src / "a.ipynb", "a")
    home.mkdir()
    os.chown(home, 65534, 65534)
    r = content.merge_as_user(str(src), str(home / "course"), 65534, 65534)
    assert r.added == ["a.ipynb"]
    assert (home / "course" / "a.ipynb").stat().st_uid == 65534
    with pytest.raises(model.CourseError):  # nobody cannot write into a root-owned folder
        content.merge_as_user(str(src), str(tmp_path / "rootonly" / "c"), 65534, 65534)


# -------------------------------------------------------------------------------------------- git
def make_repo(path: Path) -> str:
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    write(path / "nb" / "one.ipynb", "1")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "one"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True)
    return f"file://{path}"


def test_git_source_fetch_and_unreachable(tmp_path):
    url = make_repo(tmp_path / "repo")
    course_ = model.Course.from_dict(course(content={"git": url, "ref": "main", "subdir": "nb"}))
    src = content.content_source(course_, str(tmp_path / "state"))
    assert (src / "one.ipynb").read_text() == "1" and (src.parent / ".esker-rev").exists()
    bad = model.Course.from_dict(course(content={"git": f"file://{tmp_path}/missing", "ref": "main"}))
    with pytest.raises(model.CourseError) as e:
        content.content_source(bad, str(tmp_path / "state"))
    assert "cannot fetch" in str(e.value)
    cache = content.git_cache_dir(str(tmp_path / "state"), f"file://{tmp_path}/missing", "main")
    assert not cache.exists()
    assert [p.name for p in cache.parent.iterdir() if p.name.startswith(".")] == []  # nothing half-written
    # an unreachable remote keeps the last good checkout
    os.rename(tmp_path / "repo", tmp_path / "gone")
    with pytest.raises(model.CourseError):
        content.content_source(course_, str(tmp_path / "state"))
    assert (src / "one.ipynb").exists()


# ---------------------------------------------------------------------------------------- ACLs
def test_acl_encoding_roundtrip():
    blob = acls.acl_with_users(0o750, {1001: 5, 1000: 7})
    entries = acls.acl_decode(blob)
    assert entries[0] == (acls.USER_OBJ, 7, None)
    assert [(t, p, i) for t, p, i in entries if t == acls.USER] == [(acls.USER, 7, 1000), (acls.USER, 5, 1001)]
    assert (acls.MASK, 7, None) in entries


@pytest.mark.skipif(os.geteuid() != 0, reason="ACLs for other users need root")
def test_dataset_acl_read_only_for_participants_and_writable_for_instructors(world_tmp):
    tmp_path = world_tmp
    path = acls.ensure_dataset_dir(str(tmp_path), "weather")
    write(Path(path) / "t.csv", "x,y\n")
    try:
        acls.grant_dataset(path, 65534, write=False)  # nobody: a participant
    except OSError as e:
        pytest.skip(f"no POSIX ACLs on this filesystem: {e}")

    def as_nobody(code):
        return subprocess.run(["python3", "-c", code], user=65534, group=65534, extra_groups=[],
                              capture_output=True, text=True)

    r = as_nobody(f"print(open('{path}/t.csv').read())")
    assert r.returncode == 0 and "x,y" in r.stdout, r.stderr
    r = as_nobody(f"open('{path}/new.csv','w')")
    assert "Permission denied" in r.stderr
    r = as_nobody(f"import os; print(os.listdir('{tmp_path}/datasets'))")
    assert "Permission denied" in r.stderr  # the datasets root cannot be listed
    acls.grant_dataset(path, 65534, write=True)  # now an instructor
    r = as_nobody(f"open('{path}/new.csv','w').write('1')")
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------------- admission
def catalog():
    return Catalog.from_config(config_mod.validate(copy.deepcopy(BASE)))


CAP = reservations.Resources(cpu=76, memory=512 * GiB, gpus=2, scratch=4096 * GiB)
COURSES = {c["name"]: model.Course.from_dict(c) for c in [
    course(), course(name="stats", group="stats", profiles=["scikit-learn", "spark"]),
    course(name="deep", group="deep", profiles=["tensorflow"])]}


def res(course_="intro-ml", profile="scikit-learn", seats=30, start=T0, hours=3, **kw):
    return reservations.Reservation(course=course_, profile=profile, seats=seats, start=start,
                         end=start + timedelta(hours=hours), **kw)


def decide(new, existing=(), cap=CAP, now=T0 - timedelta(days=1)):
    return reservations.admit(new, list(existing), cap, catalog(), COURSES, {"intro-ml", "stats", "deep"}, now=now)


def test_admit_fits_and_refuses_with_what_is_short():
    assert decide(res(seats=30)).accepted  # 30 x 1 CPU of 76
    existing = [res(seats=30, id="r1")]
    d = decide(res("stats", "spark", seats=30, start=T0 + timedelta(hours=1)), existing)
    assert not d.accepted and d.status == 409
    # spark: 2 CPU x 30 = 60 CPU; 76 - 30 = 46 free 10:00-12:00
    assert "needs 60 CPU, 46 free" in d.reason and hhmm(T0 + timedelta(minutes=50)) in d.reason, d.reason  # its lead
    # after the first window and the second's pre-start lead (stats: 600 s) it fits
    assert decide(res("stats", "spark", seats=30, start=T0 + timedelta(hours=3, minutes=10)), existing).accepted


def test_admit_counts_the_pre_start_lead_before_each_window():
    existing = [res(seats=30, id="r1")]  # intro-ml 9:00-12:00
    # stats starting at 12:00 pre-starts its 30 spark servers at 11:50, while intro-ml's 30 still run
    d = decide(res("stats", "spark", seats=30, start=T0 + timedelta(hours=3)), existing)
    assert not d and d.status == 409 and "pre-starts" in d.reason and hhmm(T0 + timedelta(hours=2, minutes=50)) \
        in d.reason, d.reason
    # the other way round: a window ending at 9:05 collides with intro-ml's pre-start from 8:50
    d = decide(res("stats", "spark", seats=30, start=T0 - timedelta(minutes=55), hours=1), existing)
    assert not d and "pre-starts" in d.reason, d.reason
    # a course without pre-start (prestart_lead 0) holds only its window: back to back fits
    no_lead = {**COURSES, "stats": dataclasses.replace(COURSES["stats"], prestart_lead=0)}
    assert reservations.admit(res("stats", "spark", seats=30, start=T0 + timedelta(hours=3)), existing, CAP,
                              catalog(), no_lead, None, now=T0 - timedelta(days=1))


def hhmm(dt):
    return reservations.hhmm(dt)


def test_admit_refusals():
    assert "in the past" in decide(res(), now=T0 + timedelta(hours=4)).reason
    assert decide(res(hours=-1)).status == 400
    assert decide(res(seats=0)).status == 400
    assert decide(res(profile="gpu-xl")).status == 404
    assert "unknown course" in decide(res(course_="nope")).reason
    d = decide(res(profile="spark"))
    assert d.status == 400 and "does not use profile" in d.reason
    assert "unknown group" in reservations.admit(res(group="ghosts"), [], CAP, catalog(), None, {"intro-ml"},
                                      now=T0 - timedelta(days=1)).reason
    d = decide(res(), [res(id="r1", start=T0 + timedelta(hours=2))])
    assert d.status == 409 and "already has seats reserved" in d.reason
    d = decide(res("deep", "tensorflow", seats=3))  # tensorflow: 0 GPUs by default; 8G, 2 CPU
    assert d.accepted
    big = decide(res(seats=100))
    assert not big and "can never fit" in big.reason and "needs 100 CPU, 76 free" in big.reason


def test_admit_sweeps_over_partially_overlapping_windows():
    cap = reservations.Resources(cpu=40, memory=512 * GiB, gpus=0, scratch=4096 * GiB)
    courses = {k: dataclasses.replace(c, prestart_lead=0) for k, c in COURSES.items()}  # windows alone

    def decide(new, existing, cap):
        return reservations.admit(new, existing, cap, catalog(), courses, None, now=T0 - timedelta(days=1))

    a = res(seats=20, id="a", hours=2)  # 9-11
    b = res("stats", seats=20, id="b", start=T0 + timedelta(hours=2), hours=2)  # 11-13
    # 10:00-12:00 never has more than 20 promised at once: 20 more fit
    assert decide(res("deep", "tensorflow", seats=10, start=T0 + timedelta(hours=1), hours=2), [a, b], cap).accepted
    assert not decide(res("deep", "tensorflow", seats=11, start=T0 + timedelta(hours=1), hours=2), [a, b], cap)


# ------------------------------------------------------------------------------------- seat check
class FakeRuntime:
    def __init__(self, cfg, state_dir):
        self.config = cfg
        self.state_dir = state_dir
        self.catalog = Catalog.from_config(cfg)
        self.gpus = []
        self.extra = {}


def test_check_seat_keeps_the_seats_for_participants(tmp_path):
    cfg = cfg_with([course()])
    rt = FakeRuntime(cfg, str(tmp_path))
    cap = reservations.Resources(cpu=32, memory=512 * GiB, gpus=0, scratch=4096 * GiB)
    booked = [res(seats=30, id="r1")]
    alice = UserInfo("alice", frozenset({"intro-ml"}))
    bob = UserInfo("bob")
    now = T0 + timedelta(minutes=5)
    sel = select(rt.catalog, alice, {"profile": "scikit-learn"})

    def check(user, running, when=now, profile="scikit-learn"):
        s = select(rt.catalog, user, {"profile": profile})
        seats.check_seat(user, s, catalog=rt.catalog, courses=model.courses_from_config(rt.config), now=when,
                         running_by_profile=running, reservations=booked, capacity=cap)

    check(alice, {})
    check(bob, {})  # 30 promised of 32: bob's 1 CPU fits
    check(bob, {"minimal": ["someone"]})  # 31 + 1
    with pytest.raises(seats.SeatRefused) as e:
        check(bob, {"minimal": ["someone", "other"]})
    assert e.value.status == 503 and "capacity reserved for Intro to ML until" in str(e.value)
    assert hhmm(T0 + timedelta(hours=3)) in str(e.value)
    # participants always get their seats, even when the rest is full
    parts = [UserInfo(f"p{i}", frozenset({"intro-ml"})) for i in range(29)]
    check(alice, {"scikit-learn": parts, "minimal": ["x", "y", "z"]})
    # ... up to the seats: the 31st participant competes for the unpromised rest
    with pytest.raises(seats.SeatRefused):
        check(alice, {"scikit-learn": parts + [UserInfo("p29", frozenset({"intro-ml"}))], "minimal": ["x", "y"]})
    # outside the window nothing is held back
    check(bob, {"minimal": ["a", "b", "c"]}, when=T0 + timedelta(hours=3))
    assert sel.profile.slug == "scikit-learn"
    # in the pre-start lead (600 s) the seats are held already: pre-starts fit, walk-ins take the rest only
    lead = T0 - timedelta(minutes=5)
    check(alice, {"scikit-learn": parts, "minimal": ["x", "y", "z"]}, when=lead)
    with pytest.raises(seats.SeatRefused):
        check(bob, {"minimal": ["someone", "other"]}, when=lead)
    check(bob, {"minimal": ["someone", "other"]}, when=T0 - timedelta(minutes=11))  # before the lead
    assert seats.may_hold(booked, lead) and not seats.may_hold(booked, T0 - timedelta(days=1, minutes=1))
    from esker.core.schema import COURSE
    assert seats.LEAD_MAX == COURSE["properties"]["prestart_lead"]["maximum"]


# ---------------------------------------------------------------------------------------- prewarm
def test_prewarm_plan_and_placeholder_manifests_validate_strictly():
    cat = catalog()
    reservations = [res(seats=3, id="r1"), res("deep", "tensorflow", seats=2, id="r2", start=T0 + timedelta(days=1))]
    plan = prewarm.prewarm_plan(T0 - timedelta(minutes=30), reservations, timedelta(hours=1), cat)
    assert plan.environments == ("scikit-learn",) and len(plan.placeholders) == 3
    assert prewarm.prewarm_plan(T0 - timedelta(hours=2), reservations, timedelta(hours=1), cat).placeholders == ()
    assert prewarm.prewarm_plan(T0 + timedelta(hours=3), reservations, timedelta(hours=1), cat).environments == ()
    gpu = prewarm.prewarm_plan(T0, [res("deep", "tensorflow", seats=2, id="r2")],
                         timedelta(0), Catalog.from_config(gpu_cfg()))
    assert gpu.placeholders[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for pod in plan.placeholders + gpu.placeholders:
        for v in K8S_VERSIONS:
            kubernetes_validate.validate(pod, v, strict=True)
    names = [p["metadata"]["name"] for p in plan.placeholders]
    assert len(set(names)) == 3 and all(len(n) <= 63 for n in names)


def gpu_cfg():
    data = copy.deepcopy(BASE)
    for p in data["profiles"]:
        if p["slug"] == "tensorflow":
            p["gpus"] = 1
    return config_mod.validate(data)


# ----------------------------------------------------------------------------------------- RBAC
def test_course_roles_are_limited_to_the_course_group():
    from jupyterhub.scopes import _check_scopes_exist, parse_scopes

    cfg = cfg_with([course(participants=["p1", "p2"]), course(name="stats", group="stats", instructors=[])])
    got = roles.course_roles(cfg)
    assert [r["name"] for r in got] == ["course-intro-ml-instructors"]
    role = got[0]
    assert role["users"] == ["ines"]
    _check_scopes_exist(role["scopes"])  # every scope is one JupyterHub knows
    parsed = parse_scopes(role["scopes"])
    for scope in ("servers", "read:users", "list:users"):
        assert parsed[scope] == {"group": {"intro-ml"}}, scope  # never unfiltered
    # no participant is named: opening their servers from single-user servers' side goes through the shares the
    # courses service keeps in step (a name listed here would outlive the participant's leaving until a restart)
    assert parsed["access:servers"] == {"group": {"intro-ml"}}
    assert "admin:users" not in parsed and "admin:servers" not in parsed
    assert roles.course_groups(cfg) == {"intro-ml": {"users": ["p1", "p2"]}, "stats": {"users": []}}


def test_courses_service_and_traits(tmp_path):
    cfg = cfg_with([course(participants=["p1"])])
    d = traits.Deployment(state_dir=str(tmp_path), config_file="/x/esker.yaml", port=8000, hub_port=1,
                          proxy_api_port=2, proxy_command=["chp"])
    service, role = roles.courses_service(cfg.data, d, port=4321)
    assert service["url"] == "http://127.0.0.1:4321" and service["name"] == "esker-courses"
    assert service["environment"]["ESKER_STATE_DIR"] == str(tmp_path)
    from jupyterhub.scopes import _check_scopes_exist

    _check_scopes_exist(role["scopes"])
    m = traits.to_traitlets(cfg.data, d)["JupyterHub"]
    assert {"idle-culler", "esker-courses"} <= {s["name"] for s in m["services"]}
    assert {"idle-culler", "esker-courses", "course-intro-ml-instructors"} <= {r["name"] for r in m["load_roles"]}
    assert m["load_groups"]["intro-ml"] == {"users": ["p1"]}


# ---------------------------------------------------------------------------------------- store
def test_store_survives_reopening_and_admits_atomically(tmp_path):
    store = coursestore.CourseStore.for_state_dir(str(tmp_path))
    cat = catalog()
    cap = reservations.Resources(cpu=40, memory=512 * GiB, gpus=0, scratch=4096 * GiB)

    def dec(n, existing):
        return reservations.admit(n, existing, cap, cat, COURSES, None, now=T0 - timedelta(days=1))

    d, saved = store.reserve(res(seats=30), dec)
    assert d.accepted and saved.id
    d, _ = store.reserve(res("stats", seats=30), dec)
    assert not d.accepted and "needs 30 CPU, 10 free" in d.reason
    again = coursestore.CourseStore.for_state_dir(str(tmp_path))
    assert [r.id for r in again.reservations()] == [saved.id]
    assert again.reservations()[0].start == T0
    again.put_course("new", {"name": "new", "group": "new-g", "participants": ["a"]})
    again.put_course("intro-ml", {"display_name": "Intro (spring)"})
    eff = {c.name: c for c in again.effective_courses([model.Course.from_dict(course())])}
    assert eff["new"].source == "runtime" and eff["new"].participants == ("a",)
    assert eff["intro-ml"].display_name == "Intro (spring)" and eff["intro-ml"].group == "intro-ml"
    assert again.expire(T0 + timedelta(hours=4)) == [saved.id] and again.reservations() == []


def test_a_git_url_that_looks_like_an_option_is_not_one(tmp_path):
    """content.git is set by admins and instructors: `git fetch --upload-pack=CMD` would run CMD as root."""
    planted = tmp_path / "ran"
    with pytest.raises(content.CourseError):
        content.fetch_git(f"--upload-pack=touch {planted}", "HEAD", tmp_path / "cache" / "x", timeout=30)
    assert not planted.exists()
