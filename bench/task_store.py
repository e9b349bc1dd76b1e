"""The async calls' two task stores side by side (docs/functions.md, "Async calls"): what one task costs the
function server (create, running, finish with a result, get), on SQLite in a home directory against a real
redis-server on loopback as a function's own ACL user (the hub's grant), rounds alternating between them.

    .venv/bin/python bench/task_store.py [--rounds 7] [--tasks 500] [--result-bytes 1024]

Prints median (min-max of the rounds) per task and per operation; writes bench/results/task_store.{csv,png}."""

from __future__ import annotations

import argparse
import csv
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "images" / "esker-client" / "src"))

import redis  # noqa: E402

from esker.functions.broker import BrokerAdmin  # noqa: E402
from esker_client.functions.tasks import RedisTasks, SqliteTasks, connect  # noqa: E402

ADMIN_PW = "bench-admin-" + "x" * 32
OPS = ("create", "running", "finish", "get")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(d: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (d / "users.acl").write_text(f"user default off\nuser esker-hub on >{ADMIN_PW} ~* &* +@all\n")
    (d / "redis.conf").write_text(f"bind 127.0.0.1\nport {port}\ndir {d}\naclfile {d / 'users.acl'}\n"
                                  "appendonly yes\nsave \"\"\n")  # as the chart runs it: AOF, fsync every second
    p = subprocess.Popen(["redis-server", str(d / "redis.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port, username="esker-hub", password=ADMIN_PW).ping()
            return p, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            if time.monotonic() > deadline or p.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)


def one_round(store, tasks: int, result) -> dict[str, float]:
    """Milliseconds per task for each operation, and in all."""
    spent = dict.fromkeys(OPS, 0.0)
    for _ in range(tasks):
        t0 = time.perf_counter()
        tid = store.create("user:alice", "0123456789abcdef")
        t1 = time.perf_counter()
        store.running(tid)
        t2 = time.perf_counter()
        store.finish(tid, "done", result=result)
        t3 = time.perf_counter()
        assert store.get(tid)["status"] == "done"
        t4 = time.perf_counter()
        for op, a, b in zip(OPS, (t0, t1, t2, t3), (t1, t2, t3, t4)):
            spent[op] += b - a
    out = {op: spent[op] / tasks * 1000 for op in OPS}
    out["task"] = sum(out.values())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--result-bytes", type=int, default=1024)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    if not shutil.which("redis-server"):
        print("redis-server is missing: sh scripts/install-system.sh broker", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="esker-bench-tasks-"))
    proc, url = start_redis(tmp)
    rows = []
    try:
        grant = BrokerAdmin(url, "esker-hub", ADMIN_PW).grant("alice", "bench")
        stores = {"sqlite": SqliteTasks(str(tmp / "tasks.sqlite"), 3600),
                  "redis": RedisTasks(connect(grant), grant["prefix"], 3600)}
        result = {"data": "x" * args.result_bytes}
        for r in range(args.rounds):
            order = list(stores) if r % 2 == 0 else list(reversed(stores))
            for name in order:
                rows.append({"round": r, "store": name, **one_round(stores[name], args.tasks, result)})
        for s in stores.values():
            s.close()
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(tmp, ignore_errors=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "task_store.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["round", "store", *OPS, "task"])
        w.writeheader()
        w.writerows(rows)
    print(f"{args.tasks} tasks per round, {args.rounds} rounds, results of {args.result_bytes} bytes; "
          "ms per task: median (min-max of the rounds)")
    summary = {}
    for name in ("sqlite", "redis"):
        mine = [r for r in rows if r["store"] == name]
        summary[name] = {k: (statistics.median(r[k] for r in mine), min(r[k] for r in mine), max(r[k] for r in mine))
                         for k in (*OPS, "task")}
        parts = ", ".join(f"{k} {m:.3f}" for k, (m, _, _) in summary[name].items() if k != "task")
        m, lo, hi = summary[name]["task"]
        print(f"  {name:7s} {m:.3f} ms ({lo:.3f}-{hi:.3f})  [{parts}]")
    print(f"  redis/sqlite: {summary['redis']['task'][0] / summary['sqlite']['task'][0]:.2f}x")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, name in enumerate(("sqlite", "redis")):
            vals = [summary[name][k][0] for k in OPS]
            ax.bar([j + i * 0.4 for j in range(len(OPS))], vals, 0.4, label=name)
        ax.set_xticks([j + 0.2 for j in range(len(OPS))], OPS)
        ax.set_ylabel("ms per operation (median of rounds)")
        ax.set_title("Async task store: SQLite vs Redis (a function's ACL user)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "task_store.png", dpi=120)
    except ImportError:
        pass
    print(f"wrote {out / 'task_store.csv'} and task_store.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
