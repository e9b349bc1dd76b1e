"""Spawn latency, side by side in one run: Esker's embedded spawner against plain JupyterHub's
SimpleLocalProcessSpawner, both starting the same JupyterLab (the minimal environment) behind the same
configurable-http-proxy, at 1, 10 and 30 concurrent users; rounds alternate between the two hubs so
machine noise hits both. Also: time from spawn to the first Spark result (spark profile).

Latency is POST to the "ready" event of the progress stream, per user.

    .venv/bin/python bench/spawn_latency.py [--levels 1,10,30] [--repeat 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import requests  # noqa: E402

from esker.app import shutdown  # noqa: E402
from esker.devhub import ENVS_DIR, RunningHub, free_port, prepare_environments  # noqa: E402
from esker.hubapi import Hub, run_code  # noqa: E402


class PlainHub:
    """Upstream JupyterHub with SimpleLocalProcessSpawner: the baseline."""

    def __init__(self, singleuser: str, parent: str = "/tmp"):
        self.dir = tempfile.mkdtemp(prefix="plain-hub-", dir=parent)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.hub_port, self.proxy_api_port = free_port(), free_port()
        chp = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
        Path(self.dir, "jupyterhub_config.py").write_text(textwrap.dedent(f"""
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            c.JupyterHub.pid_file = "{self.dir}/jupyterhub.pid"  # so the teardown finds what it started
            c.ConfigurableHTTPProxy.pid_file = "{self.dir}/proxy.pid"
            c.ConfigurableHTTPProxy.command = ["{chp}"]
            c.JupyterHub.authenticator_class = "dummy"
            c.Authenticator.allow_all = True
            c.JupyterHub.spawner_class = "simple"
            c.SimpleLocalProcessSpawner.home_dir_template = "{self.dir}/home/{{username}}"
            c.Spawner.cmd = ["{singleuser}"]
            c.Spawner.args = ["--allow-root"]
            c.Spawner.default_url = "/lab"
            c.Spawner.http_timeout = 120  # the same patience Esker's hub has
            c.JupyterHub.concurrent_spawn_limit = 50
            c.JupyterHub.services = [{{"name": "bench", "api_token": "{self.token}"}}]
            c.JupyterHub.load_roles = [{{"name": "bench", "scopes": ["admin:users", "admin:servers"],
                                        "services": ["bench"]}}]
            c.JupyterHub.db_url = "sqlite:///{self.dir}/jupyterhub.sqlite"
        """))
        self.proc = None

    @property
    def hub(self) -> Hub:
        return Hub(f"http://127.0.0.1:{self.port}", self.token)

    def start(self):
        log = open(Path(self.dir, "hub.log"), "ab")
        self.proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "jupyterhub"), "-f", "jupyterhub_config.py"],
                                     cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(240):
            try:
                if requests.get(f"{self.hub.api}/", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError("plain hub did not start")

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)  # cleanup_servers defaults to True upstream
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever it left (servers, proxy), found from its state dir and stopped for certain.
        out = shutdown.stop(self.dir, everything=True, hub_port=self.hub_port, proxy_api_port=self.proxy_api_port)
        for line in out.left:
            print(f"  plain hub left: {line}", flush=True)


def burst(hub: Hub, users: list[str], options: dict | None) -> list[float | None]:
    """Seconds to ready per user; None for a spawn that failed (counted, not hidden)."""
    for u in users:
        hub.ensure_user(u)

    def one(u):
        try:
            return hub.spawn(u, options)["seconds"]
        except Exception as e:  # noqa: BLE001 - a failed spawn is a result too
            print(f"  {u}: failed: {e}", flush=True)
            return None

    with ThreadPoolExecutor(len(users)) as pool:
        results = list(pool.map(one, users))
    with ThreadPoolExecutor(min(len(users), 10)) as pool:
        list(pool.map(hub.stop, users))
    return results


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,10,30", help="concurrent users per round (default 1,10,30)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds per level and hub (default 2)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for JSON/CSV/PNG")
    ap.add_argument("--no-spark", action="store_true", help="skip spawn-to-first-Spark-result")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    os.makedirs(args.out, exist_ok=True)

    prepare_environments(["minimal", "spark"])
    envs = sorted(Path(ENVS_DIR).glob("minimal-*"), key=lambda p: p.stat().st_mtime)
    singleuser = str(envs[-1] / "bin" / "jupyterhub-singleuser")

    esker = RunningHub().start()
    plain = PlainHub(singleuser).start()
    rows = []
    try:
        for level in levels:
            for r in range(args.repeat):
                for label, h, opts in (("esker", esker.hub, {"profile": "minimal"}), ("plain", plain.hub, None)):
                    users = [f"b{level}r{r}u{i}" for i in range(level)]
                    got = burst(h, users, opts)
                    rows += [{"spawner": label, "concurrency": level, "round": r, "seconds": s} for s in got]
                    t = [x for x in got if x is not None] or [float("nan")]
                    print(f"{label:6s} {level:3d} users round {r}: median {statistics.median(t):6.2f}s "
                          f"max {max(t):6.2f}s failed {got.count(None)}", flush=True)
        spark = {}
        if not args.no_spark:
            h = esker.hub
            h.ensure_user("spark-bench")
            t0 = time.monotonic()
            h.spawn("spark-bench", {"profile": "spark"})
            t_ready = time.monotonic() - t0
            out = run_code(f"{esker.url}/user/spark-bench/", h.user_token("spark-bench"),
                           "from pyspark.sql import SparkSession\n"
                           "s = SparkSession.builder.getOrCreate()\n"
                           "print(s.range(1000000).selectExpr('sum(id)').collect()[0][0])")
            t_first = time.monotonic() - t0
            assert out["error"] is None, out["error"]
            spark = {"spawn_seconds": round(t_ready, 2), "first_result_seconds": round(t_first, 2)}
            h.stop("spark-bench")
            print(f"spark: server ready {t_ready:.1f}s, first Spark result {t_first:.1f}s after the spawn request")
    finally:
        try:
            plain.stop()
        finally:
            esker.teardown()

    summary = []
    for level in levels:
        e = [x["seconds"] for x in rows if x["spawner"] == "esker" and x["concurrency"] == level]
        p = [x["seconds"] for x in rows if x["spawner"] == "plain" and x["concurrency"] == level]
        failed = {"esker_failed": e.count(None), "plain_failed": p.count(None)}
        e = [x for x in e if x is not None] or [float("nan")]
        p = [x for x in p if x is not None] or [float("nan")]
        summary.append({"concurrency": level, **failed, "esker_median": statistics.median(e), "esker_p95": pct(e, 0.95),
                        "plain_median": statistics.median(p), "plain_p95": pct(p, 0.95),
                        "ratio_median": statistics.median(e) / statistics.median(p)})
    print(f"\n{'users':>5} {'esker p50':>10} {'plain p50':>10} {'ratio':>6} {'esker p95':>10} {'plain p95':>10}"
          f" {'failed e/p':>10}")
    for s in summary:
        print(f"{s['concurrency']:5d} {s['esker_median']:9.2f}s {s['plain_median']:9.2f}s {s['ratio_median']:6.2f} "
              f"{s['esker_p95']:9.2f}s {s['plain_p95']:9.2f}s {s['esker_failed']:>5}/{s['plain_failed']}")

    out = Path(args.out)
    with open(out / "spawn_latency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["spawner", "concurrency", "round", "seconds"])
        w.writeheader()
        w.writerows(rows)
    (out / "spawn_latency.json").write_text(json.dumps({"summary": summary, "spark": spark, "samples": rows},
                                                       indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(levels))
        ax.bar([i - 0.2 for i in x], [s["esker_median"] for s in summary], 0.4, label="Esker (esker-local)")
        ax.bar([i + 0.2 for i in x], [s["plain_median"] for s in summary], 0.4, label="SimpleLocalProcessSpawner")
        ax.set_xticks(list(x), [f"{lv} users" for lv in levels])
        ax.set_ylabel("median seconds to ready")
        ax.set_title("Spawn latency, same run, same machine")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "spawn_latency.png", dpi=100)
    except ImportError:
        pass
    print(f"\nwrote {out}/spawn_latency.csv, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
