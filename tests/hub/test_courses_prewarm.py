"""Pre-warming for reservations: the pure decisions (what is due, what to build, what to record, which placeholder
pods to create or delete), the service's pass against a real EnvironmentBuilder on a tiny images folder (one small
pure-Python package from PyPI), the reservations API field, and the placeholder pods through a fake Kubernetes
API that fails on a wrong namespace, label or priority class."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from esker.core import config as config_mod
from esker.courses import prewarm, reservations
from esker.courses import service as S
from esker.core.catalog import Catalog
from esker.system.envs import EnvironmentBuilder

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "esker.yaml").read_text())
T0 = datetime(2030, 3, 5, 9, 0, tzinfo=timezone.utc)
LOOK = timedelta(minutes=30)


def cfg(**k8s):
    data = copy.deepcopy(BASE)
    data["kubernetes"] = {**data.get("kubernetes", {}), **k8s}
    data["capacity"] = {"cpu": 64, "memory": "256G", "gpus": 0, "scratch": "2T"}
    return config_mod.validate(data)


def res(course="intro-ml", profile="scikit-learn", seats=3, start=T0, hours=3, rid=None):
    return reservations.Reservation(course=course, profile=profile, seats=seats, start=start, end=start + timedelta(hours=hours),
                         group=course, id=rid or course)


# ------------------------------------------------------------------------------------------ pure decisions
def test_what_is_due_within_the_lookahead():
    cat = Catalog.from_config(cfg())
    rs = [res(rid="a"), res("big-data", "spark", rid="b", start=T0 + timedelta(minutes=20)),
          res("later", "minimal", rid="c", start=T0 + timedelta(hours=2)), res("gone", "nope", rid="d")]
    plan = prewarm.prewarm_plan(T0 - timedelta(minutes=10), rs, LOOK, cat)
    assert [d.reservation.id for d in plan.due] == ["a", "b"]  # c is 2h away; d names no profile
    assert plan.environments == ("scikit-learn", "spark") and plan.spark
    assert [d.spark for d in plan.due] == [False, True]
    # exactly at start - lookahead it is due; a minute before it is not; after the end it is dropped
    assert [d.reservation.id for d in prewarm.prewarm_plan(T0 - LOOK, rs[:1], LOOK, cat).due] == ["a"]
    assert prewarm.prewarm_plan(T0 - LOOK - timedelta(minutes=1), rs[:1], LOOK, cat).due == ()
    assert prewarm.prewarm_plan(T0 + timedelta(hours=3), rs[:1], LOOK, cat).due == ()
    # still due during the window (a late environment loss is repaired)
    assert not prewarm.prewarm_plan(T0 + timedelta(hours=1), rs[:1], LOOK, cat).spark
    # two reservations of one environment build it once
    two = prewarm.prewarm_plan(T0, [res(rid="a"), res("other", rid="x")], LOOK, cat)
    assert two.environments == ("scikit-learn",) and len(two.due) == 2
    assert prewarm.environments_to_build(plan, ["spark"]) == ("scikit-learn",)
    assert prewarm.environments_to_build(plan, ["spark", "scikit-learn"]) == ()


def test_the_record_is_set_once_everything_is_ready_and_then_kept():
    cat = Catalog.from_config(cfg())
    (d,) = prewarm.prewarm_plan(T0, [res("big-data", "spark", rid="b")], LOOK, cat).due
    rec = prewarm.prewarm_record(d, {"spark": "ready"}, "down: connection refused", T0)
    assert rec["prewarmed_at"] is None and "spark: down" in rec["status"]
    rec = prewarm.prewarm_record(d, {"spark": "failed: no lock file"}, "up (1 worker)", T0)
    assert rec["prewarmed_at"] is None and rec["status"].startswith("environment spark: failed")
    ok = prewarm.prewarm_record(d, {"spark": "ready"}, "up (1 worker)", T0)
    assert ok["prewarmed_at"] == T0.isoformat() and ok["status"] == "ready" and ok["spark"] == "up (1 worker)"
    later = T0 + timedelta(minutes=5)
    again = prewarm.prewarm_record(d, {"spark": "ready"}, "down: gone", later, ok)
    assert again["prewarmed_at"] == T0.isoformat() and again["status"] != "ready"  # kept, problem shown


def test_placeholder_changes_create_once_and_delete_what_is_no_longer_planned():
    pods = [{"metadata": {"name": f"esker-seat-c-{i}"}} for i in range(3)]
    create, delete = prewarm.placeholder_changes(pods, ["esker-seat-c-0", "esker-seat-old-0"])
    assert [p["metadata"]["name"] for p in create] == ["esker-seat-c-1", "esker-seat-c-2"]
    assert delete == ["esker-seat-old-0"]
    # c-1 was created before and is gone now (a participant's pod preempted it): not created again
    create, delete = prewarm.placeholder_changes(pods, ["esker-seat-c-0", "esker-seat-c-2"], made={"esker-seat-c-1"})
    assert create == [] and delete == []


# --------------------------------------------------------------------------- the pass, embedded (real build)
class FakeBuilder:
    """Records what the pass asks; ``broken``: names whose build fails."""

    def __init__(self, broken=()):
        self.built, self.ready, self.broken = [], set(), set(broken)

    def get(self, name):
        return SimpleNamespace(ready=lambda: name in self.ready)

    async def ensure(self, name):
        if name in self.broken:
            raise RuntimeError(f"Installing {name} packages failed:\nno such package")
        yield f"building {name}"
        self.built.append(name)
        self.ready.add(name)


def state(tmp_path, builder=None, spark_check=None, kube=None, backend="embedded", **k8s):
    st = S.State(cfg(**k8s).data, str(tmp_path / "state"), api=None, auth=None, builder=builder,
                 spark_check=spark_check, kube=kube, backend=backend, lookahead=LOOK)
    return st


def test_the_pass_builds_checks_spark_and_records(tmp_path):
    calls = []
    b = FakeBuilder()
    st = state(tmp_path, b, spark_check=lambda: calls.append(1) or "up (2 workers)")
    st.store.reserve(res(rid="a"), lambda n, e: reservations.Decision(True))
    st.store.reserve(res("far", "minimal", rid="f", start=T0 + timedelta(days=1)), lambda n, e: reservations.Decision(True))
    out = asyncio.run(S.prewarm_once(st, T0 - timedelta(minutes=5)))
    assert b.built == ["scikit-learn"] and out["environments"] == {"scikit-learn": "ready"}
    assert calls == [] and out["spark"] is None  # no reserved profile uses Spark
    rec = st.store.prewarm_records()
    assert set(rec) == {"a"} and rec["a"]["prewarmed_at"] == (T0 - timedelta(minutes=5)).isoformat()
    # A Spark reservation: the master is checked; down means not pre-warmed (yet)
    st.store.reserve(res("big-data", "spark", rid="s"), lambda n, e: reservations.Decision(True))
    st.spark_check = lambda: calls.append(1) or "down: connection refused"
    out = asyncio.run(S.prewarm_once(st, T0 - timedelta(minutes=4)))
    assert b.built == ["scikit-learn", "spark"] and calls == [1]
    rec = st.store.prewarm_records()
    assert rec["s"]["prewarmed_at"] is None and "spark: down" in rec["s"]["status"]
    assert rec["a"]["prewarmed_at"] == (T0 - timedelta(minutes=5)).isoformat()  # kept from the first pass
    # A failing build is recorded, the pass goes on, and the next one tries again
    st2 = state(tmp_path / "2", FakeBuilder(broken={"scikit-learn"}))
    st2.store.reserve(res(rid="a"), lambda n, e: reservations.Decision(True))
    out = asyncio.run(S.prewarm_once(st2, T0))
    assert out["environments"]["scikit-learn"].startswith("failed: Installing scikit-learn")
    assert st2.store.prewarm_records()["a"]["prewarmed_at"] is None
    # Records go with their reservation
    st.store.expire(T0 + timedelta(hours=4))
    assert st.store.prewarm_records() == {}


@pytest.mark.integration
def test_the_pass_builds_a_real_environment(tmp_path):
    """EnvironmentBuilder on a tiny images folder: one small pure-Python package from PyPI."""
    images = tmp_path / "images"
    (images / "scikit-learn").mkdir(parents=True)
    (images / "scikit-learn" / "requirements.lock").write_text("six==1.16.0\n")
    builder = EnvironmentBuilder(tmp_path / "envs", images)
    st = state(tmp_path, builder)
    st.store.reserve(res(rid="a"), lambda n, e: reservations.Decision(True))
    assert not builder.get("scikit-learn").ready()
    out = asyncio.run(S.prewarm_once(st, T0 - timedelta(minutes=29)))
    env = builder.get("scikit-learn")
    assert out["environments"] == {"scikit-learn": "ready"} and env.ready()
    assert list(env.path.glob("lib/python3*/site-packages/six.py"))
    assert st.store.prewarm_records()["a"]["status"] == "ready"
    # Cold again (the cache removed): the next pass rebuilds it
    import shutil

    shutil.rmtree(env.path)
    asyncio.run(S.prewarm_once(st, T0 - timedelta(minutes=28)))
    assert builder.get("scikit-learn").ready()


def test_the_reservations_api_shows_prewarmed_at(tmp_path):
    class Auth:
        def get_token(self, handler, in_cookie=False):
            return "t"

        async def user_for_token(self, token, sync=False):
            return {"name": "root", "admin": True, "kind": "user", "groups": []}

    st = state(tmp_path, FakeBuilder())
    st.auth = Auth()
    now = datetime.now(timezone.utc)
    r = res(rid="a", start=now + timedelta(minutes=10))
    st.store.reserve(r, lambda n, e: reservations.Decision(True))
    asyncio.run(S.prewarm_once(st, now))

    async def get():
        from tornado.httpclient import AsyncHTTPClient

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        server = S.make_app(st, "/services/esker-courses/").listen(port, address="127.0.0.1")
        try:
            resp = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/services/esker-courses/api/reservations",
                                                 headers={"Authorization": "token t"})
            return json.loads(resp.body)
        finally:
            server.stop()

    (got,) = asyncio.run(get())
    assert got["id"] == "a" and got["prewarmed_at"] == now.isoformat()
    assert got["prewarm"]["environment"] == "scikit-learn" and got["prewarm"]["status"] == "ready"


# ------------------------------------------------------------------------------ the pass, Kubernetes (fake API)
class FakeCore:
    """kubernetes_asyncio CoreV1Api's three calls the service makes; wrong namespace, labels or priority class
    fail the test, and so does deleting a pod that is not a placeholder."""

    def __init__(self, namespace, others=()):
        self.ns = namespace
        self.pods = {n: {"metadata": {"name": n, "labels": {"app": "jupyterhub"}}} for n in others}
        self.created, self.deleted = [], []

    async def list_namespaced_pod(self, namespace, label_selector=""):
        assert namespace == self.ns and label_selector == "app.kubernetes.io/component=seat-placeholder"
        key, _, value = label_selector.partition("=")
        items = [SimpleNamespace(metadata=SimpleNamespace(name=n)) for n, p in self.pods.items()
                 if p["metadata"]["labels"].get(key) == value]
        return SimpleNamespace(items=items)

    async def create_namespaced_pod(self, namespace, body):
        assert namespace == self.ns == body["metadata"]["namespace"]
        labels = body["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "seat-placeholder" and labels["app.kubernetes.io/name"] == "esker"
        assert body["spec"]["priorityClassName"] == "esker-user-placeholder"
        assert body["spec"]["containers"][0]["image"].startswith("registry.k8s.io/pause:")
        self.pods[body["metadata"]["name"]] = body
        self.created.append(body["metadata"]["name"])

    async def delete_namespaced_pod(self, name, namespace, grace_period_seconds=None):
        assert namespace == self.ns
        assert self.pods[name]["metadata"]["labels"].get("app.kubernetes.io/component") == "seat-placeholder"
        del self.pods[name]
        self.deleted.append(name)


def test_kubernetes_pass_keeps_one_placeholder_per_seat(tmp_path):
    core = FakeCore("hub", others=["jupyter-alice"])
    st = state(tmp_path, kube=core, backend="kubernetes", namespace="hub")
    st.store.reserve(res(rid="a", seats=3), lambda n, e: reservations.Decision(True))
    out = asyncio.run(S.prewarm_once(st, T0 - timedelta(minutes=20)))
    assert sorted(core.created) == [f"esker-seat-intro-ml-{i}" for i in range(3)]
    assert out["placeholders"]["created"] == core.created
    rec = st.store.prewarm_records()["a"]
    assert rec["prewarmed_at"] and rec["placeholders"] == 3
    # A participant's pod preempts one: it is not created again
    del core.pods["esker-seat-intro-ml-1"]
    asyncio.run(S.prewarm_once(st, T0 + timedelta(minutes=5)))
    assert len(core.created) == 3
    # The window ends: the placeholders go, the user's pod stays
    st.store.expire(T0 + timedelta(hours=3))
    asyncio.run(S.prewarm_once(st, T0 + timedelta(hours=3)))
    assert sorted(core.deleted) == ["esker-seat-intro-ml-0", "esker-seat-intro-ml-2"]
    assert list(core.pods) == ["jupyter-alice"]


def test_the_fake_api_catches_a_wrong_namespace(tmp_path):
    core = FakeCore("hub")
    st = state(tmp_path, kube=core, backend="kubernetes", namespace="esker")  # service and cluster disagree
    st.store.reserve(res(rid="a", seats=1), lambda n, e: reservations.Decision(True))
    with pytest.raises(AssertionError):
        asyncio.run(S.prewarm_once(st, T0))
