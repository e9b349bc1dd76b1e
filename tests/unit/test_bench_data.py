"""bench/data_in_place.py's pure parts: the worker is valid Python, the summary and the plot."""

import ast
import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("data_in_place", Path(__file__).resolve().parents[2] / "bench" / "data_in_place.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_worker_parses_and_compares_the_same_engine_on_both_sides():
    tree = ast.parse(bench.WORKER)
    consts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert "local[2]" in consts and "local disk" in consts and "bucket (s3a:// on the mount)" in consts


def test_summary_gives_median_and_range_per_side_and_a_plot(tmp_path):
    rows = [{"bench": "spark_parquet", "side": s, "round": r, "seconds": t, "bytes": 10**9, "check": 1}
            for r, (a, b) in enumerate([(2.0, 2.5), (3.0, 2.0), (2.2, 4.0)]) for s, t in (("local", a), ("mount", b))]
    rows += [{"bench": "list_keys", "side": "boto3", "round": 0, "seconds": 0.5, "bytes": 0, "check": 10}]
    s = bench.summarize(rows)
    local, mount, listing = s
    assert (local["median_s"], local["min_s"], local["max_s"]) == (2.2, 2.0, 3.0)
    assert (mount["median_s"], mount["min_s"], mount["max_s"]) == (2.5, 2.0, 4.0)
    assert round(local["median_mb_s"]) == round(10**9 / 2.2 / 1e6) and listing["median_mb_s"] is None
    bench.plot(s, tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000


def test_the_cold_round_is_the_first_read_and_not_in_the_medians():
    rows = [{"bench": "spark_parquet", "side": "mount", "round": r, "seconds": t, "bytes": 10**9, "check": 1}
            for r, t in ((-1, 9.0), (0, 2.0), (1, 3.0), (2, 2.5))]
    [mount] = bench.summarize(rows)
    assert mount["first_s"] == 9.0 and mount["n"] == 3
    assert (mount["median_s"], mount["min_s"], mount["max_s"]) == (2.5, 2.0, 3.0)


def test_the_least_resident_data_of_the_rounds_is_reported():
    rows = [{"bench": "spark_parquet", "side": "mount", "round": r, "seconds": 2.0, "bytes": 10**9, "check": 1,
             "resident_mb": m} for r, m in ((-1, 0.0), (0, 990.5), (1, 1009.8), (2, None))]
    rows += [{"bench": "pandas_csv", "side": "mount", "round": 0, "seconds": 1.0, "bytes": 10**8, "check": 1}]
    spark, pandas = bench.summarize(rows)
    assert spark["least_resident_mb"] == 990.5  # the cold round's empty cache is not a warm round's
    assert pandas["least_resident_mb"] is None
