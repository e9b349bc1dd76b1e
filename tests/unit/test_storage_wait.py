"""Storage is there, or the spawn says so and waits: how the hub tells that the embedded Ceph is still starting
(the managed service's record, esker.objectstore.ceph), and how `esker status` lists the servers that started
without object storage. The spawner's waiting itself is in tests/kubernetes/test_k8s_storage.py (the base
policy, through the offline spawner) and, with a real hub and Ceph, tests/services/test_storage_startup.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from esker.cli import status
from esker.objectstore import ceph
from esker.objectstore.ceph import embedded_starting, read_service_state, starting_reason, write_service_state

NOW = 1_000_000.0


def rec(state, since=NOW - 3, at=NOW - 1):
    return {"state": state, "pid": 1, "start": 1, "since": since, "at": at, "detail": ""}


@pytest.mark.parametrize("record,alive,starting", [
    (None, False, False),  # never started here (or an external gateway): nothing to wait for
    (rec("launching"), True, True),  # the hub loaded its config and starts the service once it serves
    (rec("launching", at=NOW - ceph.LAUNCH_GRACE - 1), True, False),  # the service never said more: down
    (rec("launching"), False, False),  # the hub that wrote it is gone
    (rec("starting"), True, True),
    (rec("starting"), False, False),  # it died while starting: down
    (rec("ready"), True, False),  # up: a spawn that fails now fails because the gateway is down
    (rec("failed"), True, False),  # said so and exits
    (rec("stopping"), True, False),
    (rec("stopped"), False, False),
])
def test_starting_reason(record, alive, starting):
    why = starting_reason(record, alive, NOW)
    assert bool(why) == starting, why


def test_starting_reason_says_how_long():
    assert starting_reason(rec("starting", since=NOW - 7.4), True, NOW) == \
        "the embedded Ceph has been starting for 7 s"
    assert starting_reason(rec("launching"), True, NOW) == "the hub is starting the embedded Ceph"


def test_record_round_trip_and_liveness(tmp_path):
    d = tmp_path / "ceph"  # not made yet: the hub writes "launching" before the service's first start
    assert read_service_state(d) is None and embedded_starting(d) is None
    first = write_service_state(d, "starting")
    assert (d.stat().st_mode & 0o777) == 0o700  # the cluster directory is root's alone
    assert read_service_state(d)["state"] == "starting" and read_service_state(d)["pid"] == os.getpid()
    assert "has been starting for" in embedded_starting(d)  # this process wrote it and runs
    write_service_state(d, "ready", since=first["since"])
    assert embedded_starting(d) is None
    assert read_service_state(d)["since"] == first["since"]
    with pytest.raises(ValueError):
        write_service_state(d, "sleeping")


def test_a_dead_writer_is_not_starting(tmp_path):
    d = tmp_path / "ceph"
    code = f"from esker.objectstore.ceph import write_service_state; write_service_state({str(d)!r}, 'starting')"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert read_service_state(d)["state"] == "starting"
    assert embedded_starting(d) is None  # its process has exited: a crashed start is down, not starting
    (d / "run" / "service.json").write_text("{not json")
    assert embedded_starting(d) is None


def users_answer(servers):
    return [{"name": "ann", "servers": {"": servers[0]}}, {"name": "ben", "servers": {"": servers[1]}}]


def test_status_lists_servers_without_storage(monkeypatch):
    missing = {"reason": "object storage at http://127.0.0.1:7480 is unreachable (connection refused)",
               "since": "2026-11-02T09:00:00+00:00"}
    answer = users_answer([
        {"ready": True, "user_options": {"profile": "minimal"}, "state": {"pid": 12, "no_storage": missing}},
        {"ready": True, "user_options": {"profile": "spark"}, "state": {"pid": 13}},
    ])
    monkeypatch.setattr(status, "_get", lambda url, timeout, headers=None: (200, json.dumps(answer).encode()))
    out = status.check_servers("http://hub", "token", 1)
    assert out["running"] == 2
    assert out["without_storage"] == [{"user": "ann", "server": "", "profile": "minimal",
                                       "since": missing["since"], "reason": missing["reason"]}]
    assert "1 without object storage" in out["detail"] and out["detail"].endswith(": ann")


def test_status_storage_says_starting(tmp_path, monkeypatch):
    from esker.core import config as config_mod

    cfg = config_mod.validate({"storage": {"enabled": True, "embedded": {"port": 1}},
                               "profiles": [{"slug": "minimal", "display_name": "M", "image": "x",
                                             "environment": "minimal"}]})
    monkeypatch.setattr(status, "_get", lambda *a, **k: (_ for _ in ()).throw(ConnectionRefusedError("refused")))
    assert "starting" not in status.check_storage(cfg, 1, str(tmp_path))
    write_service_state(tmp_path / "ceph", "starting")
    out = status.check_storage(cfg, 1, str(tmp_path))
    assert out["status"] == status.DOWN and "the embedded Ceph has been starting" in out["detail"], out
