"""Functions, hub side (docs/functions.md), as plain data: named-server policy, option handling, the plan's
ESKER_FUNCTION, the call scope check, publish validation, the record store, the hub's named-server gate and the
function pod's command."""

from __future__ import annotations

import copy
import os
import stat
import types
from pathlib import Path

import pytest
import yaml
from tornado import web

from esker.core import config
from esker.core.catalog import Catalog, UserInfo
from esker.core.functions import function_of, split_options
from esker.core.plan import OptionError, Placement, Site, SparkSite, build_plan, select
from esker.functions import access, stats
from esker.functions.activator import forward_request, safe_rest
from esker.functions.roles import SERVICE_SCOPES, SNAPSHOT, named_server_gate
from esker.functions.store import FunctionStore
from esker.spawner import k8s_objects as ko

REPO = Path(__file__).resolve().parents[2]
RAW = yaml.safe_load((REPO / "esker.yaml").read_text())
RESTRICTED = copy.deepcopy(RAW)
RESTRICTED["profiles"][0]["groups"] = ["spark-users"]  # spark: alice is not in the group
CAT = Catalog.from_config(config.validate(RESTRICTED))
ALICE = UserInfo("alice")
MANIFEST = {"name": "predict", "vid": "0123456789abcdef", "semver": "1.0.0", "profile": "minimal", "options": {}}


@pytest.mark.parametrize("server", ["x", "fn", "fn-", "fn-Upper", "fn-1abc", "fn-a/b", "notebook2", "fn-" + "a" * 32])
def test_only_fn_named_servers(server):
    with pytest.raises(OptionError) as e:
        function_of(server)
    assert e.value.status == 400 and "fn-<name>" in str(e.value)


def test_function_options_are_split_and_must_match_the_server():
    assert split_options("fn-predict", {"profile": "minimal", "function": "predict"}) == ("predict", {"profile": "minimal"})
    assert split_options("", {"profile": "minimal"}) == (None, {"profile": "minimal"})
    for server, opts, field in [("fn-predict", {"profile": "minimal"}, "function"),
                                ("fn-predict", {"function": "other"}, "other"),
                                ("", {"function": "predict"}, "function")]:
        with pytest.raises(OptionError) as e:
            split_options(server, opts)
        assert e.value.status == 400 and field in str(e.value)


def test_plan_env_names_the_function_in_both_modes():
    fn, rest = split_options("fn-predict", {"profile": "minimal", "function": "predict"})
    sel = select(CAT, ALICE, rest)
    from dataclasses import replace
    fsel = replace(sel, function=fn)
    site = Site(spark=SparkSite("spark://127.0.0.1:7077"))
    for mode in ("embedded", "kubernetes"):
        s = replace(site, mode=mode)
        env = build_plan(fsel, Placement(scratch_dir="/scratch/alice"), s).env
        assert env["ESKER_FUNCTION"] == "predict"
        assert "ESKER_FUNCTION" not in build_plan(sel, Placement(scratch_dir="/scratch/alice"), s).env
    assert fsel.user_options() == {"profile": "minimal", "function": "predict"}


def test_fn_pod_runs_the_function_server():
    assert ko.server_cmd("predict", ["jupyterhub-singleuser"]) == ["python", "-m", "esker_client.functions.serve"]
    assert ko.server_cmd(None, ["jupyterhub-singleuser"]) == ["jupyterhub-singleuser"]


def test_call_scope():
    own = {"kind": "user", "name": "alice", "scopes": ["access:servers!user=alice"]}
    shared = {"kind": "user", "name": "bob", "scopes": ["access:servers!server=alice/fn-predict"]}
    other = {"kind": "user", "name": "bob", "scopes": ["access:servers!server=alice/fn-other",
                                                       "access:servers!user=bob", "read:users"]}
    assert access.may_call(own, "alice", "predict")
    assert access.may_call(shared, "alice", "predict")
    assert not access.may_call(other, "alice", "predict")
    assert not access.may_call({"scopes": ["access:servers!server=alice/"]}, "alice", "predict")
    assert not access.may_call(None, "alice", "predict")


def test_publish_uses_the_spawn_check():
    assert access.publish_options(CAT, ALICE, "predict", MANIFEST) == {"profile": "minimal", "function": "predict"}
    with pytest.raises(OptionError) as e:  # the same message a spawn of spark gives alice
        access.publish_options(CAT, ALICE, "predict", {**MANIFEST, "profile": "spark"})
    with pytest.raises(OptionError) as spawn:
        select(CAT, ALICE, {"profile": "spark"})
    assert e.value.status == 403 and str(e.value) == str(spawn.value)


@pytest.mark.parametrize("change, field", [
    ({"vid": "xyz"}, "vid"), ({"semver": "1.2"}, "semver"), ({"profile": 3}, "profile"),
    ({"options": []}, "options"), ({"options": {"function": "x"}}, "options"), ({"name": "other"}, "name"),
    ({"profile": "nope"}, "unknown profile"),
])
def test_bad_manifests_name_the_field(change, field):
    with pytest.raises(OptionError) as e:
        access.publish_options(CAT, ALICE, "predict", {**MANIFEST, **change})
    assert e.value.status == 400 and field in str(e.value)


def test_services_do_not_publish():
    with pytest.raises(OptionError) as e:
        access.user_of({"kind": "service", "name": "x"})
    assert e.value.status == 403


def test_store_is_private_and_keeps_versions(tmp_path):
    s = FunctionStore(str(tmp_path / "functions.sqlite"))
    assert stat.S_IMODE(os.stat(tmp_path / "functions.sqlite").st_mode) == 0o600
    s.put("alice", "predict", {"profile": "minimal", "function": "predict"}, MANIFEST)
    s.put("alice", "predict", {"profile": "minimal", "function": "predict"}, {**MANIFEST, "vid": "f" * 16})
    r = s.get("alice", "predict")
    assert r.version == "f" * 16 and {v["version"] for v in r.versions} == {"f" * 16, MANIFEST["vid"]}
    assert s.get("bob", "predict") is None and [x.name for x in s.of_owner("alice")] == ["predict"]
    assert s.delete("alice", "predict") and s.get("alice", "predict") is None and s.keys() == []


def handler(*args):
    return types.SimpleNamespace(path_args=list(args), path_kwargs={})


def test_hub_gate_refuses_other_named_servers_before_creating_them():
    gate = named_server_gate(7)
    assert gate(handler("alice", "fn-predict")) == 7
    with pytest.raises(web.HTTPError) as e:
        gate(handler("alice", "scratchpad"))
    assert e.value.status_code == 400 and "fn-<name>" in e.value.log_message


def test_forwarded_call_keeps_the_callers_token_and_refuses_dot_segments():
    r = forward_request("http://127.0.0.1:8000", "/", "alice", "predict", "v/1.0.0", "POST",
                        {"Authorization": "token T", "Content-Type": "application/json", "Cookie": "c"}, b"{}", 30)
    assert r.url == "http://127.0.0.1:8000/user/alice/fn-predict/v/1.0.0" and r.method == "POST"
    assert r.headers["Authorization"] == "token T" and "Cookie" not in r.headers
    assert safe_rest("v/latest") and not safe_rest("../../bob/fn-x") and not safe_rest("a/./b")


def test_stats_snapshot_is_private(tmp_path):
    path = str(tmp_path / "s.json")
    stats.write(path, stats.snapshot({"alice/p": {"versions": {"v": {"calls": 2}}}}, {"alice/p": [1, 2.5]}))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stats.read(path)["alice/p"] == {"versions": {"v": {"calls": 2}}, "cold_starts": 1, "cold_start_seconds": 2.5}


def test_service_role_is_small():
    assert "admin:users" not in SERVICE_SCOPES and "admin:servers" not in SERVICE_SCOPES
    assert set(SERVICE_SCOPES) == {"servers", "list:users", "shares", "read:users:name", "read:groups:name"}


def test_metrics_collector_reads_the_snapshot(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from esker.metrics import FunctionsCollector
    path = str(tmp_path / "s.json")
    v = {"calls": 3, "errors": 1, "timeouts": 0, "in_flight": 1, "latency_sum": 0.3,
         "latency_buckets": {"0.1": 2, "1": 3, "+Inf": 3}}
    stats.write(path, stats.snapshot({"alice/p": {"versions": {"abc": v}}}, {"alice/p": [2, 3.5]}))
    reg = CollectorRegistry()
    reg.register(FunctionsCollector(lambda: path))
    text = generate_latest(reg).decode()
    assert 'esker_function_calls_total{function="alice/p",version="abc"} 3.0' in text
    assert 'esker_function_latency_seconds_bucket{function="alice/p",le="0.1",version="abc"} 2.0' in text
    assert 'esker_function_cold_starts_total{function="alice/p"} 2.0' in text


def test_publish_groups_restrict_publishing_to_a_custom_scope():
    from esker.app import configurer
    from esker.core import config as config_mod
    from esker.functions import access
    from esker.functions.roles import PUBLISH_SCOPE
    from esker.core.plan import OptionError
    from esker import resources
    from esker.app.deployment import Deployment
    import tempfile

    cfg = config_mod.load(str(resources.default_config())).data
    d = Deployment(state_dir=tempfile.mkdtemp(), config_file="esker.yaml", port=8000, hub_port=8081,
                              proxy_api_port=8001, proxy_command=[])
    open_hub = configurer.to_traitlets(cfg, d)
    assert "custom_scopes" not in open_hub["JupyterHub"]
    assert PUBLISH_SCOPE not in open_hub["Spawner"]["server_token_scopes"]
    access.check_publisher({"name": "alice", "scopes": []}, [])  # no groups: everyone publishes

    cfg = {**cfg, "functions": {**cfg["functions"], "publish_groups": ["data-team"]}}
    closed = configurer.to_traitlets(cfg, d)
    assert PUBLISH_SCOPE in closed["JupyterHub"]["custom_scopes"]
    role = next(r for r in closed["JupyterHub"]["load_roles"] if r["name"] == "esker-function-publishers")
    assert role["scopes"] == [PUBLISH_SCOPE] and role["groups"] == ["data-team"]
    assert PUBLISH_SCOPE in closed["Spawner"]["server_token_scopes"]
    access.check_publisher({"name": "alice", "scopes": [PUBLISH_SCOPE, "access:servers!user=alice"]}, ["data-team"])
    with pytest.raises(OptionError) as e:
        access.check_publisher({"name": "bob", "scopes": ["access:servers!user=bob"]}, ["data-team"])
    assert e.value.status == 403 and "data-team" in str(e.value)


# --- the idle pass -----------------------------------------------------------------------------------------

class _IdleHub:
    """The hub's API as the idle pass uses it: ready users' servers, DELETE recorded; stats per server URL."""

    token = "svc"

    def __init__(self, servers):
        self.servers, self.deleted = servers, []

    async def paginated(self, path):
        assert path == "/users?state=ready"
        yield {"name": "alice", "servers": self.servers}

    async def request(self, method, path, body=None):
        self.deleted.append((method, path))
        return 204, None


class _Stats:
    def __init__(self, by_server):
        self.by_server = by_server

    async def fetch(self, req, raise_error=True):
        server = req.url.rstrip("/").split("/")[-2]
        body = self.by_server.get(server)
        return types.SimpleNamespace(code=200 if body is not None else 503, body=(body or "").encode())


def test_the_idle_pass_stops_idle_functions_but_not_busy_ones_or_notebooks(tmp_path):
    import asyncio
    import json

    from esker.functions.service import idle_and_stats_once

    long_ago = "2026-01-01T00:00:00Z"
    servers = {name: {"ready": True, "last_activity": long_ago} for name in ("fn-idle", "fn-busy", "fn-down", "")}
    servers["fn-fresh"] = {"ready": True, "last_activity": long_ago}
    busy = {"versions": {"a" * 16: {"in_flight": 0}, "b" * 16: {"in_flight": 2}}}
    quiet = {"versions": {"a" * 16: {"in_flight": 0, "calls": 5}}}
    hub = _IdleHub(servers)
    st = types.SimpleNamespace(
        cfg={"functions": {"idle_timeout": 900}}, api=hub, state_dir=str(tmp_path), proxy_url="http://p",
        base_url="/", http=_Stats({"fn-idle": json.dumps(quiet), "fn-busy": json.dumps(busy),
                                   "fn-fresh": json.dumps(quiet)}),
        activator=types.SimpleNamespace(last_call={("alice", "fresh"): 1e12}, cold_starts={}))
    stopped = asyncio.run(idle_and_stats_once(st, now=1.8e9))
    # idle with nothing in flight (or no stats to say otherwise) is stopped; a task in flight keeps it; a
    # call through the activator counts as activity; the default notebook server is not a function
    assert sorted(stopped) == ["alice/down", "alice/idle"]
    assert sorted(p for _, p in hub.deleted) == ["/users/alice/servers/fn-down", "/users/alice/servers/fn-idle"]
    snap = stats.read(str(tmp_path / SNAPSHOT))
    assert set(snap) == {"alice/busy", "alice/fresh"} and snap["alice/busy"]["versions"] == busy["versions"]
    assert stats.busy(busy) and not stats.busy(quiet) and not stats.busy(None)
