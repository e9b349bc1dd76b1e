"""bench/gpu_training.py's pure parts: the RESULT line, the summary per side with the ratio, and the plot."""

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("gpu_training",
                                              Path(__file__).resolve().parents[2] / "bench" / "gpu_training.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_summary_gives_median_range_and_ratio_against_the_bare_process(tmp_path):
    rows = [{"side": s, "round": r, "device": "GPU", "samples_per_s": v * (0.98 if s == bench.SIDES[0] else 1.0),
             "seconds": 1.0, "samples": 100} for s in bench.SIDES for r, v in enumerate((1000.0, 1200.0, 1100.0))]
    summary = bench.summarize(rows)
    server, bare, grouped = summary
    assert (bare["median"], bare["min"], bare["max"], bare["n"]) == (1100.0, 1000.0, 1200.0, 3)
    assert server["ratio"] == pytest.approx(0.98) and bare["ratio"] == 1.0 and grouped["ratio"] == 1.0
    assert bench.summarize([r for r in rows if r["side"] == bench.SIDES[0]])[0]["ratio"] is None  # no bare side
    bench.plot(summary, tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000


def test_result_line_is_found_among_the_logs():
    assert bench.result_of('W0000 tf noise\nRESULT{"samples_per_s": 5.0}\n') == {"samples_per_s": 5.0}
    with pytest.raises(RuntimeError):
        bench.result_of("Traceback ...")
