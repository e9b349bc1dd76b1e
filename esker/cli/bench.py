"""`esker bench`: the reference benchmarks an admin runs against a live hub (its URL and an admin token).

Benchmarks (each can be chosen with --only, and each reports figures with a unit and a direction):

  spawn       spawn latency of the `minimal` profile at 1, 10 and 30 concurrent users, timed from the request
              to the `ready` event of the progress stream (what a person waits for), not to the POST's answer
  burst       a workshop: N users arrive over W seconds, each spawns and runs a first cell
  spark       spawn to first Spark result: in rounds of alternating order, spawn the spark profile, then a
              fresh driver (a subprocess of a fresh kernel) times getOrCreate() and a first small job on the
              server's own cluster (SPARK_MASTER) or on local[*]; each side's spawn, session, first-job and
              total seconds (median, min, max), their ratio (goal <= 1.2), a warm job, and the memory of the
              server's master, worker and executor
  s3          put/get throughput to the user's bucket from a user's server (skipped without object storage)
  scratch     write (fsynced) and cold read of N MB in SCRATCH_DIR from a kernel, side by side with the same
              on this host in the scratch root (the raw disk under it) and in the server's HOME (a plain folder)
              when that is on the same disk, in rounds of alternating order; medians, min and max
  tensorflow  Keras training throughput (samples/s) in the tensorflow profile, on a GPU when one is granted

Results go to --out as results.json, results.csv and PNG plots; --compare REFERENCE.json prints the ratio
of every figure to a reference run. Users are named bench<id>-...; they are stopped and deleted afterwards.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from esker.cli.benchreport import compare, plot, print_compare, rows, write_csv
from esker.cli.benchsuite import Bench, Progress

BENCHMARKS = ["spawn", "burst", "spark", "s3", "scratch", "tensorflow"]
FULL = {"levels": [1, 10, 30], "burst_users": 30, "burst_window": 30.0, "spark_rows": 4_000_000, "spark_rounds": 3,
        "s3_objects": 8, "s3_mb": 64, "scratch_mb": 1024, "scratch_rounds": 5, "tf_samples": 20_000, "tf_epochs": 3}
QUICK = {"levels": [1, 2], "burst_users": 3, "burst_window": 2.0, "spark_rows": 1_000_000, "spark_rounds": 1,
         "s3_objects": 2, "s3_mb": 8, "scratch_mb": 32, "scratch_rounds": 2, "tf_samples": 1_024, "tf_epochs": 1}


def cmd_bench(args) -> int:
    from esker.hubapi import Hub

    if args.compare and args.compare_only:
        table = compare(json.loads(Path(args.compare_only).read_text()), json.loads(Path(args.compare).read_text()))
        print_compare(table)
        return 0
    url = args.url
    if not url:
        from esker.cli.status import hub_url
        from esker.core import config as config_mod

        try:
            url = hub_url(config_mod.load(os.environ.get("ESKER_CONFIG")))
        except config_mod.ConfigError as e:
            print(f"no --url and no valid esker.yaml to find the hub: {e}", file=sys.stderr)
            return 2
    token = args.token or os.environ.get("ESKER_ADMIN_TOKEN")
    if not token:
        print("an admin token is needed: --token or $ESKER_ADMIN_TOKEN", file=sys.stderr)
        return 2
    hub = Hub(url.rstrip("/"), token)
    try:
        r = hub.request("GET", "/", timeout=10)
        r.raise_for_status()
        version = r.json().get("version")
        hub.request("GET", "/users", timeout=10).raise_for_status()
    except Exception as e:  # noqa: BLE001
        print(f"cannot use the hub API at {hub.api} with this token: {e}", file=sys.stderr)
        return 2

    chosen = [b.strip() for b in (args.only.split(",") if args.only else BENCHMARKS) if b.strip()]
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    sizes = dict(QUICK if args.quick else FULL)
    if args.levels:
        sizes["levels"] = [int(x) for x in args.levels.split(",")]
    if args.burst_users:
        sizes["burst_users"] = args.burst_users
    if args.scratch_mb:
        sizes["scratch_mb"] = args.scratch_mb
    if args.scratch_rounds:
        sizes["scratch_rounds"] = args.scratch_rounds
    if args.spark_rounds:
        sizes["spark_rounds"] = args.spark_rounds
    run_id = secrets.token_hex(2)
    started = datetime.now(timezone.utc)
    out = Path(args.out or Path("bench") / "results" / f"esker-bench-{started:%Y%m%dT%H%M%SZ}")
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(chosen))
    bench = Bench(hub, sizes, progress, run_id, profile=args.profile, gpus=args.gpus, gpu_group=args.gpu_group,
                  scratch_root=args.scratch_root, keep_users=args.keep_users)
    results = {"esker_bench": 1, "run_id": run_id, "started": started.isoformat(), "hub": url,
               "jupyterhub": version, "quick": args.quick, "sizes": sizes,
               "client": {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count()},
               "benchmarks": {}}
    try:
        for name in chosen:
            progress.start(name)
            t0 = time.monotonic()
            try:
                r = getattr(bench, f"bench_{name}")()
                r["status"] = "skipped" if r.get("skipped") else "ok"
            except Exception as e:  # noqa: BLE001 - one broken benchmark must not lose the others
                r = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
                     "traceback": traceback.format_exc()[-3000:], "figures": []}
            r["seconds"] = round(time.monotonic() - t0, 2)
            results["benchmarks"][name] = r
            progress.done(r["status"] + (f": {r.get('skipped') or r.get('error')}" if r["status"] != "ok" else ""))
    finally:
        bench.cleanup()
    results["finished"] = datetime.now(timezone.utc).isoformat()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_csv(results, out / "results.csv")
    results["plots"] = plot(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for r in rows(results):
        print(f"{r['benchmark']:<11} {r['case']:<16} {r['metric']:<16} {r['value']:>11.3f} {r['unit']}")
    print(f"Results: {out}/results.json, results.csv, {', '.join(results['plots'])}")
    if args.compare:
        print()
        print_compare(compare(results, json.loads(Path(args.compare).read_text())))
    errors = [n for n, r in results["benchmarks"].items() if r["status"] == "error"]
    if errors:
        print(f"FAILED: {', '.join(errors)}", file=sys.stderr)
    return 1 if errors else 0


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run the reference benchmarks against a live hub",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="the hub's URL (default: from $ESKER_CONFIG and $ESKER_PORT)")
    p.add_argument("--token", help="admin API token (default: $ESKER_ADMIN_TOKEN)")
    p.add_argument("--out", help="results folder (default: bench/results/esker-bench-<UTC time>)")
    p.add_argument("--quick", action="store_true", help="a small run: 1 and 2 users, 3 attendees, small sizes")
    p.add_argument("--only", metavar="LIST", help=f"comma-separated benchmarks (default all: {','.join(BENCHMARKS)})")
    p.add_argument("--levels", metavar="N,N", help="spawn concurrency levels (default 1,10,30; quick 1,2)")
    p.add_argument("--burst-users", type=int, help="workshop attendees (default 30; quick 3)")
    p.add_argument("--scratch-mb", type=int, help="MB written and read in scratch (default 1024; quick 32)")
    p.add_argument("--scratch-rounds", type=int, help="rounds of the scratch measurement (default 5; quick 2)")
    p.add_argument("--spark-rounds", type=int, help="rounds of the spark measurement, each a spawn per side "
                   "(default 3; quick 1)")
    p.add_argument("--profile", default="minimal", help="profile for spawn, burst, s3, scratch (default minimal)")
    p.add_argument("--gpus", default="1", help="GPUs asked for the tensorflow run (default 1; CPU if refused)")
    p.add_argument("--gpu-group", default="gpu-users", help="group that may ask for GPUs (default gpu-users)")
    p.add_argument("--scratch-root", help="where to measure the raw disk on this host (default: the parent of "
                   "the server's SCRATCH_DIR)")
    p.add_argument("--keep-users", action="store_true", help="do not delete the bench users afterwards")
    p.add_argument("--compare", metavar="REFERENCE.json", help="print each figure's ratio to a reference run")
    p.add_argument("--compare-only", metavar="RESULTS.json",
                   help="with --compare: compare two result files, run nothing")
    p.set_defaults(func=cmd_bench)
