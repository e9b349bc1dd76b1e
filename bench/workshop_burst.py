"""Workshop burst, side by side in one run: N participants (default 30) log in through the HTML login form at
once, on plain JupyterHub (SimpleLocalProcessSpawner, the same JupyterLab from the minimal environment, the same
configurable-http-proxy) spawning at login, and on Esker with the reservation's pre-start (a reservation of N seats
whose window opens a few minutes after it is made, so the esker-courses service starts the participants' servers
before they arrive). Per participant: seconds from the login form's POST until their JupyterLab answers (``/lab``
200 through their own browser session) and, on Esker, the course notebooks are in ``~/burst/`` (contents API).
Also the hub API's latency (every call made: a sampler at 20/s and the participants' polls) during each burst and
over its first minute, and how long Esker's pre-start took ahead of the window.

    .venv/bin/python bench/workshop_burst.py [--users 30] [--modes plain,prestart] [--out bench/results]

Modes: ``plain`` and ``prestart`` (the side by side; the ratio is printed when both run), and Esker spawning at
login without pre-start, ``warm`` (environment built beforehand) and ``cold`` (built during the burst).
Needs root (per-user accounts). Writes workshop_burst.{csv,json,png} under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from esker import devhub, resources  # noqa: E402
from esker.devhub import RunningHub  # noqa: E402
from esker.hubapi import Hub  # noqa: E402
from esker.system.envs import EnvironmentBuilder  # noqa: E402
from spawn_latency import PlainHub  # noqa: E402

COURSE = "burst"
NOTEBOOKS = {"01-welcome.ipynb", "02-first-model.ipynb"}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


class ApiClock:
    """Every hub API call timed (thread-safe), plus a sampler thread at ``rate`` per second."""

    def __init__(self, hub: Hub, users: list[str], rate: float = 20):
        self.hub, self.users, self.every = hub, users, 1 / rate
        self.ms: list[float] = []
        self.at: list[float] = []  # when each call began (monotonic)
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def call(self, method: str, path: str, **kw) -> requests.Response | None:
        t = time.monotonic()
        try:
            r = self.hub.request(method, path, timeout=60, **kw)
        except requests.RequestException:
            with self._lock:
                self.errors += 1
            return None
        with self._lock:
            self.ms.append(1000 * (time.monotonic() - t))
            self.at.append(t)
        return r

    def between(self, a: float, b: float) -> list[float]:
        with self._lock:
            return [ms for t, ms in zip(self.at, self.ms) if a <= t <= b]

    def _sample(self):
        while not self._stop.is_set():
            self.call("GET", random.choice(["/", f"/users/{random.choice(self.users)}"]))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def lab_ready(url: str, name: str, api: ApiClock, profile: str | None, course: bool, timeout: float = 900) -> float:
    """One participant: the login form, then (plain, or Esker without a running server) the spawn, then wait for
    their JupyterLab; seconds from the login POST, or NaN if it never came (counted, not hidden)."""
    hub = Hub(url, api.hub.token)
    t0 = time.monotonic()
    s, landed = hub.form_login(name, next_url="/hub/spawn")
    if profile and "/hub/spawn" in landed.url and 'name="profile"' in landed.text:  # Esker's form: no server yet
        s.post(f"{url}/hub/spawn", data={"profile": profile, "_xsrf": s.cookies.get("_xsrf", "")},
               allow_redirects=False, timeout=60)
    while time.monotonic() - t0 < timeout:
        if not landed.url.startswith(f"{url}/user/{name}/"):
            r = api.call("GET", f"/users/{name}")
            srv = ((r.json() if r is not None and r.status_code == 200 else {}).get("servers") or {}).get("")
            if not (srv and srv.get("ready")):
                if srv is None and time.monotonic() - t0 > 30:
                    return float("nan")  # the spawn failed (or never began)
                time.sleep(0.25)
                continue
        lab = s.get(f"{url}/user/{name}/lab", timeout=120)
        if lab.status_code != 200 or not lab.url.startswith(f"{url}/user/{name}/"):
            landed = lab
            time.sleep(0.25)
            continue
        if course:
            nb = s.get(f"{url}/user/{name}/api/contents/{COURSE}", timeout=60)
            if nb.status_code != 200 or not NOTEBOOKS <= {f["name"] for f in nb.json().get("content", ())}:
                time.sleep(0.25)
                continue
        return time.monotonic() - t0
    return float("nan")


def login_burst(url: str, hub: Hub, names: list[str], profile: str | None, course: bool,
                minute: float = 60) -> dict:
    """All ``names`` log in at once. The hub API is timed during the burst (until the last participant is in) and
    over the burst's first ``minute`` seconds (the sampler goes on that long: the window's first minute)."""
    with ApiClock(hub, names) as api:
        t0 = time.monotonic()
        with ThreadPoolExecutor(len(names)) as pool:
            ready = list(pool.map(lambda n: lab_ready(url, n, api, profile, course), names))
        wall = time.monotonic() - t0
        time.sleep(max(0.0, t0 + minute - time.monotonic()))
    ok = [x for x in ready if x == x]
    during, first = api.between(t0, t0 + wall), api.between(t0, t0 + minute)
    return {"users": len(names), "ready_s": ready, "failed": len(ready) - len(ok), "burst_wall_s": wall,
            "median_s": statistics.median(ok) if ok else float("nan"), "min_s": min(ok, default=float("nan")),
            "p95_s": pct(ok, 0.95), "max_s": max(ok, default=float("nan")),
            "api_calls": len(during), "api_errors": api.errors,
            "api_median_ms": statistics.median(during) if during else None,
            "api_p95_ms": pct(during, 0.95) if during else None, "api_p99_ms": pct(during, 0.99) if during else None,
            "api_max_ms": max(during) if during else None,
            "api_first_minute_calls": len(first), "api_first_minute_p99_ms": pct(first, 0.99) if first else None,
            "api_first_minute_max_ms": max(first) if first else None}


def singleuser() -> str:
    env = EnvironmentBuilder(devhub.ENVS_DIR, resources.images_dir()).get("minimal")
    return str(env.path / "bin" / "jupyterhub-singleuser")


def plain_run(users: int) -> dict:
    names = [f"pl{i:02d}" for i in range(users)]
    plain = PlainHub(singleuser())
    try:
        plain.start()
        out = login_burst(f"http://127.0.0.1:{plain.port}", plain.hub, names, None, course=False)
    finally:
        plain.stop()
        shutil.rmtree(plain.dir, ignore_errors=True)
    return {"mode": "plain", **out}


class BurstHub(RunningHub):
    def env(self) -> dict:
        return {**super().env(), "ESKER_COURSES_PRESTART_EVERY": "2", "ESKER_COURSES_PRESTART_BACKOFF": "5"}


def esker_hub(users: int, profile: str, lead: int) -> tuple[BurstHub, list[str]]:
    h = BurstHub()
    names = [f"wb{i:02d}" for i in range(users)]
    h.cfg["courses"] = [{"name": COURSE, "group": COURSE, "participants": names,
                         "content": {"path": "courses/intro-ml"}, "profiles": [profile], "prestart_lead": lead}]
    h.cfg["hub"]["concurrent_spawn_limit"] = max(users, 1)
    h.cfg["spark"] = {**h.cfg.get("spark", {}), "enabled": False}
    h.cfg["capacity"] = {"cpu": 4096, "memory": "64T", "gpus": 0, "scratch": "1P"}  # admission is not measured
    Path(h.config_file).write_text(yaml.safe_dump(h.cfg))
    return h, names


def prestart_run(users: int, profile: str, window_in: float) -> dict:
    """The reservation opens ``window_in`` seconds after it is made; the service pre-starts (lead 900 s > that),
    and the participants log in once all are running or the window opens, whichever is first."""
    h, names = esker_hub(users, profile, lead=900)
    try:
        h.start()
        svc = f"{h.url}/services/esker-courses/api"
        auth = {"Authorization": f"token {h.token}"}
        now = datetime.now(timezone.utc)
        opens = time.monotonic() + window_in
        r = requests.post(f"{svc}/reservations", headers=auth, timeout=120, json={
            "course": COURSE, "profile": profile, "seats": users,
            "start": (now + timedelta(seconds=window_in)).isoformat(), "end": (now + timedelta(hours=2)).isoformat()})
        r.raise_for_status()
        t0 = time.monotonic()
        p = {}
        while time.monotonic() < opens:
            p = (requests.get(f"{svc}/reservations", headers=auth, timeout=60).json()[0].get("prestart") or {})
            if len(p.get("running", ())) >= users:
                break
            time.sleep(1)
        prestart_s = time.monotonic() - t0
        print(f"  pre-start: {len(p.get('running', ()))}/{users} running after {prestart_s:.0f}s "
              f"({len(p.get('failed', ()))} failed); the burst begins", flush=True)
        out = login_burst(h.url, h.hub, names, profile, course=True)
        out.update(prestart_s=prestart_s, prestarted=len(p.get("running", ())), prestart_failed=p.get("failed", []))
    finally:
        h.teardown()
    return {"mode": "prestart", **out}


def spawn_run(users: int, profile: str, cold: bool) -> dict:
    """Esker without pre-start: participants spawn at login (the environment cache warm, or cold)."""
    envs = tempfile.mkdtemp(prefix="esker-bench-envs-") if cold else devhub.ENVS_DIR
    old, devhub.ENVS_DIR = devhub.ENVS_DIR, envs
    try:
        h, names = esker_hub(users, profile, lead=0)
        try:
            h.start()
            out = login_burst(h.url, h.hub, names, profile, course=True)
        finally:
            h.teardown()
    finally:
        devhub.ENVS_DIR = old
        if cold:
            shutil.rmtree(envs, ignore_errors=True)
    return {"mode": "cold" if cold else "warm", **out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--profile", default="minimal")
    ap.add_argument("--modes", default="plain,prestart", help="plain, prestart, warm, cold (comma-separated)")
    ap.add_argument("--window-in", type=float, default=240,
                    help="seconds from making the reservation to its window's start (prestart mode)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    devhub.prepare_environments([args.profile])
    results = []
    for m in args.modes.split(","):
        print(f"{m}: {args.users} participants", flush=True)
        if m == "plain":
            results.append(plain_run(args.users))
        elif m == "prestart":
            results.append(prestart_run(args.users, args.profile, args.window_in))
        else:
            results.append(spawn_run(args.users, args.profile, cold=(m == "cold")))
        r = results[-1]
        print(f"  {r['users'] - r['failed']}/{r['users']} ready: min {r['min_s']:.2f}s median {r['median_s']:.2f}s "
              f"p95 {r['p95_s']:.2f}s max {r['max_s']:.2f}s; hub API ({r['api_calls']} calls) median "
              f"{r['api_median_ms']:.0f}ms p99 {r['api_p99_ms']:.0f}ms max {r['api_max_ms']:.0f}ms; first minute "
              f"({r['api_first_minute_calls']} calls) p99 {r['api_first_minute_p99_ms']:.0f}ms", flush=True)
    by = {r["mode"]: r for r in results}
    summary = {}
    if "plain" in by and "prestart" in by:
        summary = {"ratio_median": by["prestart"]["median_s"] / by["plain"]["median_s"],
                   "ratio_max": by["prestart"]["max_s"] / by["plain"]["max_s"],
                   "goal_ratio_median": 0.5, "goal_api_p99_ms": 250}
    (out / "workshop_burst.json").write_text(json.dumps({"summary": summary, "results": results}, indent=1))
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
        xs = sorted(x for x in r["ready_s"] if x == x)
        if xs:
            ax.step(xs, [(i + 1) / r["users"] for i in range(len(xs))], where="post",
                    label=f"{r['mode']}: median {r['median_s']:.1f}s, max {r['max_s']:.1f}s")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= 1.5 * max(
        [x for r in results for x in r["ready_s"] if x == x] or [1])])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("seconds from the login form to a running JupyterLab (log)")
    ax.set_ylabel("share of participants")
    title = f"{args.users} participants log in at once"
    if summary:
        title += f": Esker pre-started / plain median = {summary['ratio_median']:.2f}"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "workshop_burst.png", dpi=120)
    if summary:
        print(f"\nEsker with pre-start / plain JupyterHub, median: {summary['ratio_median']:.3f}x (goal <= 0.5x); "
              f"max: {summary['ratio_max']:.3f}x; hub API p99 during the bursts: plain "
              f"{by['plain']['api_p99_ms']:.0f} ms, Esker {by['prestart']['api_p99_ms']:.0f} ms (goal < 250 ms); "
              f"over the first minute: plain {by['plain']['api_first_minute_p99_ms']:.0f} ms, Esker "
              f"{by['prestart']['api_first_minute_p99_ms']:.0f} ms")
    print(f"wrote {out}/workshop_burst.csv, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
