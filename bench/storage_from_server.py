"""S3 throughput from inside a user's server against boto3 straight from the host, same run, same
Ceph RGW, same user keys, same code: large puts/gets and small puts. Rounds alternate between the two.

    .venv/bin/python bench/storage_from_server.py [--mb 50] [--small 200] [--rounds 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from ceph_fixture import start_cluster  # noqa: E402
from esker.devhub import RunningHub, prepare_environments  # noqa: E402
from esker.hubapi import run_code  # noqa: E402

WORKLOAD = """
import json, os, time, boto3
s3 = boto3.client("s3")
bucket = os.environ["ESKER_BUCKET"]
big = os.urandom({mb} * 1024 * 1024)
t = time.perf_counter(); s3.put_object(Bucket=bucket, Key="bench/{who}-big", Body=big); put = time.perf_counter() - t
t = time.perf_counter(); n = len(s3.get_object(Bucket=bucket, Key="bench/{who}-big")["Body"].read()); get = time.perf_counter() - t
assert n == len(big)
t = time.perf_counter()
for i in range({small}):
    s3.put_object(Bucket=bucket, Key=f"bench/{who}-small/{{i}}", Body=b"x" * 4096)
small = time.perf_counter() - t
print("BENCH" + json.dumps({{"put_MBps": {mb} / put, "get_MBps": {mb} / get, "small_put_ops": {small} / small}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    prepare_environments(["minimal"])
    ceph = start_cluster()
    hub = RunningHub(ceph=ceph)
    rows = []
    try:
        hub.start()
        h = hub.hub
        h.ensure_user("s3bench")
        h.spawn("s3bench", {"profile": "minimal"})
        token = h.user_token("s3bench")
        # The same user's injected environment, read back from the server, drives the host client too.
        out = run_code(f"{hub.url}/user/s3bench/", token,
                       "import os, json; print('ENV' + json.dumps({k: v for k, v in os.environ.items() "
                       "if k.startswith(('AWS_', 'ESKER_BUCKET'))}))")
        user_env = json.loads(out["stdout"].split("ENV", 1)[1])
        for r in range(args.rounds):
            for where in ("server", "host"):
                code = WORKLOAD.format(mb=args.mb, small=args.small, who=where)
                if where == "server":
                    res = run_code(f"{hub.url}/user/s3bench/", token, code, timeout=600)
                    assert res["error"] is None, res["error"]
                    text = res["stdout"]
                else:
                    env = {**os.environ, **user_env}
                    text = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                          check=True).stdout
                figures = json.loads(text.split("BENCH", 1)[1])
                rows.append({"where": where, "round": r, **{k: round(v, 1) for k, v in figures.items()}})
                print(f"round {r} {where:6s} put {figures['put_MBps']:7.1f} MB/s  get {figures['get_MBps']:7.1f} MB/s"
                      f"  4KiB puts {figures['small_put_ops']:6.1f}/s", flush=True)
        h.stop("s3bench")
    finally:
        hub.teardown()
        if ceph.cluster is not None:
            ceph.cluster.stop()
    summary = {}
    for metric in ("put_MBps", "get_MBps", "small_put_ops"):
        s = statistics.median(x[metric] for x in rows if x["where"] == "server")
        o = statistics.median(x[metric] for x in rows if x["where"] == "host")
        summary[metric] = {"server": s, "host": o, "ratio": round(s / o, 2)}
        print(f"{metric:14s} server {s:8.1f}  host {o:8.1f}  ratio {s / o:5.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "storage_from_server.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "storage_from_server.json").write_text(json.dumps({"summary": summary, "samples": rows}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
        for ax, (metric, s) in zip(axes, summary.items()):
            ax.bar(["in a server", "host boto3"], [s["server"], s["host"]], color=["tab:blue", "tab:gray"])
            ax.set_title(metric)
        fig.suptitle("S3 on the embedded Ceph RGW, same run")
        fig.tight_layout()
        fig.savefig(out / "storage_from_server.png", dpi=100)
    except ImportError:
        pass
    print(f"wrote {out}/storage_from_server.csv, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
