"""esker_client.spark_ui, the Spark UIs in JupyterLab through jupyter-server-proxy: pure parts (ports, key,
tokens, the listener check over a fake /proc/net, the rewriting), and the plan's side (the grant's UI ports
reach the environment, the driver UI is on only behind the own cluster's filter)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
try:
    import esker_client  # noqa: F401  (installed in a notebook environment)
except ImportError:  # the test venv: use the source tree
    sys.path.insert(0, str(ROOT / "images" / "esker-client" / "src"))

from esker_client import spark_ui  # noqa: E402

KEY = base64.urlsafe_b64encode(b"k" * 32).decode().rstrip("=")
ENV = {"ESKER_SPARK_UI_PORTS": "driver:41001,master:41002,worker:41003",
       "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}


def verify(token: str, key: str) -> dict:
    head, body, sig = token.split(".")
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    want = base64.urlsafe_b64encode(hmac.new(raw, f"{head}.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=")
    assert sig.encode() == want
    assert json.loads(base64.urlsafe_b64decode(head + "==")) == {"alg": "HS256", "typ": "JWT"}
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_ports_key_and_token(tmp_path):
    assert spark_ui.ui_ports(ENV) == {"driver": 41001, "master": 41002, "worker": 41003}
    assert spark_ui.ui_ports({}) == {}
    conf = tmp_path / "spark-defaults.conf"
    conf.write_text("spark.authenticate true\nspark.org.apache.spark.ui.JWSFilter.param.secretKey " + KEY + "\n")
    assert spark_ui.ui_key({"SPARK_CONF_DIR": str(tmp_path)}) == KEY
    assert spark_ui.ui_key({"SPARK_CONF_DIR": str(tmp_path / "none")}) == "" == spark_ui.ui_key({})
    claims = verify(spark_ui.bearer_token(KEY, lifetime=60, now=1000), KEY)
    assert claims["exp"] == 1060  # Spark's filter is set to require an expiry
    # The same token the hub signs for the master's status (esker.spark.cluster.ui_token) is accepted alike.
    from esker.spark.cluster import ui_token
    assert verify(ui_token(KEY), KEY)["exp"] > time.time()


def proc_net(tmp_path, rows: list[tuple[str, int, str, int]], v6: list[tuple[str, int, str, int]] = ()) -> str:
    """A fake /proc/net with (local address hex, port, state, uid) rows."""
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    for name, items in (("tcp", rows), ("tcp6", v6)):
        lines = [f"   {i}: {a}:{p:04X} {'0' * len(a)}:0000 {st} 00000000:00000000 00:00000000 00000000 {uid} 0 1 1"
                 for i, (a, p, st, uid) in enumerate(items)]
        (tmp_path / name).write_text(head + "\n".join(lines) + "\n")
    return str(tmp_path)


def test_listener_check(tmp_path):
    net = proc_net(tmp_path, [("0100007F", 41001, "0A", 1001), ("0100007F", 41002, "01", 1002),
                              ("0200007F", 41004, "0A", 1002)],
                   [("0000000000000000FFFF00000100007F", 41003, "0A", 1001),
                    ("00000000000000000000000001000000", 41005, "0A", 1002)])
    assert spark_ui.listener_uids(41001, net) == {1001}
    assert spark_ui.listener_uids(41003, net) == {1001}  # Spark's UI: a v4-mapped IPv6 socket
    assert spark_ui.listener_uids(41002, net) == set()  # a connection, not a listener
    assert spark_ui.listener_uids(41004, net) == set()  # 127.0.0.2: not where the proxy connects
    assert spark_ui.listener_uids(41005, net) == {1002}  # ::1: localhost may resolve there
    spark_ui.check_listener(41001, "driver", uid=1001, proc_net=net)
    with pytest.raises(spark_ui.NotServing) as e:
        spark_ui.check_listener(41001, "driver", uid=1002, proc_net=net)
    assert e.value.args[0] == 502 and "another account" in e.value.args[1]
    with pytest.raises(spark_ui.NotServing) as e:
        spark_ui.check_listener(41002, "driver", uid=1001, proc_net=net)
    assert e.value.args[0] == 503 and "No Spark session is running" in e.value.args[1]


def test_request_headers_only_for_our_own_listener(tmp_path, monkeypatch):
    from tornado import web

    (tmp_path / "spark-defaults.conf").write_text(f"{spark_ui.KEY_SETTING} {KEY}\n")
    env = {**ENV, "SPARK_CONF_DIR": str(tmp_path)}
    monkeypatch.setattr(spark_ui, "listener_uids", lambda port, proc_net="/proc/net": {1001})
    monkeypatch.setattr(spark_ui.os, "getuid", lambda: 1001)
    h = spark_ui.request_headers(41001, "driver", env)
    assert h["Accept-Encoding"] == "identity" and h["Authorization"].startswith("Bearer ")
    assert h["Host"] == "127.0.0.1:41001"
    assert verify(h["Authorization"].split(" ", 1)[1], KEY)["exp"] <= time.time() + spark_ui.TOKEN_LIFETIME
    monkeypatch.setattr(spark_ui.os, "getuid", lambda: 1002)  # someone else holds the port: no token, no request
    with pytest.raises(web.HTTPError) as e:
        spark_ui.request_headers(41001, "driver", env)
    assert e.value.status_code == 502


def response(headers: dict, body: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(headers=dict(headers), body=body)


def test_rewrite_redirects_and_links(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    # Spark redirects to its own absolute URL: a path, which jupyter-server-proxy puts under the UI's prefix.
    r = response({"Location": "http://127.0.0.1:41001/jobs/"})
    spark_ui.rewrite(r, 41001)
    assert r.headers["Location"] == "/jobs/"
    browser = SimpleNamespace(protocol="https", host="hub.example:8443")
    r = response({"Location": "https://hub.example:8443/jobs/"})  # built from the browser's Host
    spark_ui.rewrite(r, 41001, request=browser)
    assert r.headers["Location"] == "/jobs/"
    r = response({"Location": "https://elsewhere.example/jobs/"})
    spark_ui.rewrite(r, 41001, request=browser)
    assert r.headers["Location"] == "https://elsewhere.example/jobs/"
    r = response({"Location": "http://127.0.0.1:41003/logPage/?appId=a"})
    spark_ui.rewrite(r, 41002)
    assert r.headers["Location"] == "/user/alice/spark-worker/logPage/?appId=a"
    body = (b'<a href="http://127.0.0.1:41003">worker</a> <a href="http://localhost:41001/">app</a> '
            b'<a href="http://127.0.0.1:9999/">other</a>')
    r = response({"Content-Type": "text/html;charset=utf-8"}, body)
    spark_ui.rewrite(r, 41002)
    assert r.body == (b'<a href="/user/alice/spark-worker/">worker</a> <a href="/user/alice/spark-ui/">app</a> '
                      b'<a href="http://127.0.0.1:9999/">other</a>')
    r = response({"Content-Type": "application/json"}, b'{"stdout": "http://127.0.0.1:41003/logPage/?x=1"}')
    spark_ui.rewrite(r, 41001)
    assert r.body == b'{"stdout": "/user/alice/spark-worker/logPage/?x=1"}'
    png = response({"Content-Type": "image/png"}, b"http://127.0.0.1:41003")
    spark_ui.rewrite(png, 41001)
    assert png.body == b"http://127.0.0.1:41003"


def test_entry_points(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    d, m, w = spark_ui.driver_ui(), spark_ui.master_ui(), spark_ui.worker_ui()
    assert (d["port"], m["port"], w["port"]) == (41001, 41002, 41003)
    assert d["command"] == [] and d["launcher_entry"]["title"] == "Spark UI" and d["launcher_entry"]["enabled"]
    assert m["launcher_entry"]["title"] == "Spark cluster" and not w["launcher_entry"]["enabled"]
    assert callable(d["request_headers_override"]) and callable(d["rewrite_response"])
    monkeypatch.delenv("ESKER_SPARK_UI_PORTS")
    with pytest.raises(LookupError):
        spark_ui.driver_ui()
    text = (ROOT / "images" / "esker-client" / "pyproject.toml").read_text()
    for name in ("spark-ui", "spark-master", "spark-worker"):
        assert f'{name} = "esker_client.spark_ui:' in text


def test_plan_gives_the_ui_ports_and_turns_the_driver_ui_on_only_behind_the_filter():
    from esker.core.catalog import Catalog, UserInfo
    from esker.core.plan import Placement, build_plan, select, with_grants
    from esker.spawner.embedded import embedded_site
    from esker.core import config

    cfg = config.load(str(ROOT / "esker.yaml"))
    sel = select(Catalog.from_config(cfg), UserInfo("alice", frozenset()), {"profile": "spark"})
    site = embedded_site(cfg.data)
    grant = {"master": "spark://127.0.0.1:40111", "secret": "s", "ui_key": "k", "ui_port": "40114",
             "master_ui_port": "40112", "worker_ui_port": "40113"}
    plan = build_plan(sel, with_grants(Placement(scratch_dir="/s", python="/p"), spark=grant), site)
    assert plan.env["ESKER_SPARK_UI_PORTS"] == "driver:40114,master:40112,worker:40113"
    assert plan.env["SPARK_LOCAL_IP"] == "127.0.0.1"  # Spark's UI binds to it, else to every address
    args = plan.env["PYSPARK_SUBMIT_ARGS"]
    assert "spark.ui.enabled=true" in args and "spark.ui.port=40114" in args
    assert "requireExpiration true" in next(iter(plan.files.values()))
    # An external master (no own cluster, no filter key): the driver UI stays off on a shared machine.
    from dataclasses import replace
    site = replace(site, spark=replace(site.spark, master_url="spark://shared.example:7077"))
    shared = build_plan(sel, Placement(scratch_dir="/s", python="/p"), site)
    assert "spark.ui.enabled=false" in shared.env["PYSPARK_SUBMIT_ARGS"]
    assert "ESKER_SPARK_UI_PORTS" not in shared.env
