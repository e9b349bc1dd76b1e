"""The function server's authentication against a real JupyterHub: HubAuth with real tokens and real scopes.

The server is started by hand here (the spawner support for `fn-<name>` is another part); bob's access comes
from a role holding `access:servers!server=alice/fn-demo`, the scope a share grants."""

from __future__ import annotations

import time

import pytest
import requests

from conftest import needs_root
from esker.devhub import RunningHub
from tests.unit.fnserver_fixtures import Server, auth, publish, set_aliases

pytestmark = needs_root
VID = "0123456789abcdef"
SHARE = """
c.JupyterHub.load_roles.append({"name": "fn-demo-share", "scopes": ["access:servers!server=alice/fn-demo"],
                                "users": ["bob"]})
"""


class HubAPI:  # what FakeHub gives the unit tests, from the real hub
    def __init__(self, h: RunningHub):
        self.api_url = f"{h.url}/hub/api"


@pytest.fixture(scope="module")
def real_hub():
    h = RunningHub(extra_config=SHARE)
    try:
        h.start()
        for name in ("alice", "bob", "carol"):
            h.hub.ensure_user(name)
        yield h
    finally:
        h.teardown()


def test_real_tokens_401_403_200(real_hub, tmp_path):
    hub = real_hub.hub
    alice, bob, carol = (hub.login_token(n) for n in ("alice", "bob", "carol"))
    root = tmp_path / "bucket"
    publish(root, "demo", VID, "def hello(who: str) -> str:\n    return 'hello ' + who\n", "hello")
    set_aliases(root, "demo", {"latest": VID})
    s = Server(tmp_path, HubAPI(real_hub), f"dir:{root}", JUPYTERHUB_API_TOKEN=alice).start(token=alice)
    try:
        def call(token=None):
            return requests.post(s.url, json={"who": "x"}, headers=auth(token) if token else {}, timeout=30)
        r = call(alice)
        assert r.status_code == 200 and r.json() == "hello x"
        assert call().status_code == 401
        assert call("not-a-real-token").status_code == 401
        assert call(carol).status_code == 403
        assert call(bob).status_code == 200  # the share's scope
        assert requests.get(s.url + "stats", headers=auth(bob), timeout=30).status_code == 403
        assert requests.get(s.url + "stats", headers=auth(alice), timeout=30).status_code == 200
        # bob's token revoked at the hub: refused once the (1 s) auth cache has passed
        tokens = hub.request("GET", "/users/bob/tokens").json()["api_tokens"]
        for t in tokens:
            hub.request("DELETE", f"/users/bob/tokens/{t['id']}").raise_for_status()
        deadline = time.monotonic() + 15
        while call(bob).status_code != 401 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert call(bob).status_code == 401
    finally:
        s.stop()
