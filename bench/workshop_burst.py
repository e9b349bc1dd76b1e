"""Workshop burst: N participants (default 30) of a course log in through the HTML form and spawn at once.
Time from the form POST until each server is ready (median, p95), with the profile's environment cache cold
(built during the burst: no pre-warming) and warm (built beforehand: what prewarm_plan asks for), and the hub
API's latency (GET /hub/api/) sampled during the burst.

    .venv/bin/python bench/workshop_burst.py [--users 30] [--profile minimal] [--out bench/results]

Needs root (per-user accounts). Writes workshop_burst.{csv,json,png} under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent

from esker import devhub as hubfixture  # noqa: E402
from test_courses_hub import CourseHub  # noqa: E402


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def form_spawn(h, name: str, profile: str, timeout: float = 900) -> float:
    t0 = time.monotonic()
    s = requests.Session()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', s.get(f"{h.url}/hub/login").text).group(1)
    s.post(f"{h.url}/hub/login?next=/hub/spawn", data={"username": name, "password": "x", "_xsrf": xsrf})
    s.post(f"{h.url}/hub/spawn", data={"profile": profile, "_xsrf": s.cookies.get("_xsrf", xsrf)},
           allow_redirects=False)
    seen = False
    while time.monotonic() - t0 < timeout:
        srv = h.hub.request("GET", f"/users/{name}").json().get("servers", {}).get("")
        if srv and srv.get("ready"):
            return time.monotonic() - t0
        seen = seen or bool(srv)
        if seen and not srv:  # the spawn failed (e.g. the server missed JupyterHub's start timeout)
            return float("nan")
        time.sleep(0.5)
    return float("nan")


def burst(users: int, profile: str, cold: bool) -> dict:
    envs = tempfile.mkdtemp(prefix="esker-bench-envs-") if cold else hubfixture.ENVS_DIR
    old = hubfixture.ENVS_DIR
    hubfixture.ENVS_DIR = envs
    h = CourseHub()
    names = [f"wb{i:02d}" for i in range(users)]
    h.cfg["courses"] = [{"name": "burst", "group": "burst", "participants": names,
                         "content": {"path": "courses/intro-ml"}, "profiles": [profile]}]
    h.cfg["hub"]["concurrent_spawn_limit"] = max(users, 1)
    import yaml

    Path(h.config_file).write_text(yaml.safe_dump(h.cfg))
    latencies, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            t = time.monotonic()
            try:
                h.hub.request("GET", "/", timeout=30)
                latencies.append(time.monotonic() - t)
            except requests.RequestException:
                latencies.append(float("nan"))
            time.sleep(0.5)

    try:
        h.start()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(users) as pool:
            ready = list(pool.map(lambda n: form_spawn(h, n, profile), names))
        stop.set()
        sampler.join()
    finally:
        h.teardown()
        hubfixture.ENVS_DIR = old
        if cold:
            shutil.rmtree(envs, ignore_errors=True)
    api = [x for x in latencies if x == x]
    failed = sum(1 for x in ready if x != x)
    ready = [x for x in ready if x == x] or [float("nan")]
    return {"mode": "cold" if cold else "warm", "users": users, "profile": profile, "ready_s": ready,
            "failed": failed,
            "median_s": statistics.median(ready), "p95_s": pct(ready, 0.95), "max_s": max(ready),
            "api_median_ms": 1000 * statistics.median(api) if api else None,
            "api_p95_ms": 1000 * pct(api, 0.95) if api else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--profile", default="minimal")
    ap.add_argument("--modes", default="warm,cold", help="warm, cold or both (comma-separated)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hubfixture.prepare_environments([args.profile])
    results = [burst(args.users, args.profile, cold=(m == "cold")) for m in args.modes.split(",")]
    (out / "workshop_burst.json").write_text(json.dumps(results, indent=1))
    with open(out / "workshop_burst.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "user", "ready_s"])
        for r in results:
            for i, s in enumerate(r["ready_s"]):
                w.writerow([r["mode"], i, f"{s:.3f}"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs = sorted(r["ready_s"])
        ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post",
                label=f"{r['mode']}: median {r['median_s']:.1f}s, p95 {r['p95_s']:.1f}s")
    ax.set_xlabel("seconds from login form to ready server")
    ax.set_ylabel("share of participants")
    ax.set_title(f"{args.users} participants spawn {args.profile} at once")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "workshop_burst.png", dpi=120)
    for r in results:
        print(f"{r['mode']}: {r['users'] - r['failed']}/{r['users']} ready, "
              f"median {r['median_s']:.1f}s p95 {r['p95_s']:.1f}s max {r['max_s']:.1f}s; "
              f"hub API median {r['api_median_ms']:.0f}ms p95 {r['api_p95_ms']:.0f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
