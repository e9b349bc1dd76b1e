"""Scale harness: one hub with N active users whose servers cost next to nothing (bench/scale_spawner.py: no
process per user, one shared stand-in answering every /user/<name>/ path), JupyterHub as in production (the idle
culler service, Prometheus scrapes of /hub/metrics, activity reports from every server), side by side with plain
JupyterHub (the same spawner, proxy and load) in the same run.

The load is **open-loop**: each round's requests are scheduled in advance (bench/scale_load.py: Poisson arrivals
for the many independent clients, a clock for Prometheus and the culler) at the rates production clients run at
for N users (activity every 300 s per server, the single-user server's token check every 300 s, a page opened
every 300 s, a status call per user per 600 s, a spawn and a stop per server per hour, a scrape every 15 s,
a culler pass walking every ready server in pages of 50), and each call's latency is measured from its scheduled
send time, so a hub that falls behind shows it. ``--multipliers 1,3,5`` runs the same mix at 1x (production)
and 3x, 5x (headroom: where the knee is). ``--closed-loop`` keeps the old saturation mode (a pool of clients
firing as fast as they can) for throughput figures.

  activity     POST /hub/api/users/<name>/activity   (the user's own token, as jupyterhub-singleuser does)
  whoami       GET  /hub/api/user                    (the user's token: the single-user server's HubAuth check)
  status       GET  /hub/api/users/<name>
  list         GET  /hub/api/users?state=ready&offset=..&limit=50: one page of a culler pass (cull_pass: all)
  metrics      GET  /hub/metrics                     (a Prometheus scrape)
  spawn_post   POST /hub/api/users/<name>/server     (spawn: until the progress stream says ready)
  stop_delete  DELETE /hub/api/users/<name>/server   (stop: until the server is gone)
  page         GET  /user/<name>/ through the proxy   (the stand-in answers; no hub)

"hub api" is every single hub API request above pooled (the issue's p99 goal); spawn, stop and cull_pass are
flows of several requests. The hub's own log gives each request's service time (without the wait in front of
the hub's loop): scale-<hub>-<users>-server.json. ``--profile`` adds a cProfile of each hub's event loop during
its first 1x round per level (scale-<hub>-<users>.prof; SIGUSR2 toggles it, see profile_config()).

    .venv/bin/python bench/scale.py [--users 100,300,1000] [--multipliers 1,3,5] [--rounds 3] [--seconds 60]
                                    [--no-plain] [--profile] [--closed-loop] [--out bench/results]

Writes scale.{csv,json,png} under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import signal
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
from scale_load import (  # noqa: E402
    HUB_API, Production, cull_pages, hub_log_times, pct, rates, schedule, summarise,
)
from scale_spawner import SharedServer  # noqa: E402
from spawn_latency import PlainHub  # noqa: E402

TARGET = 1000
GOAL_P99 = 0.250
COURSE, INSTRUCTORS = "lecture", ("ta0", "ta1")
# The closed-loop mode's weights (the previous harness's mix, for throughput at saturation)
CLOSED_MIX = {"activity": 40, "whoami": 10, "status": 20, "list": 10, "page": 10, "metrics": 3, "spawn": 4, "stop": 4}


def hub_settings(port: int, cull_every: int, sweep_every: int) -> str:
    """Appended to each hub's config: the null spawner; the culler's and the hub's own periodic sweeps."""
    return f"""
import sys
sys.path.insert(0, {str(HERE)!r})
c.JupyterHub.spawner_class = "scale_spawner.NullSpawner"
c.NullSpawner.target_port = {port}
c.Spawner.http_timeout = 30
c.Spawner.start_timeout = 60
# The hub's own sweep of the proxy's routes into last_activity (production: 300 s); shorter so that each
# round has one (conservative).
c.JupyterHub.last_activity_interval = {sweep_every}
for _s in c.JupyterHub.services:
    if _s["name"] == "idle-culler":
        _s["command"] = [a.replace("--cull-every=300", "--cull-every={cull_every}") for a in _s["command"]]
"""


def plain_extra(port: int, cull_every: int, sweep_every: int) -> str:
    """Plain JupyterHub with what Esker's hub has in production: the idle culler, metrics for the scraper."""
    return f"""
c.JupyterHub.services.append({{"name": "idle-culler", "command": [{sys.executable!r}, "-m", "jupyterhub_idle_culler",
                               "--timeout=3600", "--cull-every=300"]}})
c.JupyterHub.load_roles.append({{"name": "idle-culler", "services": ["idle-culler"],
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]}})
c.JupyterHub.load_roles[0]["scopes"] += ["read:metrics", "tokens", "read:hub", "admin:groups"]
""" + hub_settings(port, cull_every, sweep_every)


def profile_config(path: str) -> str:
    """cProfile of the hub's main thread (its event loop), toggled by SIGUSR2: on, then off and dumped to path."""
    return f"""
import cProfile as _cp, signal as _sig
_prof, _prof_on = _cp.Profile(), [False]
def _prof_toggle(signum, frame):
    if _prof_on[0]:
        _prof.disable(); _prof.dump_stats({path!r}); _prof_on[0] = False
    else:
        _prof.enable(); _prof_on[0] = True
_sig.signal(_sig.SIGUSR2, _prof_toggle)
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Population:
    """The users of one hub: tokens, who is running, who is idle (a spare pool that spawns take from)."""

    def __init__(self, label: str, hub: Hub, url: str, log_path: str, pid: int):
        self.label, self.hub, self.url, self.log_path, self.pid = label, hub, url, log_path, pid
        self.tokens: dict[str, str] = {}
        self.running: set[str] = set()
        self.stopped: set[str] = set()
        self.lock = threading.Lock()
        self.local = threading.local()

    def session(self) -> requests.Session:
        s = getattr(self.local, "s", None)
        if s is None:
            s = self.local.s = requests.Session()
        return s

    def mint(self, name: str) -> str:
        r = self.hub.request("POST", f"/users/{name}/tokens", json={"note": "scale", "expires_in": 12 * 3600})
        r.raise_for_status()
        return r.json()["token"]

    def grow(self, running: int, spare: int, threads: int = 16, group: str | None = None) -> None:
        """Users up to running + spare (members of ``group``), a token each, and servers for ``running`` of them."""
        n = running + spare
        new = [f"s{i:04d}" for i in range(len(self.tokens), n)]
        if group and self.hub.request("GET", f"/groups/{group}").status_code == 404:
            self.hub.request("POST", f"/groups/{group}").raise_for_status()
        for i in range(0, len(new), 100):  # one POST per hundred users
            self.hub.request("POST", "/users", json={"usernames": new[i:i + 100]}).raise_for_status()
            if group:
                self.hub.request("POST", f"/groups/{group}/users", json={"users": new[i:i + 100]}).raise_for_status()
        with ThreadPoolExecutor(threads) as pool:
            for u, t in zip(new, pool.map(self.mint, new)):
                self.tokens[u] = t
        self.stopped.update(new)
        todo = sorted(self.stopped)[:max(0, running - len(self.running))]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda u: self.hub.spawn(u, timeout=120), todo))
        self.running.update(todo)
        self.stopped.difference_update(todo)

    def wait_granted(self, offset: int, quiet: float = 15, timeout: float = 900) -> tuple[float, int]:
        """After an enrolment (users added to the course group at ``offset`` of the hub's log): seconds until
        the courses service's access pass has granted the new participants' shares (the log shows POST
        /hub/api/shares/ and then none for ``quiet`` seconds), and how many it granted."""
        t0 = time.monotonic()
        n, last = 0, None
        while time.monotonic() - t0 < timeout:
            size = self.log_offset()
            got = sum("POST /hub/api/shares/" in line for line in self.log_since(offset))
            offset = size
            if got:
                n, last = n + got, time.monotonic()
            elif last is not None and time.monotonic() - last >= quiet:
                return last - t0, n
            time.sleep(1)
        return float("nan"), n

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

    def log_offset(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset: int) -> list[str]:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()


Row = tuple[str, float, bool]  # endpoint, seconds from the scheduled send time, ok


def one_call(pop: Population, op: str, due: float) -> list[Row]:
    """Run ``op``, due at ``due`` (time.monotonic()); each row's seconds are counted from when it was due."""
    h, s = pop.hub, pop.session()
    api = f"{pop.url}/hub/api"

    def auth(token=None):
        return {"Authorization": f"token {token or h.token}"}

    if op in ("activity", "whoami", "page"):
        u = pop.any_running()
        if u is None:
            return []
        tok = pop.tokens[u]
        if op == "activity":
            now = now_iso()
            r = s.post(f"{api}/users/{u}/activity", headers=auth(tok), timeout=60,
                       json={"last_activity": now, "servers": {"": {"last_activity": now}}})
            ok = r.status_code < 300 or u not in pop.running  # stopped meanwhile: 400/404 is right
        elif op == "whoami":
            r = s.get(f"{api}/user", headers=auth(tok), timeout=60)
            ok = r.status_code == 200
        else:
            r = s.get(f"{pop.url}/user/{u}/", headers=auth(tok), timeout=60, allow_redirects=False)
            ok = r.status_code == 200 or u not in pop.running
        return [(op, time.monotonic() - due, ok)]
    if op == "status":
        u = random.choice(tuple(pop.tokens))
        r = s.get(f"{api}/users/{u}", headers=auth(), timeout=60)
        return [(op, time.monotonic() - due, r.status_code == 200)]
    if op == "metrics":
        r = s.get(f"{pop.url}/hub/metrics", headers=auth(), timeout=60)
        return [(op, time.monotonic() - due, r.status_code == 200 and "jupyterhub_" in r.text)]
    if op in ("cull", "list"):  # a culler pass: every ready server, page after page (following "next")
        rows: list[Row] = []
        offset, sent = 0, due
        while True:
            r = s.get(f"{api}/users", params={"state": "ready", "offset": offset, "limit": Production.cull_page},
                      headers={**auth(), "Accept": "application/jupyterhub-pagination+json"}, timeout=60)
            t = time.monotonic()
            ok = r.status_code == 200
            rows.append(("list", t - sent, ok))
            nxt = (r.json().get("_pagination") or {}).get("next") if ok else None
            if not nxt or op == "list":
                break
            offset, sent = nxt["offset"], t
        if op == "cull":
            rows.append(("cull_pass", time.monotonic() - due, all(x[2] for x in rows)))
        return rows
    if op == "spawn":
        u = pop.take(pop.stopped)
        if u is None:
            return []
        ok, post = False, float("nan")
        try:
            started = time.monotonic()
            model = h.spawn(u, timeout=120)
            post, ok = started - due + model["post_seconds"], True
        except Exception:  # noqa: BLE001 - a failed spawn is a result too
            pass
        with pop.lock:
            (pop.running if ok else pop.stopped).add(u)
        return [("spawn_post", post, ok), ("spawn", time.monotonic() - due, ok)]
    if op == "stop":
        u = pop.take(pop.running)
        if u is None:
            return []
        r = s.delete(f"{api}/users/{u}/server", headers=auth(), timeout=60)
        rows = [("stop_delete", time.monotonic() - due, r.status_code in (202, 204))]
        ok, deadline = False, time.monotonic() + 120
        while time.monotonic() < deadline:  # as a browser's or the culler's client does: until it is gone
            if "" not in s.get(f"{api}/users/{u}", headers=auth(), timeout=60).json().get("servers", {}):
                ok = True
                break
            time.sleep(0.3)
        with pop.lock:
            (pop.stopped if ok else pop.running).add(u)
        return rows + [("stop", time.monotonic() - due, ok)]
    raise ValueError(op)


def drive_open(pop: Population, sched: list[tuple[float, str]], workers: int = 256) -> tuple[list[Row], list[float]]:
    """Send each scheduled call at its time from a pool big enough that the client is not the queue; returns the
    rows and each call's start lag (how late the client itself was: should stay near 0)."""
    rows: list[Row] = []
    lags: list[float] = []
    lock = threading.Lock()
    t0 = time.monotonic() + 0.2

    def run(op, due):
        lag = time.monotonic() - due
        try:
            got = one_call(pop, op, due)
        except requests.RequestException:
            got = [(op if op not in ("cull",) else "list", time.monotonic() - due, False)]
        with lock:
            rows.extend(got)
            lags.append(lag)

    with ThreadPoolExecutor(workers) as pool:
        for t, op in sched:
            delay = t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(run, op, t0 + t)
    return rows, lags


def drive_closed(pop: Population, seconds: float, threads: int) -> tuple[list[Row], list[float]]:
    """The saturation mode: ``threads`` clients, each sending its next call as soon as the last one answered."""
    deadline = time.monotonic() + seconds
    rows: list[Row] = []
    ops, weights = list(CLOSED_MIX), list(CLOSED_MIX.values())

    def worker():
        rng = random.Random()
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            try:
                rows.extend(one_call(pop, op, time.monotonic()))
            except requests.RequestException:
                rows.append((op, float("nan"), False))

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return rows, []


def who(user: str) -> str:
    return "user" if user[:1] == "s" and user[1:].isdigit() else user


def server_side(lines: list[str]) -> list[dict]:
    """The hub log's service times per endpoint pattern and caller kind (user, a service's name)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for ep, user, ms in hub_log_times(lines):
        groups.setdefault((ep, who(user)), []).append(ms)
    return sorted(({"endpoint": ep, "who": w, "n": len(v), "p50_ms": pct(v, .5), "p99_ms": pct(v, .99),
                    "max_ms": max(v), "total_ms": sum(v)} for (ep, w), v in groups.items()),
                  key=lambda d: -d["total_ms"])


def plot(summary: list[dict], levels: list[int], hubs: list[str], mult: float, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    eps = ["hub api", *HUB_API, "page", "spawn", "stop", "cull_pass"]
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(6 * (len(levels) + 1), 4.8), squeeze=False)
    width = 0.8 / len(hubs)
    for ax, level in zip(axes[0], levels):
        for j, hub in enumerate(hubs):
            s = {x["endpoint"]: x for x in summary if x["hub"] == hub and x["users"] == level and x["multiplier"] == mult}
            xs = [i + (j - (len(hubs) - 1) / 2) * width for i in range(len(eps))]
            get = lambda q: [s[e][q] * 1000 if e in s else float("nan") for e in eps]  # noqa: E731
            ax.bar(xs, get("p95"), width, alpha=0.35, color=f"C{j}")
            ax.bar(xs, get("p50"), width, color=f"C{j}", label=f"{hub} p50 (pale: p95)")
            ax.scatter(xs, get("p99"), marker="_", color="k", s=80, zorder=3, label="p99" if j == 0 else None)
        ax.axhline(GOAL_P99 * 1000, color="r", lw=0.8, ls="--", label="250 ms")
        ax.set_yscale("log")
        ax.set_xticks(range(len(eps)), eps, rotation=40, ha="right")
        ax.set_ylabel("ms (from the scheduled send time)")
        ax.set_title(f"{level} users, {mult:g}x the production rate")
        ax.legend(fontsize=7)
    ax = axes[0][-1]  # growth: the hub API p99 per level and multiplier
    mults = sorted({x["multiplier"] for x in summary})
    for j, hub in enumerate(hubs):
        for k, m in enumerate(mults):
            pts = [(x["users"], x["p99"] * 1000) for x in summary
                   if x["hub"] == hub and x["multiplier"] == m and x["endpoint"] == "hub api"]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", color=f"C{j}", ls=["-", "--", ":", "-."][k % 4],
                        label=f"{hub} {m:g}x")
    ax.axhline(GOAL_P99 * 1000, color="r", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("users")
    ax.set_ylabel("hub API p99, ms")
    ax.set_title("growth")
    ax.legend(fontsize=7)
    fig.suptitle("Hub API latency, open-loop production mix, same run, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="100,300,1000", help="active users (servers running), a list")
    ap.add_argument("--multipliers", default="1,3,5", help="rate multipliers of the production mix (default 1,3,5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds at 1x per level and hub, alternating (default 3)")
    ap.add_argument("--headroom-rounds", type=int, default=1, help="rounds at each multiplier above 1 (default 1)")
    ap.add_argument("--seconds", type=float, default=60, help="seconds of load per round (default 60)")
    ap.add_argument("--spare", type=float, default=0.1, help="idle users beside the active ones, that spawns take "
                    "(a fraction of the level; default 0.1)")
    ap.add_argument("--cull-every", type=int, default=300, help="the culler service's period (production: 300)")
    ap.add_argument("--sweep-every", type=int, default=60, help="JupyterHub.last_activity_interval (production "
                    "300; default 60 so that each round has one)")
    ap.add_argument("--no-course", action="store_true", help="no course (default: one lecture with every user, "
                    "two instructors: the courses service's culler and access passes run as for a real lecture)")
    ap.add_argument("--access-full-every", type=int, default=1, help="ESKER_COURSES_ACCESS_FULL_EVERY for the "
                    "bench (production 10: every tenth 60-s pass; default 1 so that each round has one)")
    ap.add_argument("--closed-loop", action="store_true", help="saturation mode: --threads clients back to back")
    ap.add_argument("--threads", type=int, default=16, help="clients in --closed-loop mode (default 16)")
    ap.add_argument("--no-plain", action="store_true", help="Esker's hub only (no plain JupyterHub beside it)")
    ap.add_argument("--profile", action="store_true", help="cProfile each hub's loop in its first 1x round")
    ap.add_argument("--seed", type=int, default=15, help="the schedules' random seed (same schedule for both hubs)")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for CSV/JSON/PNG")
    args = ap.parse_args()
    levels = sorted(int(x) for x in args.users.split(","))
    mults = sorted(float(x) for x in args.multipliers.split(","))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    shared = SharedServer(jupyterhub.__version__)
    load_before = os.getloadavg()
    print(f"load before: {load_before}; {os.cpu_count()} CPUs", flush=True)
    overrides = {"spark": {"enabled": False}}
    if not args.no_course:  # a lecture: every user a participant, two instructors reaching their servers
        overrides["courses"] = [{"name": COURSE, "group": COURSE, "instructors": list(INSTRUCTORS), "idle_timeout": 3600}]
        os.environ["ESKER_COURSES_ACCESS_FULL_EVERY"] = str(args.access_full_every)
    cfg = test_config("x-", "/tmp", **overrides)
    extra = hub_settings(shared.port, args.cull_every, args.sweep_every)
    if args.profile:
        extra += profile_config(str(out / "scale-esker.prof"))
    esker = RunningHub(cfg=cfg, extra_config=extra)
    plain = None
    rows: list[dict] = []
    pops: list[Population] = []
    lags: dict = {}
    enrolment: dict = {}
    server: dict = {}
    loads = {"before": load_before}
    try:
        esker.start()
        pops = [Population("esker", esker.hub, esker.url, esker.log_path, esker.proc.pid)]
        if not args.no_plain:
            # its folder beside the results, not /tmp/plain-hub-*: other benchmarks' clean-ups must not take it
            plain = PlainHub("/bin/true", parent=str(out))
            with open(Path(plain.dir, "jupyterhub_config.py"), "a") as f:
                f.write(plain_extra(shared.port, args.cull_every, args.sweep_every))
                if args.profile:
                    f.write(profile_config(str(out / "scale-plain.prof")))
            try:
                plain.start()
            except Exception:
                shutil.copyfile(Path(plain.dir, "hub.log"), out / "scale-plain-hub.log")
                raise
            pops.append(Population("plain", plain.hub, f"http://127.0.0.1:{plain.port}",
                                   str(Path(plain.dir, "hub.log")), plain.proc.pid))
        for level in levels:
            spare = max(10, math.ceil(level * args.spare))
            for pop in pops:
                t0, mark = time.monotonic(), pop.log_offset()
                pop.grow(level, spare, group=None if args.no_course else COURSE)
                print(f"{pop.label}: {level} running + {len(pop.stopped)} idle users, set up in "
                      f"{time.monotonic() - t0:.1f}s", flush=True)
                if pop.label == "esker" and not args.no_course:
                    took, n = pop.wait_granted(mark)
                    enrolment[str(level)] = {"seconds_after_setup": took, "shares_granted": n}
                    print(f"{pop.label}: the courses service granted {n} shares (participants x instructors) "
                          f"until {took:.0f}s after the set-up", flush=True)
            offsets = {p.label: p.log_offset() for p in pops}
            plan = [(m, r) for m in mults for r in range(args.rounds if m == 1 else args.headroom_rounds)]
            if args.closed_loop:
                plan = [(0.0, r) for r in range(args.rounds)]
            for i, (m, r) in enumerate(plan):
                rng = random.Random(f"{args.seed}-{level}-{m}-{r}")
                sched = schedule(level, level, args.seconds, rng, multiplier=m) if m else []
                for pop in (pops if i % 2 == 0 else pops[::-1]):
                    profiling = args.profile and m == 1 and r == 0
                    if profiling:
                        os.kill(pop.pid, signal.SIGUSR2)
                    started = time.monotonic()
                    if args.closed_loop:
                        got, lag = drive_closed(pop, args.seconds, args.threads)
                    else:
                        got, lag = drive_open(pop, sched)
                    took = time.monotonic() - started
                    if profiling:
                        os.kill(pop.pid, signal.SIGUSR2)
                        time.sleep(1)
                        p = out / f"scale-{pop.label}.prof"
                        if p.exists():
                            p.rename(out / f"scale-{pop.label}-{level}.prof")
                    rows += [{"hub": pop.label, "users": level, "multiplier": m, "round": r, "endpoint": op,
                              "seconds": sec, "ok": ok} for op, sec, ok in got]
                    lags.setdefault(f"{pop.label}-{level}-{m:g}", []).extend(lag)
                    api = [sec for op, sec, ok in got if ok and op in HUB_API]
                    print(f"  {pop.label:5s} {level:5d} users {m:g}x round {r}: {len(got)} calls in {took:.0f}s "
                          f"({len(got) / took:.1f}/s), {sum(not g[2] for g in got)} failed, hub api p50 "
                          f"{pct(api, .5) * 1e3:.0f} ms p99 {pct(api, .99) * 1e3:.0f} ms, client lag p99 "
                          f"{pct(lag, .99) * 1e3:.0f} ms, load {os.getloadavg()[0]:.2f}", flush=True)
            for pop in pops:
                try:
                    server[f"{pop.label}-{level}"] = server_side(pop.log_since(offsets[pop.label]))
                except OSError as e:
                    print(f"  no log of {pop.label}: {e}", flush=True)
            loads[str(level)] = os.getloadavg()
    finally:
        for pop in pops:  # the hubs' logs (every request's time) beside the figures
            try:
                shutil.copyfile(pop.log_path, out / f"scale-{pop.label}-hub.log")
            except OSError as e:
                print(f"  no log of {pop.label}: {e}", flush=True)
        try:
            if plain:
                plain.stop()
                shutil.rmtree(plain.dir, ignore_errors=True)
        finally:
            esker.teardown()
            shared.close()
    loads["after"] = os.getloadavg()
    print(f"load after: {loads['after']}", flush=True)

    summary = summarise(rows)
    hubs = [p.label for p in pops]
    print(f"\n{'users':>5} {'x':>3} {'endpoint':11s} {'hub':5s} {'n':>6} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'min-max ms':>16} {'round p99 min-max':>18}")
    for s in summary:
        print(f"{s['users']:5d} {s['multiplier']:3g} {s['endpoint']:11s} {s['hub']:5s} {s['n']:6d} {s['errors']:4d} "
              f"{s['p50'] * 1e3:8.1f} {s['p95'] * 1e3:8.1f} {s['p99'] * 1e3:8.1f} "
              f"{s['min'] * 1e3:7.1f}-{s['max'] * 1e3:<8.1f} {s['round_p99_min'] * 1e3:8.1f}-{s['round_p99_max'] * 1e3:<8.1f}")
    with open(out / "scale.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["hub", "users", "multiplier", "round", "endpoint", "seconds", "ok"])
        w.writeheader()
        w.writerows(rows)
    (out / "scale.json").write_text(json.dumps({
        "args": vars(args), "loadavg": loads, "cpus": os.cpu_count(), "jupyterhub": jupyterhub.__version__,
        "rates_per_s": {str(n): rates(n, n) for n in levels}, "cull_pages": {str(n): cull_pages(n) for n in levels},
        "client_lag_p99_s": {k: pct(v, .99) for k, v in lags.items()}, "enrolment_shares_s": enrolment,
        "summary": summary}, indent=1))
    for key, table in server.items():
        (out / f"scale-{key}-server.json").write_text(json.dumps(table, indent=1))
    plot(summary, levels, hubs, 1.0 if 1.0 in mults and not args.closed_loop else summary[0]["multiplier"],
         out / "scale.png")
    print(f"\nwrote {out}/scale.csv, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
