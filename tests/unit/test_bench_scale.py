"""bench/scale_load.py: the production request rates, the open-loop schedule, the hub-log parser, the summary."""

import importlib.util
import math
import random
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SPEC = importlib.util.spec_from_file_location("scale_load", BENCH / "scale_load.py")
load = importlib.util.module_from_spec(SPEC)
sys.modules["scale_load"] = load
SPEC.loader.exec_module(load)


def test_rates_follow_the_production_intervals():
    r = load.rates(1000, 1000)
    assert r["activity"] == pytest.approx(1000 / 300)  # JUPYTERHUB_ACTIVITY_INTERVAL
    assert r["whoami"] == pytest.approx(1000 / 300)  # HubAuth's cache_max_age
    assert r["status"] == pytest.approx(1000 / 600)
    assert r["spawn"] == r["stop"] == pytest.approx(1000 / 3600)
    # only running servers report activity; everyone may be asked about
    r = load.rates(1000, 100)
    assert r["activity"] == pytest.approx(100 / 300) and r["status"] == pytest.approx(1000 / 600)
    # the multiplier scales every stream, and the periodic clients' periods shrink with it
    assert load.rates(300, 300, multiplier=5)["activity"] == pytest.approx(5 * 300 / 300)
    assert load.periods(multiplier=5) == {"metrics": 3.0, "cull": 60.0}
    with pytest.raises(ValueError):
        load.rates(10, 20)
    with pytest.raises(ValueError):
        load.rates(10, 5, multiplier=0)


def test_culler_pages_cover_every_ready_server():
    assert load.cull_pages(0) == 1 and load.cull_pages(50) == 1 and load.cull_pages(51) == 2
    assert load.cull_pages(1000) == 20
    assert load.cull_pages(1000, load.Production(cull_page=200)) == 5


def test_poisson_arrivals_have_the_asked_rate_and_stay_in_the_window():
    rng = random.Random(1)
    counts = [len(load.poisson(10.0, 100.0, rng)) for _ in range(50)]
    assert statistics.mean(counts) == pytest.approx(1000, rel=0.03)
    ts = load.poisson(3.0, 20.0, rng)
    assert ts == sorted(ts) and all(0 <= t < 20 for t in ts)
    assert load.poisson(0, 10, rng) == []


def test_periodic_clock_and_at_least_once():
    rng = random.Random(2)
    ts = load.periodic(15, 60, rng)
    assert len(ts) in (4, 5) and all(b - a == pytest.approx(15) for a, b in zip(ts, ts[1:])) and ts[0] < 15
    assert all(len(load.periodic(300, 60, rng)) <= 1 for _ in range(20))  # a long period: at most once
    once = load.periodic(300, 60, rng, at_least_once=True)
    assert len(once) == 1 and 0 <= once[0] <= 48  # room left for its pages
    with pytest.raises(ValueError):
        load.periodic(0, 10, rng)


def test_schedule_is_sorted_open_loop_and_scales():
    rng = random.Random(3)
    s1 = load.schedule(1000, 1000, 600, rng)
    assert s1 == sorted(s1) and all(0 <= t < 600 for t, _ in s1)
    ops = [op for _, op in s1]
    assert ops.count("metrics") == 40  # every 15 s for 600 s
    assert ops.count("cull") == 2  # every 300 s
    assert ops.count("activity") == pytest.approx(2000, rel=0.1)
    s5 = load.schedule(1000, 1000, 600, random.Random(3), multiplier=5)
    assert len(s5) == pytest.approx(5 * len(s1), rel=0.1)
    # the same seed gives the same schedule (both hubs get the same one)
    assert load.schedule(100, 100, 60, random.Random("x")) == load.schedule(100, 100, 60, random.Random("x"))


def test_hub_log_lines_give_endpoint_caller_and_time():
    lines = [
        "[I 2026-12-01 23:50:01.123 JupyterHub log:192] 200 GET /hub/api/users/s0042 (esker-admin@127.0.0.1) 12.34ms",
        "[I 2026-12-01 23:50:01.200 JupyterHub log:192] 200 POST /hub/api/users/s0042/activity (s0042@127.0.0.1) 5.00ms",
        "[I 2026-12-01 23:50:01.300 JupyterHub log:192] 200 GET /hub/api/users?state=ready&offset=50&limit=50 "
        "(idle-culler@127.0.0.1) 40.10ms",
        "[W 2026-12-01 23:50:02.000 JupyterHub log:192] 404 GET /hub/api/users/nobody ( @127.0.0.1) 1.50ms",
        "[I 2026-12-01 23:50:03.000 JupyterHub app:3000] not a request",
    ]
    got = load.hub_log_times(lines)
    assert got[0] == ("GET /hub/api/users/{name}", "esker-admin", 12.34)
    assert got[1] == ("POST /hub/api/users/{name}/activity", "s0042", 5.0)
    assert got[2] == ("GET /hub/api/users?limit&offset&state", "idle-culler", 40.1)
    assert got[3][0] == "GET /hub/api/users/{name}" and got[3][2] == 1.5
    assert len(got) == 4


def test_summary_pools_the_hub_api_and_keeps_round_ranges():
    rows = []
    for rnd, base in enumerate((0.010, 0.020)):
        for i in range(100):
            rows.append({"hub": "esker", "users": 100, "multiplier": 1.0, "round": rnd, "endpoint": "activity",
                         "seconds": base + i / 10000, "ok": True})
        rows.append({"hub": "esker", "users": 100, "multiplier": 1.0, "round": rnd, "endpoint": "spawn",
                     "seconds": 1.0, "ok": True})
    rows.append({"hub": "esker", "users": 100, "multiplier": 1.0, "round": 1, "endpoint": "status",
                 "seconds": float("nan"), "ok": False})
    s = {x["endpoint"]: x for x in load.summarise(rows)}
    assert list(s) == ["hub api", "activity", "status", "spawn"]  # hub api first, then in ENDPOINTS' order
    api = s["hub api"]
    assert api["n"] == 201 and api["errors"] == 1  # the spawn flow is not a single hub API call
    assert s["activity"]["round_p50_min"] == pytest.approx(0.015, abs=1e-3)
    assert s["activity"]["round_p50_max"] == pytest.approx(0.025, abs=1e-3)
    assert s["activity"]["round_p99_max"] == pytest.approx(0.0299, abs=2e-4)
    assert s["status"]["errors"] == 1 and math.isnan(s["status"]["p50"])


def test_pct_is_nearest_rank():
    assert load.pct([3, 1, 2], 0.5) == 2 and load.pct(range(101), 0.99) == 99 and math.isnan(load.pct([], 0.5))
