"""Spawn to first Spark result, side by side in one run: a throwaway embedded hub (esker.devhub.RunningHub),
and in rounds of alternating order, a spawn of the spark profile followed by a fresh driver (a Python
subprocess of a fresh kernel) that times ``SparkSession.builder.getOrCreate()`` and a first small job
(``spark.range(10**6).selectExpr('sum(id)')`` and an RDD map) on the server's own cluster (the injected
SPARK_MASTER) or with ``.master('local[*]')``. Reports each side's spawn, session, first-job and total seconds
(median, min, max) and the ratio cluster/local (the goal: at most 1.2), a warm job on --rows rows, and the
memory of the server's master and worker (idle) and executor (while the job runs), with its control group's.

It is ``esker bench --only spark`` (esker/cli/benchsuite.py) against a hub of its own.

    .venv/bin/python bench/spark_first_result.py [--rounds 3] [--rows 4000000] [--out bench/results/spark-first]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from esker.cli.benchreport import plot, rows, write_csv  # noqa: E402
from esker.cli.benchsuite import Bench, Progress  # noqa: E402
from esker.devhub import RunningHub, prepare_environments  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each a spawn per side (default 3)")
    ap.add_argument("--rows", type=int, default=4_000_000, help="rows of the warm job after the first (0: none)")
    ap.add_argument("--out", default=None, help="folder for results.json/.csv and spark.png "
                    "(default bench/results/spark-first-<UTC time>)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="one more side: the cluster side with these settings in the driver's builder (e.g. "
                    "fastexec:spark.executor.extraJavaOptions=-XX:TieredStopAtLevel=1)")
    args = ap.parse_args()
    variants = {}
    for v in args.variant:
        name, _, kvs = v.partition(":")
        variants[name] = dict(kv.split("=", 1) for kv in kvs.split(",") if kv)
    started = datetime.now(timezone.utc)
    out = Path(args.out or REPO / "bench" / "results" / f"spark-first-{started:%Y%m%dT%H%M%SZ}")
    out.mkdir(parents=True, exist_ok=True)

    prepare_environments(["spark"])
    hub = RunningHub().start()
    sizes = {"spark_rounds": args.rounds, "spark_rows": args.rows, "spark_variants": variants}
    bench = Bench(hub.hub, sizes, Progress(1), run_id="sf")
    results = {"esker_bench": 1, "run_id": "sf", "started": started.isoformat(), "hub": hub.url, "sizes": sizes,
               "client": {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_avg": os.getloadavg()},
               "benchmarks": {}}
    try:
        bench.progress.start("spark")
        t0 = time.monotonic()
        r = bench.bench_spark()
        r["status"], r["seconds"] = "ok", round(time.monotonic() - t0, 2)
        results["benchmarks"]["spark"] = r
        bench.progress.done("ok")
    finally:
        try:
            bench.cleanup()
        finally:
            hub.teardown()
    results["finished"] = datetime.now(timezone.utc).isoformat()
    results["client"]["load_avg_end"] = os.getloadavg()
    write_csv(results, out / "results.csv")
    results["plots"] = plot(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    s = results["benchmarks"]["spark"]
    print(f"\n{'side':8} {'round':>5} {'spawn':>7} {'session':>8} {'1st job':>8} {'total':>7} {'e2e':>7} {'warm job':>8}")
    for side in s["samples"]:
        for x in s["samples"][side]:
            print(f"{side:8} {x['round']:5d} {x['spawn_s']:7.2f} {x['session_s']:8.2f} {x['first_job_s']:8.2f} "
                  f"{x['total_s']:7.2f} {x['end_to_end_s']:7.2f} {x['job_s'] or 0:8.2f}")
    for r in rows(results):
        print(f"{r['case']:<17} {r['metric']:<22} {r['value']:>10.3f} {r['unit']}")
    print(f"cluster/local, spawn to first result: {s['first_result_ratio']:.2f}x (median of totals; rounds "
          f"{', '.join(f'{x:.2f}' for x in s['first_result_ratio_rounds'])})")
    print(f"wrote {out}/results.json, results.csv, {', '.join(results['plots'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
