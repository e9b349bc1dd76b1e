"""The task broker through a real embedded hub (docs/functions.md, "Async calls"): a function's start makes its
ACL user in a real Redis, and a start that fails gives it back (the failed-spawn rule: nothing left behind)."""

from __future__ import annotations

import os
import time

import pytest
import redis

from conftest import needs_root
from esker import devhub
from esker.core import broker as names
from tests.services.test_function_broker import ADMIN_PW, Redis

pytestmark = [pytest.mark.integration, needs_root,
              pytest.mark.skipif(not __import__("shutil").which("redis-server"), reason="redis-server")]


@pytest.fixture(scope="module")
def broker_hub(tmp_path_factory):
    r = Redis(tmp_path_factory.mktemp("redis")).start()
    devhub.prepare_environments(["minimal"])
    cfg = devhub.test_config("", "", spark={"enabled": False}, storage={"enabled": False})
    cfg.setdefault("functions", {})["broker"] = {"url": r.url}
    h = devhub.RunningHub(cfg)
    os.environ["ESKER_FUNCTIONS_BROKER_PASSWORD"] = ADMIN_PW  # the hub's environment, as the chart sets it
    try:
        h.start()
        yield h, r
    finally:
        os.environ.pop("ESKER_FUNCTIONS_BROKER_PASSWORD", None)
        h.teardown()
        r.stop()


def test_a_function_start_makes_its_broker_user_and_a_failed_start_deletes_it(broker_hub):
    h, r = broker_hub
    hub = h.hub
    hub.ensure_user("alice")
    admin = redis.Redis(port=r.port, username="esker-hub", password=ADMIN_PW)
    # Nothing is published (no object storage here), so the function server exits at start: a failed spawn.
    hub.request("POST", "/users/alice/servers/fn-predict",
                json={"user_options": {"profile": "minimal", "function": "predict"}})
    deadline = time.monotonic() + 240
    while True:
        s = (hub.request("GET", "/users/alice").json().get("servers") or {}).get("fn-predict")
        if not s or not (s.get("pending") or s.get("ready")):
            break
        assert time.monotonic() < deadline, s
        time.sleep(0.5)
    stats = admin.info("commandstats")
    assert stats.get("cmdstat_acl|setuser", {}).get("calls", 0) >= 1, stats  # the hub made the user...
    assert stats.get("cmdstat_acl|deluser", {}).get("calls", 0) >= 1, stats  # ...and gave it back
    users = [u if isinstance(u, str) else u.decode() for u in admin.acl_users()]
    assert names.acl_user("alice", "predict") not in users and sorted(users) == ["default", "esker-hub"], users
    assert "Task broker user ready" in open(h.log_path).read()  # the spawn's progress said so
