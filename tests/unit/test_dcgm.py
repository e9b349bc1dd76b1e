"""GPU use on Kubernetes from NVIDIA's DCGM exporter: the parser (esker.core.dcgm) on a recorded exposition, and
the cached source (esker.system.dcgm_source) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from esker.core import dcgm
from esker.core.gpus import DeviceUsage
from esker.system.dcgm_source import STALE_INTERVALS, DcgmSource, http_fetch

MIB = 1024 * 1024
ALICE = "GPU-5c1f2a8e-3b7d-4e21-9a0c-6f1d2e3b4a50"
BOB_1 = "GPU-a3e9c4d2-71b8-4f05-b6d3-0e2c9f8a7b61"
BOB_2 = "GPU-0d7b6e15-9c42-4a3e-8f71-b25e4c6d9a72"
NOBODY = "GPU-e84f0b3c-2d69-45a1-9e07-c1b3a5d7f983"
BROKEN = "GPU-7a2c9e41-58b0-4d3f-a1e6-93f0b2c4d8e4"
A100 = "NVIDIA A100-SXM4-40GB"


def _labels(gpu: int, uuid: str, bus: str, pod: str = "", namespace: str = "", container: str = "") -> str:
    return (f'gpu="{gpu}",UUID="{uuid}",pci_bus_id="{bus}",device="nvidia{gpu}",modelName="{A100}",'
            f'Hostname="gpu-a100-7",DCGM_FI_DRIVER_VERSION="550.54.15",'
            f'container="{container}",namespace="{namespace}",pod="{pod}"')


# One node's page, as dcgm-exporter 3.3 (GPU Operator, Kubernetes pod mapping on) writes it: four A100s, alice's
# server on GPU 0, bob's named server "train" on GPUs 1 and 2 (one busy, one idle), GPU 3 held by no pod
# (older exporters write the pod labels empty, newer ones leave them out). A fifth GPU's line is cut short (a
# malformed line): that device has no memory reading, so it is left out, and nothing else is lost.
G0 = _labels(0, ALICE, "00000000:07:00.0", "jupyter-alice", "hub", "notebook")
G1 = _labels(1, BOB_1, "00000000:0F:00.0", "jupyter-bob--train", "hub", "notebook")
G2 = _labels(2, BOB_2, "00000000:47:00.0", "jupyter-bob--train", "hub", "notebook")
G3 = _labels(3, NOBODY, "00000000:4E:00.0")
G4 = _labels(4, BROKEN, "00000000:87:00.0", "jupyter-carol", "hub", "notebook")
EXPOSITION = f"""\
# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{{{G0}}} 1410
DCGM_FI_DEV_SM_CLOCK{{{G1}}} 1410
DCGM_FI_DEV_SM_CLOCK{{{G2}}} 210
DCGM_FI_DEV_SM_CLOCK{{{G3}}} 210
DCGM_FI_DEV_SM_CLOCK{{{G4}}} 1410
# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{{{G0}}} 61
DCGM_FI_DEV_GPU_TEMP{{{G1}}} 58
DCGM_FI_DEV_GPU_TEMP{{{G2}}} 33
DCGM_FI_DEV_GPU_TEMP{{{G3}}} 31
DCGM_FI_DEV_GPU_TEMP{{{G4}}} 55
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{{G0}}} 87
DCGM_FI_DEV_GPU_UTIL{{{G1}}} 42
DCGM_FI_DEV_GPU_UTIL{{{G2}}} 0
DCGM_FI_DEV_GPU_UTIL{{{G3}}} 0
DCGM_FI_DEV_GPU_UTIL{{{G4}}} 99
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{{{G0}}} 10413
DCGM_FI_DEV_FB_FREE{{{G1}}} 2150
DCGM_FI_DEV_FB_FREE{{{G2}}} 40533
DCGM_FI_DEV_FB_FREE{{{G3}}} 40536
DCGM_FI_DEV_FB_FREE{{{G4}}} 1000
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{{{G0}}} 30123
DCGM_FI_DEV_FB_USED{{{G1}}} 38386
DCGM_FI_DEV_FB_USED{{{G2}}} 3
DCGM_FI_DEV_FB_USED{{{G3}}} 0
DCGM_FI_DEV_FB_USED{{{G4[:60]}
# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.
# TYPE DCGM_FI_DEV_XID_ERRORS gauge
DCGM_FI_DEV_XID_ERRORS{{{G0}}} 0
"""
MALFORMED_LINE = EXPOSITION.splitlines().index(f"DCGM_FI_DEV_FB_USED{{{G4[:60]}") + 1


# ------------------------------------------------------------------------------------------- the parser
def test_recorded_exposition_per_pod():
    bad: list[int] = []
    usage = dcgm.parse(EXPOSITION, bad)
    assert bad == [MALFORMED_LINE]
    assert set(usage) == {("hub", "jupyter-alice"), ("hub", "jupyter-bob--train"), ("", "")}
    (alice,) = usage[("hub", "jupyter-alice")]
    assert alice == DeviceUsage(device=ALICE, utilization=87.0, memory_used=30123 * MIB,
                                memory_total=(30123 + 10413) * MIB, processes=None, uuid=ALICE, product=A100)
    assert not alice.idle()
    # Two GPUs in one pod, in the exporter's GPU order; the idle one is idle by memory (no process count).
    busy, idle = usage[("hub", "jupyter-bob--train")]
    assert (busy.device, busy.utilization, busy.memory_used) == (BOB_1, 42.0, 38386 * MIB)
    assert (idle.device, idle.utilization, idle.memory_used, idle.memory_total) == (
        BOB_2, 0.0, 3 * MIB, (3 + 40533) * MIB)
    assert not busy.idle() and idle.idle() and idle.processes is None
    # The GPU no pod holds: kept under ("", ""), never a server's.
    assert [u.device for u in usage[dcgm.UNUSED]] == [NOBODY]
    # Carol's GPU lost its memory line: left out (unknown), not reported idle or busy.
    assert ("hub", "jupyter-carol") not in usage


def test_newer_exporters_leave_the_pod_labels_out_for_unused_gpus():
    text = (f'DCGM_FI_DEV_GPU_UTIL{{gpu="3",UUID="{NOBODY}",device="nvidia3",modelName="{A100}",Hostname="n"}} 0\n'
            f'DCGM_FI_DEV_FB_USED{{gpu="3",UUID="{NOBODY}",device="nvidia3",modelName="{A100}",Hostname="n"}} 0\n')
    assert [u.device for u in dcgm.parse(text)[dcgm.UNUSED]] == [NOBODY]


def test_the_parser_reads_what_prometheus_client_reads():
    """The well-formed part of the recording: the same samples as prometheus_client's parser (which refuses the
    whole text for one bad line, hence a parser of Esker's own)."""
    good = "\n".join(line for n, line in enumerate(EXPOSITION.splitlines(), 1) if n != MALFORMED_LINE) + "\n"
    with pytest.raises(ValueError):
        list(text_string_to_metric_families(EXPOSITION))
    theirs = sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                    for fam in text_string_to_metric_families(good) for s in fam.samples)
    mine = sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in dcgm.samples(good))
    assert mine == theirs and len(mine) == 5 * 4 + 4 + 1


@pytest.mark.parametrize("line", [
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x"',  # cut short
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x"} ',  # no value
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x"} eighty',
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID=GPU-x} 80',  # unquoted
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",gpu="1",UUID="GPU-x"} 80',  # a label twice
    'DCGM_FI_DEV_GPU_UTIL{gpu="0" UUID="GPU-x"} 80',  # no comma
    'DCGM_FI_DEV_GPU_UTIL{gpu="\\q",UUID="GPU-x"} 80',  # a bad escape
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x"} 80 1700000000000 extra',
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x"} 80 soon',
    'DCGM_FI_DEV_GPU_UTIL-x 80',
    '{gpu="0"} 80',
])
def test_malformed_lines_are_skipped_alone(line):
    ok = f'DCGM_FI_DEV_GPU_UTIL{{UUID="{ALICE}",pod="p",namespace="n"}} 5\nDCGM_FI_DEV_FB_USED{{UUID="{ALICE}",pod="p",namespace="n"}} 1'
    bad: list[int] = []
    usage = dcgm.parse(f"{ok}\n{line}\n", bad)
    assert bad == [3]
    assert [(u.device, u.utilization) for u in usage[("n", "p")]] == [(ALICE, 5.0)]


def test_label_values_with_escapes_timestamps_and_specials():
    text = ('m{a="x\\"y",b="back\\\\slash",c="new\\nline",} 1.5e2 1700000000000\n'
            "plain 3\n"
            "specials{k=\"v\"} NaN\n")
    s = list(dcgm.samples(text))
    assert s[0].labels == {"a": 'x"y', "b": "back\\slash", "c": "new\nline"} and s[0].value == 150.0
    assert (s[1].name, s[1].labels, s[1].value) == ("plain", {}, 3.0)
    assert s[2].value != s[2].value  # NaN read; usage_by_pod ignores it
    nan = f'DCGM_FI_DEV_GPU_UTIL{{UUID="{ALICE}",pod="p",namespace="n"}} NaN\nDCGM_FI_DEV_FB_USED{{UUID="{ALICE}",pod="p",namespace="n"}} 1\n'
    assert dcgm.parse(nan) == {}  # no utilisation reading: unknown, left out


def test_labels_as_prometheus_re_exports_them():
    """From Prometheus (/federate, or a ServiceMonitor without honorLabels): the exporter pod's own pod and
    namespace, the GPU user's as exported_*, and a timestamp after each value."""
    own = 'instance="10.0.3.17:9400",job="nvidia-dcgm-exporter",namespace="gpu-operator",pod="nvidia-dcgm-exporter-x7k2p"'
    user = 'exported_container="notebook",exported_namespace="hub",exported_pod="jupyter-alice"'
    text = ("# TYPE DCGM_FI_DEV_GPU_UTIL untyped\n"
            f'DCGM_FI_DEV_GPU_UTIL{{{user},gpu="0",UUID="{ALICE}",modelName="{A100}",{own}}} 12 1767225600000\n'
            "# TYPE DCGM_FI_DEV_FB_USED untyped\n"
            f'DCGM_FI_DEV_FB_USED{{{user},gpu="0",UUID="{ALICE}",modelName="{A100}",{own}}} 2048 1767225600000\n'
            "# TYPE DCGM_FI_DEV_FB_TOTAL untyped\n"
            f'DCGM_FI_DEV_FB_TOTAL{{{user},gpu="0",UUID="{ALICE}",modelName="{A100}",{own}}} 40960 1767225600000\n'
            f'DCGM_FI_DEV_FB_FREE{{{user},gpu="0",UUID="{ALICE}",modelName="{A100}",{own}}} 1 1767225600000\n')
    usage = dcgm.parse(text)
    assert list(usage) == [("hub", "jupyter-alice")]
    (u,) = usage[("hub", "jupyter-alice")]
    assert (u.utilization, u.memory_used, u.memory_total) == (12.0, 2048 * MIB, 40960 * MIB)  # FB_TOTAL wins
    assert dcgm.pod_key({"pod": "p", "namespace": "n"}) == ("n", "p")
    assert dcgm.pod_key({"exported_pod": "p", "exported_namespace": "n", "pod": "exp", "namespace": "gpu-operator"}) == ("n", "p")
    assert dcgm.pod_key({"pod": "", "namespace": ""}) == dcgm.pod_key({}) == ("", "")


def test_mig_instances_are_devices_of_their_own_with_the_profiling_utilisation():
    def line(name, inst, value):
        return (f'{name}{{gpu="0",UUID="{ALICE}",device="nvidia0",modelName="{A100}",Hostname="n",GPU_I_PROFILE="1g.5gb",'
                f'GPU_I_ID="{inst}",container="notebook",namespace="hub",pod="jupyter-alice"}} {value}\n')
    text = (line("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 7, 0.25) + line("DCGM_FI_DEV_FB_USED", 7, 100)
            + line("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 8, 0.0) + line("DCGM_FI_DEV_FB_USED", 8, 0))
    a, b = dcgm.parse(text)[("hub", "jupyter-alice")]
    assert (a.device, a.uuid, a.utilization) == (f"{ALICE}/7", ALICE, 25.0)
    assert (b.device, b.utilization, b.idle()) == (f"{ALICE}/8", 0.0, True)


# ------------------------------------------------------------------------------------------- the source
class Exporter:
    """A DCGM exporter on 127.0.0.1: serves ``body`` at /metrics, or ``status`` when it is not 200; counts GETs."""

    def __init__(self, body: str = EXPOSITION):
        self.body, self.status, self.gets = body, 200, 0
        self.hold = threading.Event()
        self.hold.set()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                exporter.gets += 1
                exporter.hold.wait(10)
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                data = exporter.body.encode()
                self.send_response(exporter.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def exporter():
    e = Exporter()
    yield e
    e.close()


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_http_fetch_reads_the_page_and_raises_on_errors(exporter):
    assert http_fetch(exporter.url, 2.0) == EXPOSITION
    with pytest.raises(Exception):
        http_fetch(exporter.url.replace("/metrics", "/nothing"), 2.0)


def test_one_fetch_per_interval(exporter):
    clock = Clock()
    src = DcgmSource(exporter.url, 30, clock=clock)
    assert [u.device for u in src.usage_for("hub", "jupyter-bob--train")] == [BOB_1, BOB_2]
    assert [u.device for u in src.usage_for("hub", "jupyter-alice")] == [ALICE]
    assert src.usage_for("hub", "jupyter-nobody") == [] and src.usage_for("", "") == []
    assert [u.device for u in src.unused()] == [NOBODY]
    assert set(src.all()) == {("hub", "jupyter-alice"), ("hub", "jupyter-bob--train"), ("", "")}
    assert exporter.gets == 1 and src.fetches == 1
    clock.t += 29.9
    exporter.body = EXPOSITION.replace(f"DCGM_FI_DEV_GPU_UTIL{{{G0}}} 87", f"DCGM_FI_DEV_GPU_UTIL{{{G0}}} 3")
    assert src.usage_for("hub", "jupyter-alice")[0].utilization == 87.0  # cached
    assert exporter.gets == 1
    clock.t += 0.1
    assert src.usage_for("hub", "jupyter-alice")[0].utilization == 3.0  # the interval is over: read again
    assert exporter.gets == 2
    # The answer is a copy: a caller cannot change the cache.
    src.all()[("hub", "jupyter-alice")].clear()
    assert src.usage_for("hub", "jupyter-alice")


def test_an_outage_is_logged_once_the_last_data_stands_three_intervals_then_recovery(exporter, caplog):
    clock = Clock()
    src = DcgmSource(exporter.url, 10, clock=clock)
    caplog.set_level(logging.INFO, logger="esker.system.dcgm_source")
    assert src.usage_for("hub", "jupyter-alice") and src.error is None
    exporter.status = 503
    for _ in range(STALE_INTERVALS):  # tries at +10, +20, +30: all fail, the data of t=0 still stands
        clock.t += 10
        assert [u.device for u in src.usage_for("hub", "jupyter-alice")] == [ALICE]
    assert exporter.gets == 1 + STALE_INTERVALS and "503" in src.error
    clock.t += 0.5  # past three intervals since the last good fetch: nothing (unknown), no new try yet
    assert src.all() == {} and src.usage_for("hub", "jupyter-alice") == []
    assert exporter.gets == 1 + STALE_INTERVALS
    exporter.close()  # now the exporter is gone altogether (connection refused)
    clock.t += 10
    assert src.all() == {} and "503" in src.error  # still the same outage
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and exporter.url in warnings[0].getMessage()
    # Back: the next try after the interval reads it again and says so.
    back = Exporter()
    try:
        src.url = back.url
        assert src.usage_for("hub", "jupyter-alice") == []  # not yet: the last try was under an interval ago
        clock.t += 10
        assert [u.device for u in src.usage_for("hub", "jupyter-alice")] == [ALICE] and src.error is None
        assert any("answers again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
        # A second outage is logged again.
        back.status = 500
        clock.t += 10
        src.all()
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    finally:
        back.close()


def test_a_slow_exporter_times_out_as_an_outage(exporter):
    exporter.hold.clear()  # the exporter accepts and never answers
    src = DcgmSource(exporter.url, 30, timeout=0.3, clock=Clock())
    assert src.all() == {}
    assert src.error and "timed out" in src.error.lower()


def test_one_fetch_at_a_time_and_others_do_not_wait():
    started, release = threading.Event(), threading.Event()
    calls = []

    def fetch(url, timeout):
        calls.append(url)
        started.set()
        assert release.wait(10)
        return EXPOSITION

    clock = Clock()
    src = DcgmSource("http://dcgm.invalid/metrics", 30, fetch=fetch, clock=clock)
    results = []
    t = threading.Thread(target=lambda: results.append(src.all()))
    t.start()
    assert started.wait(10)
    assert src.all() == {}  # the first fetch is under way: nothing yet, and no second fetch
    assert src.usage_for("hub", "jupyter-alice") == []
    release.set()
    t.join(10)
    assert calls == ["http://dcgm.invalid/metrics"] and src.fetches == 1
    assert set(results[0]) == {("hub", "jupyter-alice"), ("hub", "jupyter-bob--train"), ("", "")}
    assert src.usage_for("hub", "jupyter-alice")  # held now, still one fetch
    assert len(calls) == 1


def test_many_threads_one_fetch_per_interval():
    calls = []
    clock = Clock()
    src = DcgmSource("http://dcgm.invalid/metrics", 30, fetch=lambda u, t: calls.append(u) or EXPOSITION, clock=clock)
    barrier = threading.Barrier(16)

    def reader():
        barrier.wait(10)
        for _ in range(50):
            src.usage_for("hub", "jupyter-bob--train")

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1


def test_no_url_no_fetch():
    calls = []
    src = DcgmSource("", 30, fetch=lambda u, t: calls.append(u) or EXPOSITION)
    assert src.all() == {} and src.usage_for("hub", "jupyter-alice") == [] and calls == []
    with pytest.raises(ValueError):
        DcgmSource("http://x/metrics", 0)
