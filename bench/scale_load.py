"""Pure helpers for bench/scale.py: the request rates a hub sees in production, derived from the user count and
the intervals its clients run at, the open-loop arrival schedule built from them, the hub log's per-request
times, and the percentile summaries. No JupyterHub import, no network: tests/unit/test_bench_scale.py tests them.

Where each rate comes from (per running server unless said otherwise; ``Production``'s fields):

  activity     jupyterhub-singleuser posts its activity every JUPYTERHUB_ACTIVITY_INTERVAL (300 s)
  whoami       the single-user server's HubOAuth cache keeps a token's identity for cache_max_age (300 s),
               then asks GET /hub/api/user again: one call per server per 300 s for its user's browser
  page         the user's browser opens /user/<name>/... (a new tab, a notebook) through the proxy; assumed
               once per 300 s per running server (JupyterLab's own polling goes to the server, not the hub)
  status       GET /hub/api/users/<name>: the spawn page, `esker status`, dashboards, scripts; assumed once per
               600 s per user (running or not)
  spawn, stop  each server lives session_seconds (assumed 3600 s: a workshop or a lab session) on average, so
               at a steady N running, N/3600 spawns and as many stops per second
  metrics      Prometheus scrapes /hub/metrics every scrape_interval (15 s), not per user
  cull         jupyterhub-idle-culler walks every ready server every cull_every (Esker: 300 s,
               esker/app/configurer.py), page by page (the hub's default page of 50), one page after the other

A rate multiplier scales all of them (periods are divided by it) to show the headroom: 1x is the production
mix, 3x and 5x where the knee is.
"""

from __future__ import annotations

import math
import random
import re
import statistics
from dataclasses import dataclass

# Single hub API requests (the p99 goal is about these); the rest are flows (spawn, stop, a culler pass: several
# requests and the client's waiting) or do not reach the hub (page: proxy -> server).
HUB_API = ("activity", "whoami", "status", "list", "metrics", "spawn_post", "stop_delete")
FLOWS = ("spawn", "stop", "cull_pass")
PROXY = ("page",)
ENDPOINTS = HUB_API + PROXY + FLOWS
POISSON = ("activity", "whoami", "page", "status", "spawn", "stop")  # many independent clients
PERIODIC = ("metrics", "cull")  # one client each, on a clock


@dataclass(frozen=True)
class Production:
    """The intervals (seconds) a hub's clients run at in production; see the module's docstring."""

    activity_interval: float = 300.0  # JUPYTERHUB_ACTIVITY_INTERVAL
    auth_cache_age: float = 300.0  # HubAuth.cache_max_age in jupyterhub-singleuser
    page_interval: float = 300.0  # a browser opening /user/<name>/ (assumed)
    status_interval: float = 600.0  # GET /hub/api/users/<name> per user (assumed)
    session_seconds: float = 3600.0  # a server's mean life: spawns and stops (assumed)
    scrape_interval: float = 15.0  # Prometheus
    cull_every: float = 300.0  # jupyterhub-idle-culler --cull-every (Esker's configurer)
    cull_page: int = 50  # the culler's pages: the hub's api_page_default_limit


def rates(users: int, running: int, prod: Production = Production(), multiplier: float = 1.0) -> dict[str, float]:
    """Arrivals per second of each Poisson stream, for ``users`` users of whom ``running`` have a server."""
    if users < 0 or running < 0 or running > users or multiplier <= 0:
        raise ValueError(f"bad load: users={users} running={running} multiplier={multiplier}")
    m = float(multiplier)
    return {
        "activity": m * running / prod.activity_interval,
        "whoami": m * running / prod.auth_cache_age,
        "page": m * running / prod.page_interval,
        "status": m * users / prod.status_interval,
        "spawn": m * running / prod.session_seconds,
        "stop": m * running / prod.session_seconds,
    }


def periods(prod: Production = Production(), multiplier: float = 1.0) -> dict[str, float]:
    """Seconds between two runs of each periodic client."""
    return {"metrics": prod.scrape_interval / multiplier, "cull": prod.cull_every / multiplier}


def cull_pages(running: int, prod: Production = Production()) -> int:
    """Pages in one culler pass over ``running`` ready servers (an empty hub still costs one request)."""
    return max(1, math.ceil(running / prod.cull_page))


def poisson(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Arrival times in [0, seconds) of a Poisson process of ``rate`` per second."""
    out: list[float] = []
    if rate <= 0:
        return out
    t = rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def periodic(period: float, seconds: float, rng: random.Random, at_least_once: bool = False) -> list[float]:
    """A clock of ``period`` with a random phase, in [0, seconds). With ``at_least_once`` a period longer
    than the window still fires once in it (at a random moment): the window then over-represents the client
    (a culler pass per round rather than per 300 s), which only makes the figures more conservative."""
    if period <= 0:
        raise ValueError("period must be positive")
    if period >= seconds and at_least_once:
        return [rng.uniform(0, seconds * 0.8)]  # not in the last fifth: its pages must fit in the round
    t = rng.uniform(0, period)
    out = []
    while t < seconds:
        out.append(t)
        t += period
    return out


def schedule(users: int, running: int, seconds: float, rng: random.Random, prod: Production = Production(),
             multiplier: float = 1.0) -> list[tuple[float, str]]:
    """The open-loop schedule of one round: (send time in seconds from the round's start, op), sorted. Each
    call's latency is measured from its send time here, not from when a client got round to it, so a hub that
    falls behind shows it (no coordinated omission)."""
    events = [(t, op) for op, r in rates(users, running, prod, multiplier).items() for t in poisson(r, seconds, rng)]
    p = periods(prod, multiplier)
    events += [(t, "metrics") for t in periodic(p["metrics"], seconds, rng)]
    events += [(t, "cull") for t in periodic(p["cull"], seconds, rng, at_least_once=True)]
    return sorted(events)


def pct(xs, q: float) -> float:
    """The q-quantile (nearest rank) of xs; nan when empty."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def summarise(rows: list[dict], keys=("hub", "users", "multiplier", "endpoint")) -> list[dict]:
    """Per (hub, users, multiplier, endpoint) and per (hub, users, multiplier) over all of HUB_API ("hub api"):
    calls, errors, p50/p95/p99, min/max, and the min-max across rounds of each round's p50 and p99."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
        if r["endpoint"] in HUB_API:
            groups.setdefault(tuple(r[k] if k != "endpoint" else "hub api" for k in keys), []).append(r)
    order = {e: i for i, e in enumerate(("hub api",) + ENDPOINTS)}
    out = []
    for k in sorted(groups, key=lambda k: (k[1], k[2], order.get(k[3], 99), k[0])):
        mine = groups[k]
        good = [r["seconds"] for r in mine if r["ok"]]
        per_round: dict = {}
        for r in mine:
            if r["ok"]:
                per_round.setdefault(r["round"], []).append(r["seconds"])
        p50s = [statistics.median(v) for v in per_round.values()]
        p99s = [pct(v, .99) for v in per_round.values()]
        nan = float("nan")
        out.append({**dict(zip(keys, k)), "n": len(mine), "errors": len(mine) - len(good),
                    "p50": pct(good, .5), "p95": pct(good, .95), "p99": pct(good, .99),
                    "min": min(good, default=nan), "max": max(good, default=nan),
                    "round_p50_min": min(p50s, default=nan), "round_p50_max": max(p50s, default=nan),
                    "round_p99_min": min(p99s, default=nan), "round_p99_max": max(p99s, default=nan)})
    return out


# JupyterHub's access log line: "... 200 GET /hub/api/users/s0001 (admin@127.0.0.1) 12.34ms"
_LOG = re.compile(r"\s(\d{3}) (GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) \(([^@()]*)@[^)]*\) ([\d.]+)ms")


def endpoint_of(method: str, uri: str) -> str:
    """A request's endpoint pattern: user names and query values out, so that calls group."""
    path, _, query = uri.partition("?")
    path = re.sub(r"^/hub/api/users/[^/]+", "/hub/api/users/{name}", path)
    path = re.sub(r"^/hub/api/groups/[^/]+", "/hub/api/groups/{name}", path)
    path = re.sub(r"^/user/[^/]+", "/user/{name}", path)
    path = re.sub(r"/tokens/[^/]+$", "/tokens/{id}", path)
    params = sorted({p.split("=", 1)[0] for p in query.split("&") if p})
    return f"{method} {path}" + (f"?{'&'.join(params)}" if params else "")


def hub_log_times(lines) -> list[tuple[str, str, float]]:
    """(endpoint pattern, who asked, ms) for each request in a JupyterHub log: the time the hub itself spent
    on it (tornado's request_time: from the request's arrival to the answer, not counting the time the
    request waited for the hub's loop before tornado read it)."""
    out = []
    for line in lines:
        m = _LOG.search(line)
        if m:
            status, method, uri, user, ms = m.groups()
            out.append((endpoint_of(method, uri), user or "-", float(ms)))
    return out
