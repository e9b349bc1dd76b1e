"""Monitoring and benchmarks: esker.metrics (unit and scraped from a real hub), the Grafana dashboard,
`esker status` and `esker bench --quick` against a real hub.

Assertions on figures the spawner reports (spawn histogram, servers running, scratch, failures) need the
spawner wired to esker.metrics; until spawner/local.py imports it they are skipped, with that reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from esker import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "monitoring" / "dashboards" / "esker-hub.json"
CHART_DASHBOARD = ROOT / "helm" / "esker" / "files" / "dashboards" / "esker-hub.json"
ESKER = str(ROOT / ".venv" / "bin" / "esker")
NVML_ONLY = {"esker_gpu_utilization_ratio", "esker_gpu_memory_used_bytes", "esker_gpu_memory_total_bytes",
             "esker_gpu_processes"}

MASTER_JSON = {
    "url": "spark://127.0.0.1:7077", "status": "ALIVE", "cores": 4, "coresused": 1, "memory": 4096,
    "memoryused": 1024, "aliveworkers": 1,
    "workers": [{"id": "w1", "state": "ALIVE", "cores": 4, "coresused": 1}, {"id": "w0", "state": "DEAD"}],
    "activeapps": [{"id": "app-1", "name": "nb", "user": "jupyter-alice", "cores": 1, "state": "RUNNING"},
                   {"id": "app-2", "name": "nb2", "user": "jupyter-bob", "cores": 0, "state": "WAITING"}],
    "completedapps": [{"id": "app-0"}],
}


def sample(name: str, labels: dict | None = None, registry=REGISTRY) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


# ------------------------------------------------------------------------------------------- unit
def test_spawn_functions_count_and_time():
    before = sample("esker_spawn_duration_seconds_count", {"profile": "minimal", "outcome": "success"})
    bucket = {"profile": "minimal", "outcome": "success", "le": "5.0"}
    in_bucket = sample("esker_spawn_duration_seconds_bucket", bucket)
    fail_before = sample("esker_spawn_failures_total", {"profile": "minimal", "reason": "timeout"})
    t0 = metrics.spawn_started("minimal")
    assert sample("esker_spawns_in_progress", {"profile": "minimal"}) >= 1
    metrics.spawn_finished("minimal", "success", 4.2)
    assert sample("esker_spawn_duration_seconds_count", {"profile": "minimal", "outcome": "success"}) == before + 1
    assert sample("esker_spawn_duration_seconds_bucket", bucket) == in_bucket + 1  # 4.2 s: in the 5 s bucket
    metrics.spawn_started("minimal")
    metrics.spawn_finished("minimal", "failure", 300, "timeout")
    assert sample("esker_spawn_failures_total", {"profile": "minimal", "reason": "timeout"}) == fail_before + 1
    assert isinstance(t0, float)
    # never below zero, and an unknown reason is "error"
    metrics.spawn_finished("minimal", "failure", 1, "martians")
    assert sample("esker_spawns_in_progress", {"profile": "minimal"}) == 0
    assert sample("esker_spawn_failures_total", {"profile": "minimal", "reason": "error"}) >= 1


def test_forged_profiles_do_not_create_series():
    metrics._known_profiles.update({"minimal", "spark"})
    metrics.spawn_refused("'; DROP TABLE users", "options")
    metrics.spawn_refused("root-shell", "options")
    assert metrics.profile_label("root-shell") == "other"
    labels = {s.labels.get("profile") for fam in REGISTRY.collect() if fam.name == "esker_spawn_failures"
              for s in fam.samples}
    assert "root-shell" not in labels and "other" in labels


def test_metric_functions_never_raise():
    assert metrics.spawn_finished("minimal", "exploded", 1) is None  # logged, not raised
    metrics.scratch_cleared("nobody-ever")


def test_failure_reasons():
    from tornado import web

    from esker.state.ledger import NoCapacity

    assert metrics.failure_reason(NoCapacity("1 gpu(s) requested but 0 of 2 free")) == "no_gpu"
    assert metrics.failure_reason(web.HTTPError(503, "No GPU is free for TensorFlow: x")) == "no_gpu"
    assert metrics.failure_reason(web.HTTPError(503, "Object storage is unavailable, and Spark needs it")) == "storage"
    assert metrics.failure_reason(web.HTTPError(400, "unknown profile 'x'")) == "options"
    assert metrics.failure_reason(RuntimeError("Creating the spark environment failed:\n...")) == "environment"
    assert metrics.failure_reason(TimeoutError()) == "timeout"
    import asyncio

    assert metrics.failure_reason(asyncio.CancelledError()) == "timeout"
    assert metrics.failure_reason(OSError("disk on fire")) == "error"


def test_scratch_and_s3():
    metrics.scratch_measured("carol", 12345)
    assert sample("esker_scratch_used_bytes", {"user": "carol"}) == 12345
    metrics.scratch_cleared("carol")
    assert REGISTRY.get_sample_value("esker_scratch_used_bytes", {"user": "carol"}) is None
    before = sample("esker_s3_provisioning_errors_total")
    metrics.s3_provisioning_failed()
    assert sample("esker_s3_provisioning_errors_total") == before + 1
    assert sample("esker_reservations") == 0 and sample("esker_seats_in_use") == 0


def test_servers_collector():
    reg = CollectorRegistry()
    reg.register(metrics.ServersCollector())
    metrics.server_running("dave/", "minimal")
    metrics.server_running("dave/", "minimal")  # idempotent
    metrics.server_running("erin/", "spark")
    assert sample("esker_servers_running", {"profile": "minimal"}, reg) == 1
    assert sample("esker_servers_running", {"profile": "spark"}, reg) == 1
    metrics.server_stopped("dave/")
    metrics.server_stopped("erin/")
    assert sample("esker_servers_running", {"profile": "minimal"}, reg) == 0


class FakeLedger:
    def __init__(self, held):
        self._held = held

    def held(self, kind):
        return dict(self._held) if kind == "gpu" else {}


def test_gpu_collector_joins_ledger_and_nvml():
    from esker.core.gpus import DeviceUsage, Gpu

    reg = CollectorRegistry()
    usage = {"0": DeviceUsage("0", 75.0, int(2e9), int(80e9), 1), "1": DeviceUsage("1", 0.0, 0, int(80e9), 0)}
    gpus = [Gpu("0", type="a100"), Gpu("1", type="a100"), Gpu("2", type="h200")]
    reg.register(metrics.GpuCollector(lambda: FakeLedger({"0": "alice/", "1": "bob/train"}), lambda: usage,
                                      lambda: gpus))
    alice = {"user": "alice", "server": "", "device": "0", "type": "a100"}
    assert sample("esker_gpu_assigned", alice, reg) == 1
    assert sample("esker_gpu_assigned", {"user": "bob", "server": "train", "device": "1", "type": "a100"}, reg) == 1
    assert sample("esker_gpu_utilization_ratio", alice, reg) == 0.75
    assert sample("esker_gpu_memory_used_bytes", alice, reg) == 2e9
    assert sample("esker_gpu_memory_total_bytes", alice, reg) == 80e9
    assert sample("esker_gpu_processes", alice, reg) == 1
    assert sample("esker_gpus_total", {"type": "a100"}, reg) == 2 and sample("esker_gpus_free", {"type": "a100"}, reg) == 0
    assert sample("esker_gpus_total", {"type": "h200"}, reg) == 1 and sample("esker_gpus_free", {"type": "h200"}, reg) == 1
    metrics.gpu_idle("bob/train", 42.0)
    assert sample("esker_gpu_idle_seconds", {"user": "bob", "server": "train"}, reg) == 42.0
    metrics.gpu_released("bob/train")
    assert reg.get_sample_value("esker_gpu_idle_seconds", {"user": "bob", "server": "train"}) is None
    # the spawner's reports count too (no ledger reachable), and release removes them
    reg2 = CollectorRegistry()
    reg2.register(metrics.GpuCollector(lambda: None, lambda: {}))
    metrics.gpu_assigned("frank/", ["3"])
    frank = {"user": "frank", "server": "", "device": "3", "type": ""}
    assert sample("esker_gpu_assigned", frank, reg2) == 1
    assert reg2.get_sample_value("esker_gpu_utilization_ratio", frank) is None  # no NVML
    metrics.gpu_released("frank/")
    assert reg2.get_sample_value("esker_gpu_assigned", frank) is None


def test_gpu_collector_on_kubernetes_reads_the_pods_series():
    """No ledger on Kubernetes: a server's pod is its GPUs, named by UUID in the DCGM exporter's series."""
    from esker.core.gpus import DeviceUsage

    reg = CollectorRegistry()
    seen = []

    def pod_usage(ns, pod):
        seen.append((ns, pod))
        return [DeviceUsage("GPU-8e1c", 30.0, 1 << 30, 40 << 30, None)] if pod == "jupyter-gina" else []

    reg.register(metrics.GpuCollector(lambda: None, None, None, pod_usage))
    metrics.gpu_pod("gina/", "esker", "jupyter-gina")
    metrics.gpu_assigned("gina/", ["0"])
    try:
        gina = {"user": "gina", "server": "", "device": "GPU-8e1c", "type": ""}
        assert sample("esker_gpu_assigned", gina, reg) == 1
        assert reg.get_sample_value("esker_gpu_assigned", {**gina, "device": "0"}) is None  # the UUID stands for it
        assert sample("esker_gpu_utilization_ratio", gina, reg) == 0.3
        assert reg.get_sample_value("esker_gpu_processes", gina) is None  # DCGM has no process count
        assert ("esker", "jupyter-gina") in seen
    finally:
        metrics.gpu_released("gina/")
    assert reg.get_sample_value("esker_gpu_assigned", {"user": "gina", "server": "", "device": "GPU-8e1c",
                                                        "type": ""}) is None


def test_spark_collector_caches_and_reports_down():
    """Each Spark server's own master, as the spawner reported it (port and UI key), summed."""
    calls = []

    def fetch(port, key, timeout):
        calls.append((port, key))
        if port == 1:
            raise ConnectionRefusedError("refused")
        return MASTER_JSON

    metrics.spark_cluster_started("alice/", 8080, "key-a")
    metrics.spark_cluster_started("carl/", 1, "key-c")
    reg = CollectorRegistry()
    try:
        reg.register(metrics.SparkCollector(interval=60, fetch=fetch))
        assert sample("esker_spark_clusters", {"state": "up"}, reg) == 1
        assert sample("esker_spark_clusters", {"state": "down"}, reg) == 1
    finally:
        metrics.spark_cluster_stopped("alice/")
        metrics.spark_cluster_stopped("carl/")
    assert sample("esker_spark_workers", {"state": "alive"}, reg) == 1
    assert sample("esker_spark_workers", {"state": "dead"}, reg) == 1
    assert sample("esker_spark_cores", {}, reg) == 4 and sample("esker_spark_cores_used", {}, reg) == 1
    assert sample("esker_spark_memory_bytes", {}, reg) == 4096 * 1024**2
    assert sample("esker_spark_applications", {"state": "running"}, reg) == 1
    assert sample("esker_spark_applications", {"state": "waiting"}, reg) == 1
    assert sample("esker_spark_applications_completed", {}, reg) == 1
    assert sample("esker_spark_application_cores", {"user": "alice"}, reg) == 1  # the hub user
    assert sorted(calls) == [(1, "key-c"), (8080, "key-a")]  # cached: one fetch each for all those scrapes

    reg2 = CollectorRegistry()  # stopped servers are forgotten
    reg2.register(metrics.SparkCollector(interval=60, fetch=fetch))
    assert reg2.get_sample_value("esker_spark_clusters", {"state": "up"}) == 0
    assert reg2.get_sample_value("esker_spark_cores") == 0


def test_spark_collector_never_blocks_a_scrape_on_a_slow_master():
    """A master that does not answer: scrapes return (master down) while its fetch is still running, and
    they do not pile up fetches behind it."""
    import threading

    release, finished = threading.Event(), threading.Event()
    started = []

    def slow(port, key, timeout):
        started.append(timeout)
        release.wait(60)  # held until the scrapes are done; a scrape that waited for it would see it end
        finished.set()
        return MASTER_JSON

    metrics.spark_cluster_started("slow/", 1, "k")
    c = metrics.SparkCollector(interval=0.01, timeout=0.3, fetch=slow)
    try:
        first, second = list(c.collect()), list(c.collect())
        assert not finished.is_set()  # both scrapes returned while the fetch was still in flight
        assert started == [0.3]  # one fetch, given the collector's timeout; the second scrape started none
        for scrape in (first, second):
            values = {(s.name, tuple(s.labels.values())): s.value for m in scrape for s in m.samples}
            assert values[("esker_spark_clusters", ("up",))] == 0 and values[("esker_spark_cores", ())] == 0
    finally:
        release.set()
        metrics.spark_cluster_stopped("slow/")


# ------------------------------------------------------------------------------------------- dashboard
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "vector", "scalar", "abs",
    "clamp_min", "clamp_max", "label_replace", "sort", "sort_desc", "time", "absent", "changes", "resets",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "last_over_time", "round", "ceil", "floor",
}


def dashboard_exprs(dash: dict) -> list[str]:
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def metric_names_in(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?", w)}


def every_metric_name() -> set[str]:
    """Everything Esker and JupyterHub can expose, with fake NVML and Spark answers for the collectors."""
    import jupyterhub.metrics  # noqa: F401 - registers JupyterHub's metrics in REGISTRY

    reg = CollectorRegistry()
    reg.register(metrics.ServersCollector())
    from esker.core.gpus import DeviceUsage, Gpu

    reg.register(metrics.GpuCollector(lambda: FakeLedger({"0": "a/"}), lambda: {"0": DeviceUsage("0", 1.0, 1, 2, 1)},
                                      lambda: [Gpu("0")]))
    reg.register(metrics.SparkCollector(1, fetch=lambda p, t: MASTER_JSON))
    from esker.functions import stats as fn_stats
    snap = os.path.join(tempfile.mkdtemp(prefix="esker-fn-metrics-"), "functions-metrics.json")
    fn_stats.write(snap, fn_stats.snapshot({"alice/add": {"versions": {"0123456789abcdef": {
        "calls": 3, "errors": 1, "in_flight": 0, "latency_buckets": {"0.1": 2, "+Inf": 3}, "latency_sum": 0.4}}}},
        {"alice/add": [1, 2.5]}))
    reg.register(metrics.FunctionsCollector(lambda: snap))
    reg.register(metrics.PrestartCollector(lambda: os.path.join(os.path.dirname(snap), "no-courses.sqlite")))
    return metrics.metric_names(REGISTRY) | metrics.metric_names(reg)


def test_dashboard_is_valid_and_names_only_existing_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "esker-hub" and dash["title"]
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 20
    known = every_metric_name()
    ids = set()
    for p in dash["panels"]:
        assert p["id"] not in ids
        ids.add(p["id"])
    for expr in exprs:
        names = metric_names_in(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - known
        assert not missing, f"{expr!r} names metrics that do not exist: {missing}"
    used = set().union(*(metric_names_in(e) for e in exprs))
    for wanted in ("esker_spawn_duration_seconds_bucket", "esker_spawn_failures_total", "esker_servers_running",
                   "esker_gpu_assigned", "esker_gpu_utilization_ratio", "esker_scratch_used_bytes",
                   "esker_spark_applications", "esker_reservations", "esker_seats_in_use", "jupyterhub_total_users",
                   "esker_function_calls_total", "esker_function_latency_seconds_bucket",
                   "esker_function_errors_total", "esker_function_in_flight", "esker_function_cold_starts_total",
                   "esker_function_cold_start_seconds_total", "esker_prestart_servers", "esker_prestart_over_seats",
                   "esker_prestart_total"):
        assert wanted in used, f"the dashboard does not show {wanted}"


def test_metric_name_extraction():
    assert metric_names_in('histogram_quantile(0.95, sum by (le, profile) (rate(x_bucket{a="b"}[5m])))') == {"x_bucket"}
    assert metric_names_in("esker_a / esker_b or vector(0)") == {"esker_a", "esker_b"}


def test_chart_ships_the_same_dashboard():
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes(), (
        "helm/esker/files/dashboards/esker-hub.json must be a copy of docs/monitoring/dashboards/esker-hub.json")


@pytest.mark.kubernetes
def test_chart_renders_the_dashboard_configmap():
    sys.path.insert(0, str(Path(__file__).parents[1] / "kubernetes"))
    from test_chart import OFFLINE, by, merge, render

    (cm,) = by(render(merge(OFFLINE, {"esker": {"grafanaBuiltinDashboards": True}})), "ConfigMap",
               "esker-grafana-dashboards")
    assert json.loads(cm["data"]["esker-hub.json"]) == json.loads(DASHBOARD.read_text())
    assert not by(render(), "ConfigMap", "esker-grafana-dashboards")  # off by default


def test_prometheus_example_config_is_valid_yaml():
    import yaml

    cfg = yaml.safe_load((ROOT / "docs" / "monitoring" / "prometheus.yml").read_text())
    job = cfg["scrape_configs"][0]
    assert job["metrics_path"] == "/hub/metrics" and "authorization" in job


# ------------------------------------------------------------------------------------------- bench, offline
def fake_results(factor=1.0):
    return {"run_id": "abcd", "benchmarks": {
        "spawn": {"status": "ok", "cases": {"c1": {"concurrency": 1, "profile": "minimal", "spawns": [
            {"user": "u", "seconds": 2.0 * factor}]}},
            "figures": [{"case": "c1", "metric": "p50_s", "value": 2.0 * factor, "unit": "s", "better": "lower"}]},
        "scratch": {"status": "ok", "figures": [
            {"case": "server", "metric": "write_mb_s", "value": 500 / factor, "unit": "MB/s", "better": "higher"}]},
    }}


def test_bench_compare_and_outputs_offline(tmp_path):
    from esker.cli import bench as cli_bench

    table = cli_bench.compare(fake_results(2.0), fake_results(1.0))
    by_metric = {r["metric"]: r for r in table}
    assert by_metric["p50_s"]["ratio"] == 2.0 and by_metric["p50_s"]["verdict"] == "worse"
    assert by_metric["write_mb_s"]["ratio"] == 0.5 and by_metric["write_mb_s"]["verdict"] == "worse"
    cli_bench.write_csv(fake_results(), tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "run,benchmark,case,metric,value,unit,better"
    assert sorted(cli_bench.plot(fake_results(), tmp_path)) == ["scratch.png", "spawn_latency.png"]


# ------------------------------------------------------------------------------------------- integration

WRAPPER = """
# Test hub: Esker's config, then faster polling so scratch and liveness figures show up within seconds.
import os
load_subconfig({hub_config!r})
c.Spawner.poll_interval = 2
c.EskerLocalSpawner.scratch_check_interval = 1
from esker import metrics
metrics.install(spark_interval=1)  # idempotent: what the hub does at start once wired
if os.environ.get("ESKER_TEST_EXTRA_CONFIG"):  # debugging aid: more traitlets from a file
    exec(open(os.environ["ESKER_TEST_EXTRA_CONFIG"]).read())
"""


@pytest.fixture(scope="module")
def mon_hub(environments):
    if os.geteuid() != 0:
        pytest.skip("per-user accounts need root")
    from esker.devhub import RunningHub

    class MonitoredHub(RunningHub):
        def start(self, timeout: float = 300):
            wrapper = Path(self.state_dir) / "monitoring_config.py"
            wrapper.write_text(WRAPPER.format(hub_config=str(ROOT / "esker" / "jupyterhub_config.py")))
            log = open(self.log_path, "ab")
            # What `esker run --prepare none` does (env, cwd, exec jupyterhub), with our wrapper as the config
            # file: JupyterHub takes a single -f.
            self.proc = subprocess.Popen([str(Path(sys.executable).with_name("jupyterhub")), "-f", str(wrapper)],
                                         env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.state_dir)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.5)
            raise TimeoutError(self.log_tail())

    h = MonitoredHub()
    h.cfg["storage"] = {"enabled": False}
    Path(h.config_file).write_text(__import__("yaml").safe_dump(h.cfg))
    try:
        h.start()
        yield h
    finally:
        h.teardown()


def scrape(h, token=None) -> dict:
    r = requests.get(f"{h.url}/hub/metrics", headers={"Authorization": f"token {token or h.token}"}, timeout=30)
    r.raise_for_status()
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(fams: dict, family: str, sample_name: str | None = None, **labels) -> float | None:
    fam = fams.get(family)
    if fam is None:
        return None
    for s in fam.samples:
        if s.name == (sample_name or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def wait_for(fn, timeout=20.0, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


@pytest.mark.integration
def test_metrics_endpoint_needs_a_token(mon_hub):
    assert requests.get(f"{mon_hub.url}/hub/metrics", timeout=10).status_code == 403
    user_token = mon_hub.hub.ensure_user("mon-nobody") and mon_hub.hub.user_token("mon-nobody")
    r = requests.get(f"{mon_hub.url}/hub/metrics", headers={"Authorization": f"token {user_token}"}, timeout=10)
    assert r.status_code == 403


@pytest.mark.integration
def test_metrics_from_a_real_hub(mon_hub):
    hub = mon_hub.hub
    # state read at scrape time: works with or without the spawner wired. No Spark server, no cluster.
    fams = scrape(mon_hub)
    assert value(fams, "esker_spark_clusters", state="up") == 0 and value(fams, "esker_spark_cores") == 0
    assert value(fams, "esker_reservations") == 0 and value(fams, "esker_seats_in_use") == 0
    profiles = {s.labels["profile"] for s in fams["esker_servers_running"].samples}
    assert profiles == {"spark", "tensorflow", "scikit-learn", "minimal"}
    assert value(fams, "esker_spawn_failures", "esker_spawn_failures_total", profile="minimal", reason="no_gpu") == 0
    before = value(fams, "esker_spawn_duration_seconds", "esker_spawn_duration_seconds_count",
                   profile="minimal", outcome="success")

    hub.ensure_user("mon-a")
    hub.spawn("mon-a", {"profile": "minimal"})
    try:
        fams = scrape(mon_hub)
        assert value(fams, "jupyterhub_running_servers") >= 1
        got = wait_for(lambda: value(scrape(mon_hub), "esker_spawn_duration_seconds",
                                     "esker_spawn_duration_seconds_count", profile="minimal",
                                     outcome="success") == before + 1)
        assert got, "the spawn was not observed in esker_spawn_duration_seconds"
        assert wait_for(lambda: value(scrape(mon_hub), "esker_servers_running", profile="minimal") == 1)
        assert wait_for(lambda: (value(scrape(mon_hub), "esker_scratch_used_bytes", user="mon-a") or -1) >= 0)
    finally:
        hub.stop("mon-a")
    fams = scrape(mon_hub)
    assert value(fams, "esker_servers_running", profile="minimal") == 0
    assert value(fams, "esker_scratch_used_bytes", user="mon-a") is None
    assert value(fams, "esker_spawns_in_progress", profile="minimal") == 0


@pytest.mark.integration
def test_refused_spawns_are_counted_by_reason(mon_hub):
    from esker.hubapi import SpawnRefused

    hub = mon_hub.hub
    hub.ensure_user("mon-forger")
    fams = scrape(mon_hub)
    before = value(fams, "esker_spawn_failures", "esker_spawn_failures_total", profile="other", reason="options") or 0
    with pytest.raises(SpawnRefused):
        hub.spawn("mon-forger", {"profile": "root-shell"})
    fams = scrape(mon_hub)
    assert value(fams, "esker_spawn_failures", "esker_spawn_failures_total", profile="other", reason="options") == before + 1
    assert not any(s.labels.get("profile") == "root-shell" for s in fams["esker_spawn_failures"].samples)


@pytest.mark.integration
def test_gpu_assignments_per_user(mon_hub):
    """From the ledger at scrape time: right even before the spawner reports, and after a hub restart."""
    hub = mon_hub.hub
    hub.ensure_user("mon-gpu", groups=["gpu-users"])
    hub.spawn("mon-gpu", {"profile": "tensorflow", "gpus": "1"})
    try:
        fams = scrape(mon_hub)
        held = [s for s in fams["esker_gpu_assigned"].samples if s.labels["user"] == "mon-gpu"]
        assert len(held) == 1 and held[0].value == 1 and held[0].labels["device"] in ("0", "1")
    finally:
        hub.stop("mon-gpu")
    fams = scrape(mon_hub)
    assert not [s for s in fams["esker_gpu_assigned"].samples if s.labels["user"] == "mon-gpu"]


@pytest.mark.integration
def test_dashboard_metrics_exist_on_a_real_hub(mon_hub):
    fams = scrape(mon_hub)
    exposed = set()
    for fam in fams.values():
        exposed |= {fam.name + sfx for sfx in metrics._SUFFIXES.get(fam.type, ("",))}
        exposed |= {s.name for s in fams[fam.name].samples}
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    missing = set().union(*(metric_names_in(e) for e in exprs)) - exposed - NVML_ONLY
    assert not missing, f"the dashboard queries metrics this hub does not expose: {missing}"


def status(h, *args) -> tuple[int, dict]:
    p = subprocess.run([ESKER, "status", "--json", *args], env=h.env(), capture_output=True, text=True, timeout=120)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip().startswith("{") else {"raw": p.stdout + p.stderr}


def spark_master_pid(uid: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if d.stat().st_uid != uid:
                continue
        except OSError:
            continue
        if b"org.apache.spark.deploy.master.Master" in argv:
            return int(d.name)
    return None


@pytest.mark.integration
def test_status_reports_up_and_fails_when_spark_master_stops(mon_hub):
    import pwd

    hub = mon_hub.hub
    hub.ensure_user("mon-spark")
    hub.spawn("mon-spark", {"profile": "spark"})
    account = pwd.getpwnam(mon_hub.cfg["users"]["system_user_prefix"] + "mon-spark")
    mine = lambda r: [c for c in r["components"]["spark"]["clusters"] if c["account"] == account.pw_name]  # noqa: E731
    assert wait_for(lambda: (lambda r: mine(r) and mine(r)[0]["workers_alive"] == 1)(status(mon_hub)[1]),
                    timeout=60, every=1)
    rc, report = status(mon_hub)
    assert rc == 0, report
    comps = report["components"]
    assert comps["hub"]["status"] == "ok" and comps["proxy"]["status"] == "ok"
    [own] = mine(report)
    assert own["state"] == "ALIVE" and own["cores"] == mon_hub.cfg["spark"]["cores_per_user"], own
    assert comps["storage"]["status"] == "skipped"
    assert comps["gpus"]["count"] == 2
    assert "per_profile" in comps["servers"]
    text = subprocess.run([ESKER, "status"], env=mon_hub.env(), capture_output=True, text=True, timeout=60).stdout
    assert "All components up." in text
    assert wait_for(lambda: value(scrape(mon_hub), "esker_spark_clusters", state="up") >= 1, timeout=40, every=0.5)
    pid = spark_master_pid(account.pw_uid)
    assert pid, "no Spark master process for this server"
    try:
        os.kill(pid, signal.SIGKILL)  # ours: this test user's master (its server runs on, without Spark)
        assert wait_for(lambda: spark_master_pid(account.pw_uid) is None, timeout=10, every=0.2)
        rc, report = status(mon_hub, "--timeout", "2")
        assert rc == 1 and "spark" in report["down"], report
        assert report["components"]["spark"]["status"] == "down"
        # and the metric agrees, once the cached status expires (15 s)
        assert wait_for(lambda: value(scrape(mon_hub), "esker_spark_clusters", state="down") >= 1,
                        timeout=40, every=0.5)
    finally:
        hub.stop("mon-spark")


@pytest.mark.integration
def test_bench_quick_writes_json_csv_png(mon_hub, tmp_path):
    out = tmp_path / "bench"
    env = mon_hub.env()
    p = subprocess.run([ESKER, "bench", "--quick", "--url", mon_hub.url, "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    b = results["benchmarks"]
    assert set(b) == {"spawn", "burst", "spark", "s3", "scratch", "tensorflow"}
    assert b["s3"]["status"] == "skipped" and "object storage" in b["s3"]["skipped"]
    for name in ("spawn", "burst", "spark", "scratch", "tensorflow"):
        assert b[name]["status"] == "ok", b[name]
    assert [c["concurrency"] for c in b["spawn"]["cases"].values()] == [1, 2]
    assert all(0 < s["first_event_s"] <= s["seconds"] for c in b["spawn"]["cases"].values() for s in c["spawns"])
    assert b["spark"]["cluster"]["master"].startswith("spark://") and b["spark"]["local"]["master"] == "local[*]"
    assert b["scratch"]["host"]["write_mb_s"] > 0 and b["scratch"]["server"]["read_mb_s"] > 0
    assert b["tensorflow"]["samples_per_s"] > 0
    import csv

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == sum(len(r["figures"]) for r in b.values()) and rows
    assert all(float(r["value"]) == float(r["value"]) for r in rows)  # numbers, no NaN
    import matplotlib.image

    for png in results["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(out / png).shape[0] > 100
    assert {"spawn_latency.png", "burst.png", "scratch.png", "spark.png", "tensorflow.png"} <= set(results["plots"])
    # compare with itself: every ratio is 1
    p = subprocess.run([ESKER, "bench", "--compare", str(out / "results.json"), "--compare-only",
                        str(out / "results.json")], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and " 1.000  same" in p.stdout, p.stdout + p.stderr
    # nothing left behind
    users = mon_hub.hub.request("GET", "/users").json()
    assert not [u["name"] for u in users if u["name"].startswith(f"bench{results['run_id']}")]
    (Path(os.environ.get("ESKER_BENCH_KEEP", "/nonexistent")).is_dir()
     and subprocess.run(["cp", "-r", str(out), os.environ["ESKER_BENCH_KEEP"]]))
