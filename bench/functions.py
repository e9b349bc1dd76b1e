"""Functions, side by side in one run (docs/functions.md): what a call costs through Esker against calling the
same function in-process, how it holds up under 100 concurrent callers, and a cold start (a call to a stopped
function until its answer) against a plain spawn of the same profile.

One real embedded hub with a throwaway Ceph; a user publishes `echo` from a module inside her own minimal
server with `esker fn publish`, exactly as the docs say. Rounds alternate between the sides so machine noise
hits both.

    .venv/bin/python bench/functions.py [--calls 200] [--rounds 3] [--callers 100] [--cold 3] [--out bench/results/functions]

Sides of the warm call: `in-process` (the function called in this process, JSON encoded and decoded as the
server would), `direct` (POST through the proxy to /user/<owner>/fn-echo/, the function server's own URL) and
`activator` (POST to /services/esker-functions/call/<owner>/echo, the stable URL: the service checks the token
and the scope, then forwards through the proxy).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import requests  # noqa: E402

from esker.devhub import RunningHub, prepare_environments  # noqa: E402
from esker.hubapi import run_code  # noqa: E402

USER = "bench-fn"
CODE = '''
from esker_client import function


@function(concurrency=4, timeout=30)
def echo(x: int, text: str = "") -> dict:
    return {"x": x, "text": text}
'''
BODY = {"x": 7, "text": "hello"}


def echo(x: int, text: str = "") -> dict:  # the same function, for the in-process side
    return {"x": x, "text": text}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def publish(h: RunningHub) -> None:
    hub = h.hub
    hub.ensure_user(USER)
    hub.spawn(USER, {"profile": "minimal"})
    code = (f"open('echofn.py', 'w').write({CODE!r})\nimport subprocess\n"
            "p = subprocess.run(['esker', 'fn', 'publish', 'echofn.py', '--name', 'echo', '--version', '1.0.0'], "
            "capture_output=True, text=True)\nprint(p.stdout, p.stderr)\nassert p.returncode == 0\n")
    out = run_code(f"{h.url}/user/{USER}/", hub.user_token(USER), code, timeout=600)
    if out["error"]:
        raise SystemExit(f"publishing failed: {out['error']}\n{out['stdout']}\n{out['stderr']}")
    hub.stop(USER)  # only the function runs from here on


def warm_round(h: RunningHub, token: str, calls: int) -> list[dict]:
    rows = []
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    urls = {"direct": f"{h.url}/user/{USER}/fn-echo/", "activator": f"{h.url}/services/esker-functions/call/{USER}/echo"}
    for side in ("in-process", "direct", "activator"):
        for i in range(calls):
            t0 = time.perf_counter()
            if side == "in-process":
                answer = json.loads(json.dumps(echo(**json.loads(json.dumps(BODY)))))
            else:
                r = s.post(urls[side], json=BODY, timeout=60)
                r.raise_for_status()
                answer = r.json()
            ms = (time.perf_counter() - t0) * 1000
            assert answer == BODY, answer
            rows.append({"bench": "warm", "side": side, "i": i, "ms": ms})
    return rows


def concurrent_round(h: RunningHub, token: str, callers: int, each: int) -> tuple[list[dict], dict]:
    url = f"{h.url}/services/esker-functions/call/{USER}/echo"

    def caller(n: int) -> list[tuple[float, int]]:
        s = requests.Session()
        s.headers["Authorization"] = f"token {token}"
        out = []
        for _ in range(each):
            t0 = time.perf_counter()
            r = s.post(url, json={"x": n}, timeout=300)
            out.append(((time.perf_counter() - t0) * 1000, r.status_code))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        results = [x for xs in pool.map(caller, range(callers)) for x in xs]
    wall = time.perf_counter() - t0
    rows = [{"bench": "concurrent", "side": "activator", "i": i, "ms": ms, "status": st}
            for i, (ms, st) in enumerate(results)]
    codes: dict[int, int] = {}
    for _, st in results:
        codes[st] = codes.get(st, 0) + 1
    return rows, {"calls": len(results), "seconds": wall, "per_second": len(results) / wall, "statuses": codes}


def cold_round(h: RunningHub, token: str, i: int) -> list[dict]:
    hub = h.hub
    r = hub.request("DELETE", f"/users/{USER}/servers/fn-echo")
    assert r.status_code in (202, 204), r.text
    while (hub.request("GET", f"/users/{USER}").json().get("servers") or {}).get("fn-echo"):
        time.sleep(0.2)
    t0 = time.perf_counter()
    r = requests.post(f"{h.url}/services/esker-functions/call/{USER}/echo", json=BODY,
                      headers={"Authorization": f"token {token}"}, timeout=300)
    fn_s = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    other = f"bench-plain-{i}"
    hub.ensure_user(other)
    model = hub.spawn(other, {"profile": "minimal"})
    hub.stop(other)
    return [{"bench": "cold", "side": "function call (stopped -> answer)", "i": i, "ms": fn_s * 1000},
            {"bench": "cold", "side": "plain spawn, minimal (POST -> ready)", "i": i, "ms": model["seconds"] * 1000},
            {"bench": "cold", "side": "activator's own figure", "i": i,
             "ms": float(r.headers.get("X-Esker-Cold-Start-Seconds", "nan")) * 1000}]


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        for side in dict.fromkeys(r["side"] for r in rows if r["bench"] == bench):
            ms = [r["ms"] for r in rows if r["bench"] == bench and r["side"] == side]
            out.append({"bench": bench, "side": side, "n": len(ms), "min_ms": min(ms), "p50_ms": statistics.median(ms),
                        "p99_ms": pct(ms, 99), "max_ms": max(ms)})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(r["bench"] for r in rows))
    fig, axes = plt.subplots(1, len(benches), figsize=(5 * len(benches), 4))
    for ax, bench in zip(axes if len(benches) > 1 else [axes], benches):
        sides = list(dict.fromkeys(r["side"] for r in rows if r["bench"] == bench))
        data = [[r["ms"] for r in rows if r["bench"] == bench and r["side"] == s] for s in sides]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(sides) + 1), [s.replace(" (", "\n(") for s in sides], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(bench)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200, help="sequential warm calls per side and round")
    p.add_argument("--rounds", type=int, default=3, help="warm rounds (the sides alternate within each)")
    p.add_argument("--callers", type=int, default=100, help="concurrent callers")
    p.add_argument("--each", type=int, default=5, help="calls per concurrent caller")
    p.add_argument("--cold", type=int, default=3, help="cold-start rounds (each against a plain spawn)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "functions"))
    args = p.parse_args(argv)

    from ceph_fixture import start_cluster

    prepare_environments(["minimal"])
    ceph = start_cluster(Path(tempfile.mkdtemp(prefix="esker-bench-fn-")) / "ceph")
    h = RunningHub(ceph=ceph)
    rows: list[dict] = []
    try:
        h.start()
        publish(h)
        token = h.hub.login_token(USER)
        warm_round(h, token, 10)  # the first calls start the workers: not measured
        for _ in range(args.rounds):
            rows += warm_round(h, token, args.calls)
        crow, conc = concurrent_round(h, token, args.callers, args.each)
        rows += crow
        for i in range(args.cold):
            rows += cold_round(h, token, i)
    finally:
        h.teardown()
        if ceph.cluster is not None:
            ceph.cluster.stop()

    summary = summarize(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "calls.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["bench", "side", "i", "ms", "status"])
        w.writeheader()
        w.writerows(rows)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    plot(rows, out / "functions.png")
    base = {r["side"]: r for r in summary if r["bench"] == "warm"}
    print(f"{'bench':<11}{'side':<40}{'n':>5}{'min':>9}{'p50':>9}{'p99':>9}{'max':>9}  (ms)")
    for r in summary:
        print(f"{r['bench']:<11}{r['side']:<40}{r['n']:>5}{r['min_ms']:>9.2f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['max_ms']:>9.2f}")
    inproc = base["in-process"]
    for side in ("direct", "activator"):
        b = base[side]
        print(f"warm {side}: +{b['p50_ms'] - inproc['p50_ms']:.2f} ms at p50, +{b['p99_ms'] - inproc['p99_ms']:.2f} ms "
              f"at p99 over in-process ({b['p50_ms'] / max(inproc['p50_ms'], 1e-6):.0f}x at p50)")
    print(f"concurrent: {conc['calls']} calls by {args.callers} callers in {conc['seconds']:.1f} s = "
          f"{conc['per_second']:.0f}/s, statuses {conc['statuses']}")
    cold = {r["side"]: r for r in summary if r["bench"] == "cold"}
    fn, plain = cold["function call (stopped -> answer)"], cold["plain spawn, minimal (POST -> ready)"]
    print(f"cold start: function {fn['p50_ms'] / 1000:.2f} s ({fn['min_ms'] / 1000:.2f}-{fn['max_ms'] / 1000:.2f}) "
          f"vs plain spawn {plain['p50_ms'] / 1000:.2f} s ({plain['min_ms'] / 1000:.2f}-{plain['max_ms'] / 1000:.2f})")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
