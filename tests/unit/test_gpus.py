"""GPUs as data: NVML's answers (in the shape `esker status --nvml` prints) to typed devices and their use, the
free count per type, the GPU policy's decisions, and the 'unavailable with the reason' path without a driver."""

from __future__ import annotations

import json

import pytest

from esker.cli import status as status_cli
from esker.core import gpus as g
from esker.core.catalog import Catalog, UserInfo
from esker.core.config import ConfigError, validate
from esker.system import gpus as nv

# What NVML answers on a machine with two kinds of GPU (products, memory and minor numbers as the driver reports
# them for these boards; UUIDs and pids as it formats them). Index 1 runs a training process; index 2 holds a
# context that does nothing (a notebook that imported TensorFlow); index 3 is untouched.
MIXED = {
    "driver": "570.124.06",
    "devices": [
        {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-4b3d2c8e-0c41-6d5a-9f3e-1a2b3c4d5e6f", "minor": 0,
         "memory_total": 42949672960, "memory_used": 0, "utilization": 0.0, "processes": []},
        {"index": 1, "name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-7d1e9a42-52c0-1f8b-3e6d-0b9c8a7f6e5d", "minor": 1,
         "memory_total": 42949672960, "memory_used": 37580963840, "utilization": 97.0, "processes": [48211]},
        {"index": 2, "name": "NVIDIA H200", "uuid": "GPU-0f5e6d7c-8b9a-4a1b-2c3d-4e5f6a7b8c9d", "minor": 3,
         "memory_total": 150754820096, "memory_used": 524288000, "utilization": 0.0, "processes": [50102]},
        {"index": 3, "name": "NVIDIA H200", "uuid": "GPU-9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "minor": 2,
         "memory_total": 150754820096, "memory_used": 0, "utilization": 0.0, "processes": []},
    ],
}
TYPES = {"a100": {"display_name": "NVIDIA A100", "products": ["NVIDIA A100*"]},
         "h200": {"display_name": "NVIDIA H200"}}  # no products: the display name is the pattern


def test_nvml_products_map_onto_types_and_keep_uuid_and_minor():
    gpus = nv.gpus_from_snapshot(MIXED, TYPES)
    assert [(x.id, x.type, x.minor) for x in gpus] == [("0", "a100", 0), ("1", "a100", 1), ("2", "h200", 3),
                                                       ("3", "h200", 2)]
    assert gpus[2].visible_id == MIXED["devices"][2]["uuid"]  # CUDA_VISIBLE_DEVICES names the device itself
    assert nv.gpus_from_snapshot(MIXED, {})[0].type is None  # untyped: handed out to profiles without gpu_type
    assert g.type_of("nvidia a100-sxm4-80gb", TYPES) == "a100"  # case is ignored
    assert g.type_of("Tesla T4", TYPES) is None


def test_the_pool_and_the_free_count_follow_the_type():
    gpus = nv.gpus_from_snapshot(MIXED, TYPES)
    assert g.pool(gpus, "h200") == ["2", "3"] and g.pool(gpus, None) == ["0", "1", "2", "3"]
    free = g.availability(gpus, {"1": "bob/", "2": "carol/"})
    assert free["a100"] == g.Availability(2, 1) and free["h200"] == g.Availability(2, 1)
    assert free[None] == g.Availability(4, 2)


def test_usage_from_nvml_and_what_idle_means():
    u = nv.usage_from_snapshot(MIXED)
    assert u["0"].idle()  # nothing on it at all
    assert not u["1"].idle()  # busy
    assert not u["2"].idle()  # utilisation 0, but a compute process holds it
    assert u["3"].idle()
    # Without a process list (the DCGM exporter), memory in use stands for a context.
    assert not g.DeviceUsage("x", 0.0, 524288000, 150754820096, None).idle()
    assert g.DeviceUsage("x", 0.0, 0, 150754820096, None).idle()


def test_policy_idle_timeout_and_max_runtime():
    hub = {"idle_timeout": 1800, "max_runtime": 0}
    p = g.GpuPolicy.of(hub, {"idle_timeout": None, "max_runtime": 4 * 3600})
    assert p == g.GpuPolicy(1800, 14400)
    assert g.GpuPolicy.of(hub, {"idle_timeout": 0}) == g.GpuPolicy(0, 0) and not g.GpuPolicy(0, 0).active
    idle = [g.DeviceUsage("3", 0.0, 0, 1, 0)]
    busy = [g.DeviceUsage("1", 97.0, 1, 1, 1)]
    t = 1000.0
    since = g.idle_since(None, idle, 1, t)
    assert since == t
    assert g.idle_since(since, idle, 1, t + 60) == t  # carried over
    assert g.idle_since(since, busy, 1, t + 60) is None  # busy again: starts over
    assert g.idle_since(since, None, 1, t + 60) is None  # unknown is never idle
    assert g.idle_since(since, idle, 2, t + 60) is None  # one of two devices unread: unknown
    assert g.judge(p, started=t, idle_from=t, now=t + 1799) is None
    v = g.judge(p, started=t, idle_from=t, now=t + 1800)
    assert v.reason == "idle" and "30 min" in v.message
    v = g.judge(p, started=t, idle_from=None, now=t + 14400)
    assert v.reason == "max_runtime" and "4.0 h" in v.message


def test_a_failing_or_missing_driver_is_reported_with_the_reason_not_raised():
    def missing():
        raise nv.NvmlUnavailable("NVML: NVML Shared Library Not Found", absent=True)

    def failing():
        raise nv.NvmlUnavailable("NVML: Unknown Error", absent=False)

    assert nv.configured_gpus("auto", TYPES, read=missing) == ([], "no NVIDIA driver on this machine "
                                                                    "(NVML: NVML Shared Library Not Found)")
    gpus, why = nv.configured_gpus("auto", TYPES, read=failing)
    assert gpus == [] and why == "the NVIDIA driver failed: NVML: Unknown Error"
    gpus, why = nv.configured_gpus(["0", {"id": "1", "type": "h200"}], TYPES)
    assert [(x.id, x.type, x.minor) for x in gpus] == [("0", None, 0), ("1", "h200", 1)] and why is None
    reader = nv.UsageReader(interval=0, read=failing)
    assert reader() == {}  # the metrics and the policy see nothing, and nobody is stopped for it


def test_spawn_page_says_unavailable_with_the_reason_and_free_per_type(tmp_path):
    cfg = validate({
        "gpus": {"types": TYPES},
        "profiles": [{"slug": "tf", "display_name": "TF", "image": "i", "environment": "minimal", "gpu_type": "h200",
                      "options": {"gpus": {"display_name": "GPUs", "choices": {
                          "0": {"display_name": "CPU", "default": True, "override": {"gpus": 0}},
                          "1": {"display_name": "1 H200", "override": {"gpus": 1}},
                          "a": {"display_name": "1 A100", "override": {"gpus": 1, "gpu_type": "a100"}},
                          "3": {"display_name": "3 H200", "override": {"gpus": 3}}}}}}],
    }, source="test")
    cat = Catalog.from_config(cfg)
    gpus = nv.gpus_from_snapshot(MIXED, TYPES)
    [p] = cat.profile_list(UserInfo("u"), gpus_available=g.availability(gpus, {"1": "b/", "2": "c/"}),
                           gpu_types=TYPES)
    ch = p["profile_options"]["gpus"]["choices"]
    assert ch["1"]["gpus_free"] == "1 of 2 NVIDIA H200 GPUs free" and not ch["1"]["unavailable"]
    assert ch["a"]["gpus_free"] == "1 of 2 NVIDIA A100 GPUs free"
    assert ch["3"]["unavailable"] == "needs 3 NVIDIA H200 GPUs; this hub has 2"
    [p] = cat.profile_list(UserInfo("u"), gpus_available=g.availability([], {}), gpu_types=TYPES,
                           gpu_problem="no NVIDIA driver on this machine")
    assert p["profile_options"]["gpus"]["choices"]["1"]["unavailable"] == (
        "needs 1 NVIDIA H200 GPU; this hub has 0 (no NVIDIA driver on this machine)")


def test_config_names_a_pinned_device_of_an_unknown_type():
    with pytest.raises(ConfigError) as e:
        validate({"gpus": {"devices": [{"id": "0", "type": "v100"}, "0"]},
                  "profiles": [{"slug": "m", "display_name": "M", "image": "i", "environment": "minimal"}]},
                 source="test")
    assert "gpus.devices[0].type: 'v100' is not declared" in str(e.value)
    assert "device '0' is listed more than once" in str(e.value)


def test_esker_status_lists_who_holds_which_gpu_and_its_use(tmp_path):
    from esker.state.ledger import Ledger

    cfg = validate({"gpus": {"types": TYPES},
                    "profiles": [{"slug": "m", "display_name": "M", "image": "i", "environment": "minimal"}]},
                   source="test")
    Ledger(tmp_path / "ledger.sqlite").assign("gpu", "bob/train", 1, ["1"])
    out = status_cli.check_gpus(cfg, str(tmp_path), read=lambda: MIXED)
    assert out["free"]["a100"] == {"total": 2, "free": 1} and out["free"]["h200"] == {"total": 2, "free": 2}
    bob = next(d for d in out["devices"] if d["id"] == "1")
    assert (bob["user"], bob["server"], bob["type"], bob["utilization"], bob["processes"]) == (
        "bob", "train", "a100", 97.0, 1)
    assert "1 -> bob/train (97% busy" in out["detail"]
    json.dumps(out)  # --json prints it
    out = status_cli.check_gpus(cfg, str(tmp_path), read=lambda: (_ for _ in ()).throw(
        nv.NvmlUnavailable("NVML: Driver Not Loaded", absent=True)))
    assert out["count"] == 0 and "no NVIDIA driver" in out["detail"] and out["problem"]
