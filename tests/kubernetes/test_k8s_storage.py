"""S3 on Kubernetes: the same storage service provisions the user, and its grant reaches the pod as the same
variables the embedded backend injects; a storage outage follows the profile's storage policy."""

from __future__ import annotations

import asyncio
import base64

import pytest
import yaml
from tornado import web

from esker.cli import preview as cli_preview
from esker import resources
from esker.spawner import k8s_objects as ko
from esker.core.plan import build_plan, select

pytestmark = pytest.mark.kubernetes
GRANT = {"endpoint": "http://rgw.ceph.svc:80", "access_key": "AKUSER", "secret_key": "s3cret", "region": "default",
         "bucket": "esker-alice", "datasets": '{"weather": "s3://shared-datasets/weather/"}'}


@pytest.fixture(scope="module", autouse=True)
def kubeconfig():
    with cli_preview.offline_kubeconfig():
        yield


class FakeStorage:
    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    async def prepare(self, username, groups=(), admin=False):
        self.calls.append((username, frozenset(groups), admin))
        if self.fail:
            raise ConnectionError("RGW did not answer in 5 s")
        return dict(GRANT)


def config(tmp_path, storage_policy="optional"):
    data = yaml.safe_load(open(resources.SHIPPED_CONFIG))
    data["storage"]["endpoint"] = "http://rgw.ceph.svc:80"
    for p in data["profiles"]:
        p["storage"] = storage_policy
    path = tmp_path / "esker.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def spawn_env(config_file, storage, profile="minimal"):
    async def run():
        sp = cli_preview.make_spawner("alice", ("instructors",), False, config_file, {"profile": profile})
        sp.runtime.storage = storage  # this test's own runtime (its own config file)
        sel = sp.esker_select(sp.user_options)  # the services, as esker_prepare runs them
        sp._esker_grants = (await sp.esker_prepare_services(sel, ko.kubernetes_placement(sel, sp.esker_config))).grants
        pod, *others = await sp.esker_manifests()
        secrets = {o["metadata"]["name"]: o["data"] for o in others if o["kind"] == "Secret"}
        env = {}
        for e in pod["spec"]["containers"][0]["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")  # the S3 keys: from the server's Secret
            env[e["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode() if ref else e.get("value")
        return sp, env

    return asyncio.run(run())


def test_grant_reaches_the_pod_like_embedded(tmp_path):
    storage = FakeStorage()
    sp, env = spawn_env(config(tmp_path), storage)
    assert storage.calls == [("alice", frozenset({"instructors"}), False)]
    assert env["AWS_ENDPOINT_URL"] == env["S3_ENDPOINT_URL"] == GRANT["endpoint"]
    assert env["AWS_ACCESS_KEY_ID"] == "AKUSER" and env["AWS_SECRET_ACCESS_KEY"] == "s3cret"
    assert env["ESKER_BUCKET"] == "esker-alice" and env["ESKER_DATASETS"] == GRANT["datasets"]
    plan = sp.esker_launch_plan
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                "S3_ENDPOINT_URL", "ESKER_BUCKET", "ESKER_DATASETS"):
        assert env[key] == plan.env[key]
    # the embedded backend builds the same variables from the same grant
    from esker.core.catalog import Catalog

    sel = select(Catalog.from_config(sp.esker_config), sp.esker_user, {"profile": "minimal"})
    from esker.core.plan import Placement, Site

    embedded = build_plan(sel, Placement("/scratch", grants={"storage": GRANT}), Site()).env
    assert {k: v for k, v in embedded.items() if k.startswith(("AWS_", "S3_", "ESKER_BUCKET", "ESKER_DATASETS"))} == \
        {k: v for k, v in env.items() if k.startswith(("AWS_", "S3_", "ESKER_BUCKET", "ESKER_DATASETS"))}


def test_storage_down_optional_profile_starts_without_s3(tmp_path):
    _, env = spawn_env(config(tmp_path), FakeStorage(fail=True))
    assert not any(k.startswith("AWS_") for k in env) and "ESKER_BUCKET" not in env


def test_storage_down_required_profile_is_refused(tmp_path):
    with pytest.raises(web.HTTPError) as e:
        spawn_env(config(tmp_path, "required"), FakeStorage(fail=True))
    assert e.value.status_code == 503 and "RGW did not answer" in e.value.log_message


def test_kubernetes_needs_an_external_endpoint(tmp_path):
    from esker.core import config as cfg_mod
    from esker.objectstore.errors import StorageError
    from esker.objectstore.service import StorageService

    data = yaml.safe_load(open(__import__('esker.resources').resources.SHIPPED_CONFIG))
    with pytest.raises(StorageError, match="storage.endpoint is required on Kubernetes"):
        StorageService.from_config(cfg_mod.validate(data), str(tmp_path), mode="kubernetes")


# -- the base policy while the gateway is starting (EskerSpawner.esker_storage_grant; the same in both modes) --
class StartingStorage(FakeStorage):
    """A gateway that says it is starting for ``ready_after`` seconds and refuses connections until then."""

    def __init__(self, ready_after: float, start_wait: float = 10.0, down: bool = False):
        super().__init__()
        self.t0, self.ready_after, self.start_wait, self.down = None, ready_after, start_wait, down

    def _elapsed(self):
        import time

        self.t0 = self.t0 or time.monotonic()
        return time.monotonic() - self.t0

    def starting(self):
        return "the embedded Ceph is starting" if self._elapsed() < self.ready_after else None

    async def prepare(self, username, groups=(), admin=False):
        self.calls.append((username, frozenset(groups), admin))
        if self.down or self._elapsed() < self.ready_after:
            raise ConnectionError("object storage at http://127.0.0.1:7480 is unreachable (connection refused)")
        return dict(GRANT)


@pytest.fixture
def quick_wait(monkeypatch):
    from esker.spawner import base

    monkeypatch.setattr(base, "STORAGE_WAIT_EVERY", 0.2)
    monkeypatch.setattr(base, "STORAGE_WAIT_POLL", 0.02)


def grant_of(config_file, storage, profile="minimal"):
    """The spawner's storage grant (or its refusal), its progress messages and its state afterwards."""
    async def run():
        sp = cli_preview.make_spawner("alice", (), False, config_file, {"profile": profile})
        sp.runtime.storage = storage
        sel = sp.esker_select(sp.user_options)
        try:
            return await sp.esker_storage_grant(sel), [e["message"] for e in sp._esker_events], sp
        finally:
            sp.runtime.storage = None

    return asyncio.run(run())


def test_a_starting_gateway_is_waited_for_with_progress(tmp_path, quick_wait):
    storage = StartingStorage(ready_after=1.0)
    grant, messages, sp = grant_of(config(tmp_path), storage)
    assert grant == GRANT
    waits = [m for m in messages if m.startswith("Waiting for object storage, ")]
    assert 3 <= len(waits) <= 7, messages  # every 0.2 s here (every 2 s in a hub), not at every poll
    assert waits[0] == "Waiting for object storage, 0 s: the embedded Ceph is starting", waits
    assert messages[-1] == "Object storage ready: bucket esker-alice"
    assert len(storage.calls) == 1  # asked once it said it was up, not hammered while it started
    assert "no_storage" not in sp.get_state()


def test_the_wait_is_bounded(tmp_path, quick_wait):
    grant, messages, sp = grant_of(config(tmp_path), StartingStorage(ready_after=60, start_wait=1.2))
    assert grant is None
    assert "(after waiting 1 s for it to start)" in messages[-1], messages
    assert "starting without it" in messages[-1]
    missing = sp.get_state()["no_storage"]
    assert "unreachable" in missing["reason"] and missing["since"]
    with pytest.raises(web.HTTPError) as e:
        grant_of(config(tmp_path, "required"), StartingStorage(ready_after=60, start_wait=0.5))
    assert e.value.status_code == 503 and "needs it" in e.value.log_message


def test_a_down_gateway_is_not_waited_for(tmp_path, quick_wait):
    import time

    t0 = time.monotonic()
    grant, messages, sp = grant_of(config(tmp_path), StartingStorage(ready_after=0, start_wait=30, down=True))
    assert grant is None and time.monotonic() - t0 < 2
    assert not any(m.startswith("Waiting") for m in messages) and "after waiting" not in messages[-1]
    # recorded for `esker status`, kept across a hub restart, gone after the stop and at the next start
    state = sp.get_state()
    assert state["no_storage"]["reason"].startswith("object storage at")
    sp.load_state(state)
    assert sp.esker_no_storage == state["no_storage"]
    sp.clear_state()
    assert "no_storage" not in sp.get_state()
    grant, _, sp = grant_of(config(tmp_path), StartingStorage(ready_after=0))
    assert grant == GRANT and "no_storage" not in sp.get_state()
