"""S3 throughput on the RADOS Gateway with boto3: large objects (50 MB) and small ones, put and get.

By default it starts a throwaway single-node Ceph (memstore, or --objectstore bluestore) on free loopback
ports, measures, and stops it; --endpoint with --access-key/--secret-key measures an existing gateway
instead (the keys need to be able to create a bucket). Prints a table and appends rows to a CSV.

    .venv/bin/python bench/storage_throughput.py                      # memstore
    .venv/bin/python bench/storage_throughput.py --objectstore bluestore
    .venv/bin/python bench/storage_throughput.py --endpoint http://127.0.0.1:7480 --access-key ... --secret-key ...

Rows carry a `client` column ("host" here) so figures taken from inside a user server can sit beside them.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIELDS = ["when", "client", "objectstore", "op", "object_bytes", "count", "seconds", "mb_per_s", "ops_per_s",
          "p50_ms", "p95_ms", "note"]


def timed(fn, n):
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    return time.perf_counter() - t0, lat


def row(op, size, count, seconds, lat, **kw):
    lat_ms = sorted(x * 1000 for x in lat)
    p95 = lat_ms[min(len(lat_ms) - 1, int(0.95 * len(lat_ms)))]
    return {"op": op, "object_bytes": size, "count": count, "seconds": round(seconds, 3),
            "mb_per_s": round(size * count / seconds / 1e6, 1), "ops_per_s": round(count / seconds, 1),
            "p50_ms": round(statistics.median(lat_ms), 2), "p95_ms": round(p95, 2), **kw}


def measure(s3, bucket: str, large_mb: int, large_count: int, small_kb: int, small_count: int, rounds: int):
    from boto3.s3.transfer import TransferConfig

    rows = []
    large = os.urandom(large_mb * 1_000_000)
    small = os.urandom(small_kb * 1024)
    for r in range(rounds):
        note = f"round {r + 1}"
        dt, lat = timed(lambda i: s3.put_object(Bucket=bucket, Key=f"large/{i}", Body=large), large_count)
        rows.append(row("put_object", len(large), large_count, dt, lat, note=note))
        dt, lat = timed(lambda i: s3.get_object(Bucket=bucket, Key=f"large/{i}")["Body"].read(), large_count)
        rows.append(row("get_object", len(large), large_count, dt, lat, note=note))
        cfg = TransferConfig(multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, max_concurrency=4)
        dt, lat = timed(lambda i: s3.upload_fileobj(io.BytesIO(large), bucket, f"mp/{i}", Config=cfg), large_count)
        rows.append(row("upload_multipart_8M_x4", len(large), large_count, dt, lat, note=note))
        dt, lat = timed(lambda i: s3.download_fileobj(bucket, f"mp/{i}", io.BytesIO(), Config=cfg), large_count)
        rows.append(row("download_ranged_8M_x4", len(large), large_count, dt, lat, note=note))
        dt, lat = timed(lambda i: s3.put_object(Bucket=bucket, Key=f"small/{i}", Body=small), small_count)
        rows.append(row("put_object", len(small), small_count, dt, lat, note=note))
        dt, lat = timed(lambda i: s3.get_object(Bucket=bucket, Key=f"small/{i}")["Body"].read(), small_count)
        rows.append(row("get_object", len(small), small_count, dt, lat, note=note))
        # clean up between rounds so memstore does not grow (deleted data is freed by RGW's gc later)
        for prefix in ("large/", "mp/", "small/"):
            keys = [{"Key": o["Key"]} for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objectstore", choices=["memstore", "bluestore"], default="memstore")
    p.add_argument("--endpoint", help="measure this gateway instead of starting one")
    p.add_argument("--access-key")
    p.add_argument("--secret-key")
    p.add_argument("--large-mb", type=int, default=50)
    p.add_argument("--large-count", type=int, default=5)
    p.add_argument("--small-kb", type=int, default=4)
    p.add_argument("--small-count", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--client", default="host", help="label for the CSV (host, user-server, ...)")
    p.add_argument("--csv", default=str(REPO / "bench" / "results" / "storage_throughput.csv"))
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from esker.objectstore.ceph import CephCluster
    from esker.objectstore.s3client import s3_client
    from esker.system.ports import free_port, free_port_range

    cluster = None
    tmp = None
    objectstore = args.objectstore
    memory = {}
    try:
        if args.endpoint:
            endpoint, ak, sk = args.endpoint, args.access_key, args.secret_key
            objectstore = "external"
        else:
            tmp = tempfile.mkdtemp(prefix="esker-bench-ceph-")
            base = free_port_range(16)
            ports = []
            while len(ports) < 2:
                q = free_port()
                if not base <= q < base + 16 and q not in ports:
                    ports.append(q)
            cluster = CephCluster(tmp, objectstore=args.objectstore, port=ports[0], mon_port=ports[1],
                                  ms_port_min=base, ms_port_max=base + 15, size="8G")
            t0 = time.monotonic()
            cluster.start()
            print(f"started {args.objectstore} cluster in {time.monotonic() - t0:.1f} s at {cluster.endpoint}")
            creds = cluster.admin_credentials()
            endpoint, ak, sk = cluster.endpoint, creds["access_key"], creds["secret_key"]
        s3 = s3_client(endpoint, ak, sk, timeout=120, retries=3)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        try:
            rows = measure(s3, bucket, args.large_mb, args.large_count, args.small_kb, args.small_count,
                           args.rounds)
        finally:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            s3.delete_bucket(Bucket=bucket)
        if cluster:
            memory = cluster.memory()
    finally:
        if cluster:
            cluster.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for r in rows:
        r.update(when=when, client=args.client, objectstore=objectstore)
    print(f"\n{'op':<24}{'size':>10}{'n':>5}{'MB/s':>9}{'ops/s':>9}{'p50 ms':>9}{'p95 ms':>9}  note")
    for r in rows:
        size = f"{r['object_bytes'] / 1e6:.0f} MB" if r["object_bytes"] >= 1e6 else f"{r['object_bytes'] // 1024} KiB"
        print(f"{r['op']:<24}{size:>10}{r['count']:>5}{r['mb_per_s']:>9}{r['ops_per_s']:>9}{r['p50_ms']:>9}"
              f"{r['p95_ms']:>9}  {r['note']}")
    if memory:
        print("resident memory: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in memory.items()))
    print(f"({platform.node()}, {os.cpu_count()} cores, one boto3 client over loopback)")
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    print(f"wrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
