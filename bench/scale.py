"""Scale harness: one hub with N users whose servers cost next to nothing (bench/scale_spawner.py: no process
per user, one shared stand-in answering the single-user API), JupyterHub settings as in production (the idle
culler service, activity reporting, metrics at /hub/metrics), and a realistic mix of API calls driven
concurrently from a thread pool:

  activity    POST /hub/api/users/<name>/activity  (the user's own token, as jupyterhub-singleuser does)
  status      GET  /hub/api/users/<name>
  list        GET  /hub/api/users?offset=&limit=100 (paginated, as the admin page and the culler page)
  server_api  GET  /user/<name>/api through the proxy (the user's token)
  metrics     GET  /hub/metrics                      (a Prometheus scrape)
  spawn       POST /hub/api/users/<name>/server until ready (progress stream)
  stop        DELETE /hub/api/users/<name>/server until gone

p50/p95/p99 per endpoint, at each --users level, side by side with plain JupyterHub (the same spawner, the same
proxy, the same mix) in the same run; rounds alternate between the two hubs so machine noise hits both.
The issue's target is 1,000 users: `--users 100,300,1000`.

    .venv/bin/python bench/scale.py [--users 100,300] [--rounds 3] [--seconds 10] [--threads 16]
                                    [--running 0.7] [--no-plain] [--out bench/results]

Writes scale.{csv,json,png} under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import jupyterhub  # noqa: E402
import requests  # noqa: E402

from esker.devhub import RunningHub, test_config  # noqa: E402
from esker.hubapi import Hub  # noqa: E402
from scale_spawner import SharedServer  # noqa: E402
from spawn_latency import PlainHub  # noqa: E402

TARGET = 1000
ENDPOINTS = ["activity", "status", "list", "server_api", "metrics", "spawn", "stop"]
WEIGHTS = [40, 20, 10, 10, 3, 4, 4]


def spawner_config(port: int, cull_every: int) -> str:
    """Appended to each hub's config: the null spawner, and the idle culler's period (production: 300 s)."""
    return f"""
import sys
sys.path.insert(0, {str(HERE)!r})
c.JupyterHub.spawner_class = "scale_spawner.NullSpawner"
c.NullSpawner.target_port = {port}
c.Spawner.http_timeout = 30
c.Spawner.start_timeout = 60
for _s in c.JupyterHub.services:
    if _s["name"] == "idle-culler":
        _s["command"] = [a.replace("--cull-every=300", "--cull-every={cull_every}") for a in _s["command"]]
"""


def plain_extra(port: int, cull_every: int) -> str:
    """Plain JupyterHub with what Esker's hub has in production: the idle culler, metrics for the scraper."""
    return spawner_config(port, cull_every) + f"""
c.JupyterHub.services.append({{"name": "idle-culler", "command": [{sys.executable!r}, "-m", "jupyterhub_idle_culler",
                               "--timeout=3600", "--cull-every=300"]}})
c.JupyterHub.load_roles.append({{"name": "idle-culler", "services": ["idle-culler"],
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]}})
c.JupyterHub.load_roles[0]["scopes"] += ["read:metrics", "tokens", "read:hub"]
for _s in c.JupyterHub.services:
    if _s["name"] == "idle-culler":
        _s["command"] = [a.replace("--cull-every=300", "--cull-every={cull_every}") for a in _s["command"]]
"""


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


class Population:
    """The users of one hub: tokens, who is running, who is being spawned or stopped."""

    def __init__(self, label: str, hub: Hub, url: str):
        self.label, self.hub, self.url = label, hub, url
        self.tokens: dict[str, str] = {}
        self.running: set[str] = set()
        self.stopped: set[str] = set()
        self.lock = threading.Lock()

    def grow(self, n: int, running_fraction: float, threads: int) -> None:
        new = [f"s{i:04d}" for i in range(len(self.tokens), n)]
        for i in range(0, len(new), 100):  # one POST per hundred users
            self.hub.request("POST", "/users", json={"usernames": new[i:i + 100]}).raise_for_status()
        with ThreadPoolExecutor(threads) as pool:
            for u, t in zip(new, pool.map(self.hub.user_token, new)):
                self.tokens[u] = t
        self.stopped.update(new)
        want = int(n * running_fraction) - len(self.running)
        todo = sorted(self.stopped)[:max(0, want)]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(self.hub.spawn, todo))
        self.running.update(todo)
        self.stopped.difference_update(todo)

    def take(self, which: set[str]) -> str | None:
        with self.lock:
            if not which:
                return None
            u = random.choice(tuple(which))
            which.discard(u)
            return u

    def any_running(self) -> str | None:
        with self.lock:
            return random.choice(tuple(self.running)) if self.running else None


def one_call(pop: Population, op: str, n: int) -> tuple[str, float, bool] | None:
    h = pop.hub
    t0 = time.monotonic()
    if op == "activity":
        u = pop.any_running()
        if u is None:
            return None
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        r = h.request("POST", f"/users/{u}/activity", token=pop.tokens[u],
                      json={"last_activity": now, "servers": {"": {"last_activity": now}}}, timeout=60)
        ok = r.status_code < 300 or (r.status_code in (400, 404) and u not in pop.running)  # stopped meanwhile
    elif op == "status":
        u = random.choice(tuple(pop.tokens))
        ok = h.request("GET", f"/users/{u}", timeout=60).status_code == 200
    elif op == "list":
        r = h.request("GET", f"/users?offset={random.randrange(0, max(1, n - 100) + 1)}&limit=100", timeout=60)
        ok = r.status_code == 200
    elif op == "server_api":
        u = pop.any_running()
        if u is None:
            return None
        r = requests.get(f"{pop.url}/user/{u}/api", headers={"Authorization": f"token {pop.tokens[u]}"}, timeout=60)
        ok = r.status_code == 200 or u not in pop.running
    elif op == "metrics":
        r = requests.get(f"{pop.url}/hub/metrics", headers={"Authorization": f"token {h.token}"}, timeout=60)
        ok = r.status_code == 200 and "jupyterhub_" in r.text
    elif op == "spawn":
        u = pop.take(pop.stopped)
        if u is None:
            return None
        try:
            h.spawn(u, timeout=120)
            ok = True
        except Exception:  # noqa: BLE001 - a failed spawn is a result too
            ok = False
        with pop.lock:
            (pop.running if ok else pop.stopped).add(u)
    elif op == "stop":
        u = pop.take(pop.running)
        if u is None:
            return None
        try:
            h.stop(u, timeout=120)
            ok = True
        except Exception:  # noqa: BLE001
            ok = False
        with pop.lock:
            (pop.stopped if ok else pop.running).add(u)
    else:
        raise ValueError(op)
    return op, time.monotonic() - t0, ok


def drive(pop: Population, n: int, seconds: float, threads: int) -> list[tuple[str, float, bool]]:
    deadline = time.monotonic() + seconds
    out: list[tuple[str, float, bool]] = []

    def worker():
        rng = random.Random()
        while time.monotonic() < deadline:
            op = rng.choices(ENDPOINTS, WEIGHTS)[0]
            try:
                got = one_call(pop, op, n)
            except requests.RequestException:
                got = (op, float("nan"), False)
            if got:
                out.append(got)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def summarise(rows: list[dict]) -> list[dict]:
    summary = []
    keys = sorted({(r["hub"], r["users"], r["endpoint"]) for r in rows}, key=lambda k: (k[1], ENDPOINTS.index(k[2]), k[0]))
    for hub, users, ep in keys:
        mine = [r for r in rows if (r["hub"], r["users"], r["endpoint"]) == (hub, users, ep)]
        good = [r["seconds"] for r in mine if r["ok"]]
        rounds = sorted({r["round"] for r in mine})
        round_p50 = [statistics.median(x) for x in
                     ([r["seconds"] for r in mine if r["ok"] and r["round"] == k] for k in rounds) if x]
        summary.append({"hub": hub, "users": users, "endpoint": ep, "n": len(mine), "errors": len(mine) - len(good),
                        "p50": pct(good, .5), "p95": pct(good, .95), "p99": pct(good, .99),
                        "min": min(good, default=float("nan")), "max": max(good, default=float("nan")),
                        "round_p50_min": min(round_p50, default=float("nan")),
                        "round_p50_max": max(round_p50, default=float("nan"))})
    return summary


def plot(summary: list[dict], levels: list[int], hubs: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(levels), figsize=(6 * len(levels), 4.5), squeeze=False)
    width = 0.8 / len(hubs)
    for ax, level in zip(axes[0], levels):
        for j, hub in enumerate(hubs):
            s = {x["endpoint"]: x for x in summary if x["hub"] == hub and x["users"] == level}
            xs = [i + (j - (len(hubs) - 1) / 2) * width for i in range(len(ENDPOINTS))]
            p50 = [s[e]["p50"] * 1000 if e in s else 0 for e in ENDPOINTS]
            p95 = [s[e]["p95"] * 1000 if e in s else 0 for e in ENDPOINTS]
            p99 = [s[e]["p99"] * 1000 if e in s else 0 for e in ENDPOINTS]
            ax.bar(xs, p95, width, alpha=0.35, color=f"C{j}")
            ax.bar(xs, p50, width, color=f"C{j}", label=f"{hub} p50 (pale: p95)")
            ax.scatter(xs, p99, marker="_", color="k", s=80, zorder=3, label="p99" if j == 0 else None)
        ax.set_yscale("log")
        ax.set_xticks(range(len(ENDPOINTS)), ENDPOINTS, rotation=30)
        ax.set_ylabel("ms")
        ax.set_title(f"{level} users")
        ax.legend(fontsize=8)
    fig.suptitle("Hub API latency under a mixed load, same run, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="100,300", help=f"user counts, a list (default 100,300; the issue's target "
                    f"is {TARGET}: --users 100,300,{TARGET})")
    ap.add_argument("--rounds", type=int, default=3, help="measuring rounds per level and hub, alternating (default 3)")
    ap.add_argument("--seconds", type=float, default=10, help="seconds of load per round (default 10)")
    ap.add_argument("--threads", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--running", type=float, default=0.7, help="fraction of users with a server (default 0.7)")
    ap.add_argument("--cull-every", type=int, default=30,
                    help="the idle culler's period in seconds (production: 300; shorter so passes fall in a round)")
    ap.add_argument("--no-plain", action="store_true", help="Esker's hub only (no plain JupyterHub beside it)")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for CSV/JSON/PNG")
    args = ap.parse_args()
    levels = sorted(int(x) for x in args.users.split(","))
    if TARGET not in levels:
        print(f"note: the issue's target is {TARGET} users (--users {args.users},{TARGET})", flush=True)
    os.makedirs(args.out, exist_ok=True)

    shared = SharedServer(jupyterhub.__version__)
    print(f"load before: {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)
    cfg = test_config("x-", "/tmp", spark={"enabled": False})
    esker = RunningHub(cfg=cfg, extra_config=spawner_config(shared.port, args.cull_every))
    plain = None
    rows: list[dict] = []
    try:
        esker.start()
        pops = [Population("esker", esker.hub, esker.url)]
        if not args.no_plain:
            plain = PlainHub("/bin/true")
            with open(Path(plain.dir, "jupyterhub_config.py"), "a") as f:
                f.write(plain_extra(shared.port, args.cull_every))
            plain.start()
            pops.append(Population("plain", plain.hub, f"http://127.0.0.1:{plain.port}"))
        for level in levels:
            for pop in pops:
                t0 = time.monotonic()
                pop.grow(level, args.running, args.threads)
                print(f"{pop.label}: {level} users, {len(pop.running)} running, set up in "
                      f"{time.monotonic() - t0:.1f}s", flush=True)
            for r in range(args.rounds):
                for pop in (pops if r % 2 == 0 else pops[::-1]):
                    got = drive(pop, level, args.seconds, args.threads)
                    rows += [{"hub": pop.label, "users": level, "round": r, "endpoint": op, "seconds": s, "ok": ok}
                             for op, s, ok in got]
                    print(f"  {pop.label:5s} {level:5d} users round {r}: {len(got)} calls "
                          f"({len(got) / args.seconds:.0f}/s), {sum(not g[2] for g in got)} failed", flush=True)
    finally:
        try:
            if plain:
                plain.stop()
                shutil.rmtree(plain.dir, ignore_errors=True)
        finally:
            esker.teardown()
            shared.close()
    print(f"load after: {os.getloadavg()}", flush=True)

    summary = summarise(rows)
    hubs = [p.label for p in pops]
    print(f"\n{'users':>5} {'endpoint':10s} {'hub':5s} {'n':>6} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
          f" {'min-max ms':>16} {'round p50 min-max':>18}")
    for s in summary:
        print(f"{s['users']:5d} {s['endpoint']:10s} {s['hub']:5s} {s['n']:6d} {s['errors']:4d} {s['p50'] * 1e3:8.1f} "
              f"{s['p95'] * 1e3:8.1f} {s['p99'] * 1e3:8.1f} {s['min'] * 1e3:7.1f}-{s['max'] * 1e3:<8.1f} "
              f"{s['round_p50_min'] * 1e3:8.1f}-{s['round_p50_max'] * 1e3:<8.1f}")
    out = Path(args.out)
    with open(out / "scale.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["hub", "users", "round", "endpoint", "seconds", "ok"])
        w.writeheader()
        w.writerows(rows)
    (out / "scale.json").write_text(json.dumps({"args": vars(args), "summary": summary}, indent=1))
    plot(summary, levels, hubs, out / "scale.png")
    print(f"\nwrote {out}/scale.csv, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
