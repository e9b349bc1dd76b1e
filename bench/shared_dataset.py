"""A workshop's participants reading one dataset, embedded mode: a mount per reader against the hub's one
shared mount per dataset, side by side in one run.

--readers participants (4) each read every file of a --dataset-mb (384 MB) dataset through their own folder,
with the page cache dropped before each round:

* "a mount per reader": each reader's own s3fs daemon, with the dataset owner's keys, read-only. This was the
  design before the shared mount, and it is what a server gets for a dataset it may write;
* "one shared mount": the hub's one s3fs for the dataset (esker.objectstore.mounts.attach_shared), bound
  read-only into each reader's folder (the spawner's design for read-only datasets).

Two patterns per round: "together", where every reader starts at once (the 9:00 cell), and "one after
another", where each reader starts when the previous one is done (a class going at its own pace). Measured:
the wall time, each reader's time (first: the first reader to finish; others: the median of the rest, or of
all readers together), the CPU that s3fs, radosgw and the OSD used, and the page cache the
mounts hold afterwards (util-linux's fincore, each mount counted once). A throwaway memstore Ceph and real
s3fs mounts with the spawner's options. Sides alternate, --rounds each; the table shows medians (min-max).
CSV and PNG go into bench/results/shared-dataset/.

    .venv/bin/python bench/shared_dataset.py [--readers 4] [--dataset-mb 384] [--files 8] [--rounds 3]
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SIDES = ("a mount per reader", "one shared mount")
PATTERNS = ("together", "one after another")


def read_all(folder: str) -> int:
    n = 0
    for f in sorted(os.listdir(folder)):
        with open(os.path.join(folder, f), "rb") as h:
            while chunk := h.read(1 << 20):
                n += len(chunk)
    return n


def cpu_s(pids: list[int]) -> float:
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def resident_mb(folders: list[str]) -> float:
    files = [os.path.join(d, f) for d in folders for f in sorted(os.listdir(d))]
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *files],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(x) for x in out.split()) / 1e6


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def one_round(folders: list[str], pattern: str) -> tuple[float, list[float], int]:
    """Every reader reads the dataset through its folder; (wall, each reader's seconds, bytes)."""
    times = [0.0] * len(folders)
    sizes = [0] * len(folders)

    def reader(i: int) -> None:
        t = time.perf_counter()
        sizes[i] = read_all(folders[i])
        times[i] = time.perf_counter() - t

    t0 = time.perf_counter()
    if pattern == "together":
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(folders))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    else:
        for i in range(len(folders)):
            reader(i)
    return time.perf_counter() - t0, times, sum(sizes)


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for pattern in dict.fromkeys(r["pattern"] for r in rows):
        for side in dict.fromkeys(r["side"] for r in rows if r["pattern"] == pattern):
            mine = [r for r in rows if r["pattern"] == pattern and r["side"] == side]
            wall = [r["wall_s"] for r in mine]
            first = [r["first_reader_s"] for r in mine]
            rest = [r["others_median_s"] for r in mine]
            cpu = [r["gateway_cpu_s"] for r in mine]
            cache = [r["page_cache_mb"] for r in mine]
            out.append({"pattern": pattern, "side": side, "n": len(mine),
                        "wall_median_s": statistics.median(wall), "wall_min_s": min(wall), "wall_max_s": max(wall),
                        "first_reader_median_s": statistics.median(first),
                        "others_median_s": statistics.median(rest),
                        "gateway_cpu_median_s": statistics.median(cpu), "gateway_cpu_min_s": min(cpu),
                        "gateway_cpu_max_s": max(cpu), "page_cache_median_mb": statistics.median(cache)})
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, (("wall", "wall, all readers done (s)"),
                                       ("gateway_cpu", "CPU of s3fs + gateway + OSD (s)"))):
        for j, pattern in enumerate(PATTERNS):
            rows = [s for s in summary if s["pattern"] == pattern]
            med = [s[f"{key}_median_s"] for s in rows]
            err = [[m - s[f"{key}_min_s"] for m, s in zip(med, rows)],
                   [s[f"{key}_max_s"] - m for m, s in zip(med, rows)]]
            ax.bar([j * 3 + i for i in range(len(rows))], med, yerr=err, capsize=4, color=["#4c72b0", "#dd8452"])
        ax.set_xticks([0.5, 3.5], PATTERNS)
        ax.set_title(label, fontsize=9)
    ax = axes[2]
    rows = [s for s in summary if s["pattern"] == PATTERNS[0]]
    ax.bar(range(len(rows)), [s["page_cache_median_mb"] for s in rows], color=["#4c72b0", "#dd8452"])
    ax.set_xticks(range(len(rows)), [s["side"] for s in rows], fontsize=8)
    ax.set_title("page cache held afterwards (MB)", fontsize=9)
    fig.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#4c72b0", "#dd8452")], labels=list(SIDES),
               loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readers", type=int, default=4)
    p.add_argument("--dataset-mb", type=int, default=384)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "shared-dataset"))
    args = p.parse_args(argv)
    if args.readers < 2:
        p.error("--readers: at least 2 (one reader shares nothing)")

    from ceph_fixture import start_cluster
    from esker.objectstore import mounts
    from esker.objectstore.s3client import s3_client

    why = mounts.unsupported()
    if why:
        raise SystemExit(f"cannot mount buckets here: {why}")
    work = Path(tempfile.mkdtemp(prefix="esker-bench-shared-"))
    ceph = start_cluster(work / "ceph")
    held: list[tuple[str, int | None, str | None]] = []  # (path, pid, shared point) to end at the finish
    rows: list[dict] = []
    try:
        svc = ceph.storage_service(work / "state", bucket_prefix="bench-",
                                   datasets=[{"name": "course", "bucket": "benchx-data", "prefix": "course/"}])
        asyncio.run(svc.ensure_datasets())
        owner = svc.credentials_for_bucket("benchx-data")
        s3 = s3_client(ceph.endpoint, owner.access_key, owner.secret_key, timeout=120, retries=3)
        size = args.dataset_mb * 10**6 // args.files
        t0 = time.monotonic()
        for i in range(args.files):
            s3.put_object(Bucket="benchx-data", Key=f"course/part-{i:03d}.bin", Body=os.urandom(size))
        print(f"uploaded {args.files} x {size / 1e6:.0f} MB in {time.monotonic() - t0:.0f} s")
        marker = str(work)
        readers = [f"p{i}" for i in range(args.readers)]
        kind = {SIDES[0]: "own", SIDES[1]: "shared"}
        plan = {side: [mounts.Mount("course", "benchx-data", "course/",
                                    str(work / "mounts" / f"{kind[side]}-{r}" / "course"), True) for r in readers]
                for side in SIDES}
        # A mount per reader: what a server got for a read-only dataset before (the owner's keys, read-only).
        own_pids = []
        for m in plan[SIDES[0]]:
            pid = mounts.mount(m, mounts.s3fs_command(m, ceph.endpoint, 0, 0),
                               mounts.s3fs_env(m, owner.access_key, owner.secret_key, marker),
                               str(work / f"{m.path.replace('/', '_')}.log"))
            held.append((m.path, pid, None))
            own_pids.append(pid)
        # One shared mount, bound into each reader's folder.
        first = plan[SIDES[1]][0]
        src, cmd = mounts.shared_command(first, mounts.shared_point(str(work / "state"), first, owner.access_key),
                                         ceph.endpoint)
        env = mounts.s3fs_env(src, owner.access_key, owner.secret_key, marker)
        shared_pid = None
        for m in plan[SIDES[1]]:
            shared_pid = mounts.attach_shared(m, src, cmd, env, str(work / "shared.log"))
            held.append((m.path, shared_pid, src.path))
        gateway = [json.loads(f.read_text())["pid"] for f in (work / "ceph" / "run").glob("esker-*.pid")]
        pids = {SIDES[0]: own_pids + gateway, SIDES[1]: [shared_pid] + gateway}
        distinct = {SIDES[0]: [m.path for m in plan[SIDES[0]]], SIDES[1]: [plan[SIDES[1]][0].path]}
        for side in SIDES:  # each path once, untimed (s3fs's first listing, Python's imports)
            drop_page_cache()
            one_round([m.path for m in plan[side]], "one after another")
        for rnd in range(args.rounds):
            for pattern in PATTERNS:
                for side in SIDES:
                    drop_page_cache()
                    c0 = cpu_s(pids[side])
                    wall, times, nbytes = one_round([m.path for m in plan[side]], pattern)
                    row = {"pattern": pattern, "side": side, "round": rnd, "wall_s": wall,
                           "first_reader_s": times[0] if pattern != "together" else min(times),
                           "others_median_s": statistics.median(times[1:] if pattern != "together" else times),
                           "gateway_cpu_s": cpu_s(pids[side]) - c0, "page_cache_mb": resident_mb(distinct[side]),
                           "bytes": nbytes, "readers": args.readers}
                    assert nbytes == args.readers * args.files * size, (nbytes, side)
                    rows.append(row)
                    print(f"round {rnd} {pattern:18} {side:20} wall {wall:6.2f} s  gateway CPU "
                          f"{row['gateway_cpu_s']:5.2f} s  page cache {row['page_cache_mb']:6.0f} MB", flush=True)
    finally:
        for path, pid, shared in reversed(held):
            if shared:
                mounts.detach_shared(path, shared, pid)
            else:
                mounts.unmount(path, pid)
        if ceph.cluster is not None:
            ceph.cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary = summarize(rows)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / "rounds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(outdir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    plot(summary, outdir / "shared_dataset.png")
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, {args.readers} readers of {args.dataset_mb} MB "
          f"({args.files} files), page cache dropped before each round, {args.rounds} rounds")
    print(f"{'pattern':18} {'side':20} {'wall s (min-max)':>20} {'first s':>8} {'others s':>9} "
          f"{'gateway CPU s':>14} {'cache MB':>9}")
    for s in summary:
        print(f"{s['pattern']:18} {s['side']:20} {s['wall_median_s']:8.2f} "
              f"({s['wall_min_s']:.2f}-{s['wall_max_s']:.2f}) {s['first_reader_median_s']:8.2f} "
              f"{s['others_median_s']:9.2f} {s['gateway_cpu_median_s']:14.2f} {s['page_cache_median_mb']:9.0f}")
    for pattern in PATTERNS:
        a, b = (next(s for s in summary if s["pattern"] == pattern and s["side"] == side) for side in SIDES)
        print(f"{pattern}: the shared mount finishes in {b['wall_median_s'] / a['wall_median_s']:.2f}x the time "
              f"of a mount per reader, with {b['gateway_cpu_median_s'] / a['gateway_cpu_median_s']:.2f}x its gateway "
              f"CPU and {b['page_cache_median_mb'] / a['page_cache_median_mb']:.2f}x its page cache")
    print(f"CSV and PNG in {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
