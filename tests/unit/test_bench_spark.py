"""`esker bench --only spark`'s pure parts: the kernel's code for each side, the memory summary, the plot."""

import ast
import json

from esker.cli.benchreport import plot, rows
from esker.cli.benchsuite import spark_memory
from esker.cli.benchworkloads import SPARK_DRIVER, spark_first_code


def test_each_side_is_valid_python_and_runs_its_own_driver():
    for mode in ("cluster", "local"):
        code = spark_first_code(mode, 1000, {"spark.executor.extraJavaOptions": "-XX:+UseSerialGC"})
        tree = ast.parse(code)
        consts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert mode in consts and SPARK_DRIVER in consts  # the driver runs in a subprocess, a fresh JVM
        assert json.dumps({"spark.executor.extraJavaOptions": "-XX:+UseSerialGC"}) in consts
    ast.parse(SPARK_DRIVER)
    assert 'builder.master("local[*]")' in SPARK_DRIVER


def _sample(rnd, total, mem=None):
    return {"round": rnd, "master": "spark://127.0.0.1:1", "default_parallelism": 1, "spawn_s": 5.0,
            "session_s": total - 8.0, "first_job_s": 3.0, "total_s": total, "job_s": 1.0,
            "memory": mem or {}}


def test_memory_summary_and_plot(tmp_path):
    mem = {"idle": {"rss_mb": {"master": 150.0, "worker": 120.0}, "cgroup_mb": 380.0},
           "peak": {"rss_mb": {"executor": 290.0, "driver": 450.0}, "cgroup_mb": 1200.0}}
    got = spark_memory([_sample(0, 20.0, mem), _sample(1, 22.0, mem)])
    assert got == {"master_idle_rss_mb": 150.0, "worker_idle_rss_mb": 120.0, "executor_peak_rss_mb": 290.0,
                   "driver_peak_rss_mb": 450.0, "cgroup_idle_mb": 380.0, "cgroup_peak_mb": 1200.0}
    spark = {"rounds": 2, "samples": {"cluster": [_sample(0, 20.0), _sample(1, 22.0)],
                                      "local": [_sample(0, 18.0), _sample(1, 19.0)]},
             "cluster": {"master": "spark://127.0.0.1:1"}, "local": {"master": "local[*]"},
             "first_result_ratio": 21.0 / 18.5,
             "figures": [{"case": "cluster_vs_local", "metric": "first_result_ratio", "value": 1.135,
                          "unit": "ratio", "better": "lower"}]}
    results = {"run_id": "x", "benchmarks": {"spark": spark}}
    assert plot(results, tmp_path) == ["spark.png"]
    assert (tmp_path / "spark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows(results)[0]["benchmark"] == "spark"
