"""bench/shared_dataset.py's pure parts: the summary per pattern and side, and the plot."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("shared_dataset",
                                              Path(__file__).resolve().parents[2] / "bench" / "shared_dataset.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_summary_gives_medians_and_ranges_per_pattern_and_side_and_a_plot(tmp_path):
    rows = [{"pattern": p, "side": s, "round": r, "wall_s": w, "first_reader_s": w / 2, "others_median_s": w / 4,
             "gateway_cpu_s": w * 2, "page_cache_mb": 400.0 if s == bench.SIDES[1] else 1600.0}
            for p in bench.PATTERNS for s in bench.SIDES for r, w in enumerate((3.0, 1.0, 2.0))]
    summary = bench.summarize(rows)
    assert [(s["pattern"], s["side"]) for s in summary] == [(p, s) for p in bench.PATTERNS for s in bench.SIDES]
    one = summary[0]
    assert (one["wall_median_s"], one["wall_min_s"], one["wall_max_s"]) == (2.0, 1.0, 3.0)
    assert (one["gateway_cpu_median_s"], one["gateway_cpu_min_s"], one["gateway_cpu_max_s"]) == (4.0, 2.0, 6.0)
    assert one["first_reader_median_s"] == 1.0 and one["others_median_s"] == 0.5 and one["n"] == 3
    assert summary[1]["page_cache_median_mb"] == 400.0
    bench.plot(summary, tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000


def test_read_all_reads_every_file_of_a_folder(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 3000000)
    (tmp_path / "b").write_bytes(b"y" * 10)
    assert bench.read_all(str(tmp_path)) == 3000010
