"""Each demo notebook run end to end through the real hub, in the kernel of a server of its profile, and the
esker_client helper tested inside spawned servers (including its errors when something is missing)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import needs_root
from esker.hubapi import run_code, run_notebook

pytestmark = [pytest.mark.integration, needs_root]
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks" / "demo"


def result_of(outputs: list[dict]) -> dict:
    for out in outputs:
        assert out["error"] is None, out["error"] + out["stderr"][-3000:]
    for line in reversed("".join(o["stdout"] for o in outputs).splitlines()):
        if line.startswith("RESULT: "):
            return json.loads(line[len("RESULT: "):])
    raise AssertionError("the notebook printed no RESULT line")


@pytest.mark.parametrize("notebook,profile", [
    ("weather-spark", "spark"),
    ("scikit-learn", "scikit-learn"),
    ("tensorflow-training", "tensorflow"),
])
def test_demo_notebook_in_its_profile(running_hub, hub, notebook, profile):
    user = f"nb-{profile}"
    hub.ensure_user(user)
    hub.spawn(user, {"profile": profile})
    try:
        r = result_of(run_notebook(f"{running_hub.url}/user/{user}/", hub.user_token(user),
                                   str(NOTEBOOKS / f"{notebook}.ipynb")))
        if notebook == "weather-spark":
            # the server's own Spark cluster and the Ceph dataset: no configuration in the notebook
            assert re.fullmatch(r"spark://127\.0\.0\.1:\d+", r["spark_master"]), r["spark_master"]
            assert r["records"] > 10000 and r["stations"] > 10 and r["months"] >= 12
            assert "s3" in json.dumps(r["storage"]).lower(), r["storage"]
            # Spark's own reader on the executors (s3a:// onto the mounts), the result back in the bucket
            assert r["read_by"] == "executors" and r["result_at"].startswith("s3a://"), r
        elif notebook == "scikit-learn":
            assert r["samples"] == 1797 and r["reload_ok"]
            assert r["scores"][r["best_model"]]["test_accuracy"] > 0.9
        else:
            assert r["device"] == "CPU" and r["gpus_assigned"] == [] and r["test_accuracy"] > 0.6
    finally:
        hub.stop(user)


def test_helper_inside_servers(running_hub, hub):
    hub.ensure_user("helper-min")
    hub.spawn("helper-min", {"profile": "minimal"})
    try:
        code = """
import esker_client as ec
print("SCRATCH", ec.scratch_dir())
print("BUCKET", ec.bucket())
try:
    ec.spark_session()
except ec.EskerNotConfigured as e:
    print("NOSPARK", e)
print("GPUS", ec.gpus())
"""
        out = run_code(f"{running_hub.url}/user/helper-min/", hub.user_token("helper-min"), code)
        assert out["error"] is None, out["error"]
        assert "SCRATCH /" in out["stdout"] and "BUCKET " in out["stdout"]
        assert "NOSPARK" in out["stdout"] and "SPARK_MASTER" in out["stdout"]
        assert "GPUS []" in out["stdout"]
    finally:
        hub.stop("helper-min")
