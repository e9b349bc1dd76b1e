"""Data in place, embedded mode: reading the user's bucket through the hub's s3fs mount against the same data
elsewhere, side by side in one run.

1. Spark (pip's pyspark, `local[2]`, the same engine on both sides) aggregating every column of a Parquet
   dataset of --parquet-mb (1 GB) from ``s3a://<bucket>/...`` (ViewFileSystemOverloadScheme onto the mount,
   the settings a server gets) against the same files on local disk. Goal: at least 0.8x. First each side once
   cold (the page cache dropped: the local files from the disk, the bucket from the gateway), then --rounds warm
   as they come (whatever the page cache kept), then --rounds resident (each side's files read through right
   before its round). Each Spark round records how much of its data was in the page cache as it started.
2. pandas reading a --csv-mb (200 MB) CSV from the mounted bucket against boto3 ``get_object`` into memory
   plus ``pandas.read_csv``. Goal: at least 0.9x.
3. Listing --keys (10,000) small objects: ``os.listdir`` on the mount (first and again) against boto3's
   ``list_objects_v2`` pages.

A throwaway single-node Ceph (memstore: RGW and its data in memory, like the page cache the local side reads
from), a real RGW user made by Esker's StorageService, a real s3fs mount with the options the spawner uses
(esker.objectstore.mounts). Sides alternate, --rounds each. Prints a table (median, min-max), writes CSV and
a PNG into bench/results/data-in-place/.

    .venv/bin/python bench/data_in_place.py [--parquet-mb 1024] [--csv-mb 200] [--keys 10000] [--rounds 5]
        [--s3fs-options parallel_count=5]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

WORKER = r'''
import io, json, os, subprocess, sys, time
args = json.loads(sys.argv[1])
if args["step"] == "generate":
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq, pandas as pd
    rng = np.random.default_rng(7)
    rows = args["parquet_mb"] * 2**20 // 32 // args["files"]  # 4 columns of 8 bytes
    os.makedirs(args["parquet_dir"], exist_ok=True)
    for i in range(args["files"]):
        t = pa.table({"a": rng.integers(0, 1 << 30, rows), "b": rng.random(rows), "c": rng.random(rows),
                      "d": rng.integers(0, 1000, rows)})
        pq.write_table(t, os.path.join(args["parquet_dir"], f"part-{i:04d}.parquet"), compression="snappy")
    n = args["csv_mb"] * 10**6 // 32  # about 32 bytes a line
    pd.DataFrame({"x": rng.integers(0, 1 << 30, n), "y": rng.random(n), "z": rng.integers(0, 100, n)}).to_csv(
        args["csv_path"], index=False)
    print(json.dumps({"parquet_bytes": sum(os.path.getsize(os.path.join(args["parquet_dir"], f))
                                           for f in os.listdir(args["parquet_dir"])),
                      "csv_bytes": os.path.getsize(args["csv_path"])}))
    sys.exit(0)

import boto3, pandas as pd
from botocore.config import Config
from pyspark.sql import SparkSession, functions as F
b = SparkSession.builder.master("local[2]").config("spark.driver.memory", "2g").config("spark.ui.enabled", "false")
for k, v in args["conf"].items():
    b = b.config(k, v)
spark = b.getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
s3 = boto3.client("s3", endpoint_url=args["endpoint"], aws_access_key_id=args["ak"], aws_secret_access_key=args["sk"],
                  region_name="default", config=Config(s3={"addressing_style": "path"}))
out = []

def spark_read(path):
    t = time.perf_counter()
    r = spark.read.parquet(path).agg(F.sum("a"), F.sum("b"), F.avg("c"), F.max("d")).collect()[0]
    return time.perf_counter() - t, [float(x) for x in r]

def drop_page_cache():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:  # root's: the bench mounts as root
        f.write("1\n")

def files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d))

def resident_mb(d):
    """How much of the side's files is in the page cache now (util-linux's fincore; None without it)."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *files(d)],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return round(sum(int(x) for x in out.split()) / 1e6, 1)

def page_in(d):
    for f in files(d):
        with open(f, "rb") as h:
            while h.read(1 << 20):
                pass

SIDES = (("local disk", args["local_parquet"], args["local_parquet"]),
         ("bucket (s3a:// on the mount)", args["s3a_parquet"], args["mount_parquet"]))

def cpu_s(pids):
    """CPU seconds (user + system) the processes have used so far."""
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")

def spark_pids():
    """This driver and its descendants (the JVM Spark runs in)."""
    parent = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    parent[int(e)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    mine = {os.getpid()}
    while True:
        more = {p for p, pp in parent.items() if pp in mine} - mine
        if not more:
            return mine
        mine |= more

def timed(bench, rnd, side, path, d):
    res = resident_mb(d)  # untimed, just before the read
    sp = spark_pids()
    c0, g0 = cpu_s(sp), cpu_s(args["gateway_pids"])
    dt, check = spark_read(path)
    out.append({"bench": bench, "side": side, "round": rnd, "seconds": dt, "bytes": args["parquet_bytes"],
                "check": round(sum(check), 3), "resident_mb": res, "spark_cpu_s": round(cpu_s(sp) - c0, 2),
                "gateway_cpu_s": round(cpu_s(args["gateway_pids"]) - g0, 2)})

for _, path, _ in SIDES:  # JIT and session warm-up of both sides' paths, untimed
    spark_read(path)
# Cold, round -1: each side once with nothing in the page cache (the local files from the disk, the bucket from
# the gateway through s3fs). Then the warm rounds as they come: whatever the kernel kept of the last read.
for side, path, d in SIDES:
    drop_page_cache()
    timed("spark_parquet", -1, side, path, d)
for _, _, d in SIDES:  # the bucket's cold round dropped the local side's cache too
    page_in(d)
for rnd in range(args["rounds"]):
    for side, path, d in SIDES:
        timed("spark_parquet", rnd, side, path, d)
# Resident: each side's files read through once right before its timed round, so both find all of it in the
# page cache. Separately because a machine may drop idle page cache within seconds (this one's DAMON
# reclaim does; docs/storage.md), and a hole costs the bucket a refetch from the gateway but the local
# disk only a read.
for rnd in range(args["rounds"]):
    for side, path, d in SIDES:
        page_in(d)
        timed("spark_parquet_resident", rnd, side, path, d)
# Each workload's rounds back to back, sides alternating within: interleaved with the CSV reads and the listing,
# Spark's warm passes from the bucket came out slower (docs/storage.md, "Data in place: figures").
for rnd in range(args["rounds"]):
    for side in ("boto3 get_object + read_csv", "bucket mount (pandas.read_csv)"):
        t = time.perf_counter()
        if side.startswith("bucket"):
            df = pd.read_csv(args["mount_csv"])
        else:
            df = pd.read_csv(io.BytesIO(s3.get_object(Bucket=args["bucket"], Key=args["csv_key"])["Body"].read()))
        out.append({"bench": "pandas_csv", "side": side, "round": rnd, "seconds": time.perf_counter() - t,
                    "bytes": args["csv_bytes"], "check": int(df["z"].sum())})
for rnd in range(args["rounds"]):
    for side in ("boto3 list_objects_v2", "os.listdir on the mount"):
        t = time.perf_counter()
        if side.startswith("os"):
            n = len(os.listdir(args["mount_many"]))
        else:
            n = sum(len(p.get("Contents", [])) for p in s3.get_paginator("list_objects_v2").paginate(
                Bucket=args["bucket"], Prefix="many/"))
        out.append({"bench": "list_keys", "side": side, "round": rnd, "seconds": time.perf_counter() - t,
                    "bytes": 0, "check": n})
spark.stop()
print("RESULTS" + json.dumps(out))
'''


def spark_python() -> str:
    """The Spark profile's environment (built into the shared cache once, as the tests do)."""
    from esker.devhub import ENVS_DIR

    with tempfile.TemporaryDirectory(prefix="esker-prep-") as state:
        out = subprocess.run([str(REPO / ".venv" / "bin" / "esker"), "prepare", "spark"], capture_output=True,
                             text=True, check=True,
                             env={**os.environ, "ESKER_ENVS_DIR": ENVS_DIR, "ESKER_STATE_DIR": state})
    for line in out.stdout.splitlines():
        if line.startswith("spark: "):
            return os.path.join(line.split(": ", 1)[1].strip(), "bin", "python")
    raise SystemExit(f"esker prepare spark printed no path: {out.stdout} {out.stderr}")


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        sides = list(dict.fromkeys(r["side"] for r in rows if r["bench"] == bench))
        for side in sides:
            mine = [r for r in rows if r["bench"] == bench and r["side"] == side]
            t = [r["seconds"] for r in mine if r["round"] >= 0]
            b = mine[0]["bytes"]
            # The first read: the cold round (-1, page cache dropped) where there is one, else round 0.
            first = min(mine, key=lambda r: r["round"])["seconds"]
            # Spark's rounds record how much of the data was in the page cache right before each read.
            res = [r["resident_mb"] for r in mine if r["round"] >= 0 and r.get("resident_mb") is not None]
            out.append({"bench": bench, "side": side, "n": len(t), "first_s": first, "median_s": statistics.median(t),
                        "min_s": min(t), "max_s": max(t),
                        "median_mb_s": b / statistics.median(t) / 1e6 if b else None,
                        "least_resident_mb": min(res) if res else None})
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(s["bench"] for s in summary))
    fig, axes = plt.subplots(1, len(benches), figsize=(4.5 * len(benches), 3.6))
    for ax, bench in zip(axes, benches):
        rows = [s for s in summary if s["bench"] == bench]
        med = [s["median_s"] for s in rows]
        err = [[m - s["min_s"] for m, s in zip(med, rows)], [s["max_s"] - m for m, s in zip(med, rows)]]
        ax.bar(range(len(rows)), med, yerr=err, capsize=4, color=["#4c72b0", "#dd8452"][: len(rows)])
        ax.set_xticks(range(len(rows)), [s["side"].replace(" (", "\n(") for s in rows], fontsize=7)
        ax.set_title(bench.replace("_", " "))
        ax.set_ylabel("seconds (median, min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parquet-mb", type=int, default=1280)  # about 1.1 GB of Parquet (snappy saves a little)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--csv-mb", type=int, default=200)
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--s3fs-options", default="", help="extra s3fs -o options after the spawner's (an A/B of a "
                   "setting, e.g. parallel_count=5)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "data-in-place"))
    args = p.parse_args(argv)

    from ceph_fixture import start_cluster
    from esker.core.contributors import viewfs_conf
    from esker.objectstore import mounts
    from esker.objectstore.s3client import s3_client

    why = mounts.unsupported()
    if why:
        raise SystemExit(f"cannot mount buckets here: {why}")
    python = spark_python()
    work = Path(tempfile.mkdtemp(prefix="esker-bench-data-"))
    ceph = start_cluster(work / "ceph")
    pid = m = None
    try:
        svc = ceph.storage_service(work / "state", bucket_prefix="bench-")
        grant = asyncio.run(svc.prepare("reader"))
        bucket = grant["bucket"]
        root = mounts.account_root(str(work / "state"), "reader")
        mounts.prepare_root(root, 0)
        [m] = mounts.plan_mounts(grant, root)
        local = work / "local"
        gen = {"step": "generate", "parquet_mb": args.parquet_mb, "files": args.files, "csv_mb": args.csv_mb,
               "parquet_dir": str(local / "parquet"), "csv_path": str(local / "data.csv")}
        t0 = time.monotonic()
        sizes = json.loads(subprocess.run([python, "-c", WORKER, json.dumps(gen)], capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1])
        print(f"generated {sizes['parquet_bytes'] / 1e6:.0f} MB Parquet and {sizes['csv_bytes'] / 1e6:.0f} MB CSV "
              f"in {time.monotonic() - t0:.0f} s")
        s3 = s3_client(grant["endpoint"], grant["access_key"], grant["secret_key"], timeout=120, retries=3)
        t0 = time.monotonic()
        for f in sorted((local / "parquet").iterdir()):
            s3.upload_file(str(f), bucket, f"parquet/{f.name}")
        s3.upload_file(str(local / "data.csv"), bucket, "data.csv")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"many/k{i:05d}", Body=b"x"), range(args.keys)))
        print(f"uploaded in {time.monotonic() - t0:.0f} s")
        cmd = mounts.s3fs_command(m, grant["endpoint"], 0, 0)
        if args.s3fs_options:
            cmd[cmd.index("-o") + 1] += "," + args.s3fs_options  # s3fs: the last of a repeated option wins
        pid = mounts.mount(m, cmd,
                           mounts.s3fs_env(m, grant["access_key"], grant["secret_key"], str(work)), str(work / "s3fs.log"))
        conf = viewfs_conf({"root": root, "buckets": bucket})
        # What the bucket's path costs in CPU: s3fs, the gateway and the OSD (the monitor idles).
        gateway = [pid] + [json.loads(f.read_text())["pid"] for f in (work / "ceph" / "run").glob("esker-*.pid")]
        job = {"step": "measure", "rounds": args.rounds, "conf": conf, "endpoint": grant["endpoint"],
               "ak": grant["access_key"], "sk": grant["secret_key"], "bucket": bucket, "csv_key": "data.csv",
               "local_parquet": str(local / "parquet"), "s3a_parquet": f"s3a://{bucket}/parquet",
               "mount_csv": os.path.join(m.path, "data.csv"), "mount_parquet": os.path.join(m.path, "parquet"), "gateway_pids": gateway, "mount_many": os.path.join(m.path, "many"),
               **sizes}
        r = subprocess.run([python, "-c", WORKER, json.dumps(job)], capture_output=True, text=True)
        if "RESULTS" not in r.stdout:
            raise SystemExit(f"the measuring run failed:\n{r.stderr[-4000:]}")
        rows = json.loads(r.stdout.split("RESULTS", 1)[1])
    finally:
        if m is not None and pid:
            mounts.unmount(m.path, pid)
        if ceph.cluster is not None:
            ceph.cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    checks = {(r["bench"], r["check"]) for r in rows}
    assert len({c for b, c in checks if b.startswith("spark_parquet")}) == 1, "both sides read the same data"
    assert {c for b, c in checks if b == "list_keys"} == {args.keys}, checks
    summary = summarize(rows)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / "rounds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["bench", "side", "round", "seconds", "bytes", "check", "resident_mb",
                                           "spark_cpu_s", "gateway_cpu_s"])
        w.writeheader()
        w.writerows(rows)
    with open(outdir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    plot(summary, outdir / "data_in_place.png")
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, {args.rounds} rounds per side, alternating"
          + (f", s3fs options +{args.s3fs_options}" if args.s3fs_options else ""))
    print("(first: Spark's cold read, each side once after the page cache was dropped; pandas' and the listing's"
          " round 0, the bucket cold. spark_parquet: the warm rounds as they come, whatever the page cache kept;"
          " spark_parquet_resident: each side's files read through right before its round. resident: the least"
          " of Spark's data in the page cache at the start of a round)")
    print(f"{'bench':22} {'side':30} {'first s':>8} {'median s':>9} {'min-max s':>13} {'MB/s':>7} {'resident':>9}")
    for s in summary:
        mbs = f"{s['median_mb_s']:.0f}" if s["median_mb_s"] else ""
        res = f"{s['least_resident_mb']:.0f} MB" if s["least_resident_mb"] is not None else ""
        print(f"{s['bench']:22} {s['side']:30} {s['first_s']:8.2f} {s['median_s']:9.2f} "
              f"{s['min_s']:6.2f}-{s['max_s']:<6.2f} {mbs:>7} {res:>9}")
    benches = ("spark_parquet", "spark_parquet_resident", "pandas_csv", "list_keys")
    by = {(s["bench"], i): s for b in benches for i, s in enumerate(x for x in summary if x["bench"] == b)}
    for bench, goal in zip(benches, (0.8, 0.8, 0.9, None)):
        ratio = by[(bench, 0)]["median_s"] / by[(bench, 1)]["median_s"]
        cold = by[(bench, 0)]["first_s"] / by[(bench, 1)]["first_s"]
        print(f"{bench}: {by[(bench, 1)]['side']} runs at {ratio:.2f}x the speed of {by[(bench, 0)]['side']}"
              " (medians" + ("" if bench.endswith("resident") else f"; first read {cold:.2f}x") + ")"
              + (f", goal {goal}x: {'met' if ratio >= goal else 'missed'}" if goal else ""))
    for r in rows:
        if r["bench"] == "spark_parquet" and r["round"] == -1:
            cpu = r["spark_cpu_s"] + r["gateway_cpu_s"]
            print(f"cold read, {r['side']}: {r['seconds']:.2f} s; CPU: Spark {r['spark_cpu_s']:.2f} s, s3fs and the"
                  f" gateway {r['gateway_cpu_s']:.2f} s; on {os.cpu_count()} cores at least"
                  f" {cpu / os.cpu_count():.2f} s")
    print(f"CSV and PNG in {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
