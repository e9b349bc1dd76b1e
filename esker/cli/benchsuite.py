"""`esker bench`'s benchmarks against a live hub: each ``Bench.bench_<name>`` spawns its users, runs its
workload and returns its figures; plus the progress line and the figure helpers they share."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from esker.cli.benchworkloads import DISK_CODE, S3_CODE, TF_CODE, spark_first_code


class Progress:
    """One line per step on a terminal (redrawn), plain lines otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.step, self.stream = total, 0, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.t0 = time.monotonic()
        self.label = ""

    def start(self, label: str) -> None:
        self.step += 1
        self.label = label
        self.update()

    def update(self, done: int | None = None, of: int | None = None, note: str = "") -> None:
        bar = ""
        if done is not None and of:
            n = int(20 * done / of)
            bar = f" [{'#' * n}{'.' * (20 - n)}] {done}/{of}"
        line = f"[{self.step}/{self.total}] {self.label}{bar} {note} ({time.monotonic() - self.t0:.0f}s)"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, note: str) -> None:
        self.update(note=note)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def fig(case: str, metric: str, value: float, unit: str, better: str) -> dict:
    return {"case": case, "metric": metric, "value": round(float(value), 4), "unit": unit, "better": better}


def kernel_result(out: dict) -> dict:
    if out.get("error"):
        raise RuntimeError(out["error"][-1500:] + out.get("stderr", "")[-1000:])
    if "RESULT" not in out.get("stdout", ""):
        raise RuntimeError(f"no result from the kernel: {out.get('stdout', '')[-500:]} {out.get('stderr', '')[-500:]}")
    return json.loads(out["stdout"].rsplit("RESULT", 1)[1].strip().splitlines()[0])


class Bench:
    def __init__(self, hub, sizes: dict, progress: Progress, run_id: str, profile: str = "minimal",
                 gpus: str = "1", gpu_group: str = "gpu-users", scratch_root: str | None = None,
                 keep_users: bool = False):
        self.hub, self.sizes, self.progress, self.run_id = hub, sizes, progress, run_id
        self.profile, self.gpus, self.gpu_group = profile, gpus, gpu_group
        self.scratch_root, self.keep_users = scratch_root, keep_users
        self.users: set[str] = set()

    def user(self, tag: str, groups: list[str] | None = None) -> str:
        name = f"bench{self.run_id}-{tag}"
        self.hub.ensure_user(name, groups=groups)
        self.users.add(name)
        return name

    def run(self, name: str, code: str, timeout: float = 1800) -> dict:
        from esker.hubapi import run_code

        token = self.hub.user_token(name)
        return kernel_result(run_code(self.hub.server_url(name), token, code, timeout=timeout))

    def stop_all(self, names) -> None:
        names = list(names)
        if not names:
            return
        with ThreadPoolExecutor(min(16, len(names))) as pool:
            list(pool.map(lambda n: _quiet(self.hub.stop, n), names))

    def cleanup(self) -> None:
        self.stop_all(self.users)
        if not self.keep_users:
            for n in self.users:
                _quiet(self.hub.delete_user, n)

    # -- spawn latency at fixed concurrency
    def bench_spawn(self) -> dict:
        figures, cases = [], {}
        for c in self.sizes["levels"]:
            names = [self.user(f"c{c}x{i}") for i in range(c)]
            done = []

            def one(n):
                try:
                    m = self.hub.spawn(n, {"profile": self.profile})
                    r = {"user": n, "seconds": m["seconds"], "post_seconds": m["post_seconds"],
                         "first_event_s": m["events"][0]["t"] if m["events"] else None, "throttled": m["throttled"]}
                except Exception as e:  # noqa: BLE001
                    r = {"user": n, "error": str(e)[:500]}
                done.append(r)
                self.progress.update(len(done), c, f"spawn c={c}")
                return r

            t0 = time.monotonic()
            with ThreadPoolExecutor(c) as pool:
                results = list(pool.map(one, names))
            makespan = time.monotonic() - t0
            self.stop_all(names)
            lat = [r["seconds"] for r in results if "seconds" in r]
            fails = [r for r in results if "error" in r]
            cases[f"c{c}"] = {"concurrency": c, "profile": self.profile, "makespan_s": makespan,
                              "failures": len(fails), "spawns": results}
            case = f"c{c}"
            if lat:
                figures += [fig(case, "p50_s", statistics.median(lat), "s", "lower"),
                            fig(case, "p95_s", pct(lat, 0.95), "s", "lower"),
                            fig(case, "max_s", max(lat), "s", "lower"),
                            fig(case, "post_p50_s", statistics.median(r["post_seconds"] for r in results
                                                                      if "post_seconds" in r), "s", "lower")]
            figures += [fig(case, "failures", len(fails), "count", "lower"),
                        fig(case, "spawns_per_min", 60 * len(lat) / makespan if makespan else 0, "1/min", "higher")]
        return {"cases": cases, "figures": figures}

    # -- workshop burst
    def bench_burst(self) -> dict:
        n, window = self.sizes["burst_users"], self.sizes["burst_window"]
        names = [self.user(f"w{i}") for i in range(n)]
        t0 = time.monotonic()
        done = []

        def attendee(i_name):
            i, name = i_name
            arrive = i * window / max(1, n)
            time.sleep(max(0.0, t0 + arrive - time.monotonic()))
            r = {"user": name, "arrival_s": arrive}
            try:
                m = self.hub.spawn(name, {"profile": self.profile})
                r["ready_s"] = m["seconds"]
                self.run(name, "print('RESULT' + __import__('json').dumps({'sum': 1 + 1}))", timeout=300)
                r["first_cell_s"] = time.monotonic() - t0 - arrive
            except Exception as e:  # noqa: BLE001
                r["error"] = str(e)[:500]
            done.append(r)
            self.progress.update(len(done), n, "attendees ready")
            return r

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(attendee, enumerate(names)))
        makespan = time.monotonic() - t0
        self.stop_all(names)
        ready = [r["ready_s"] for r in results if "ready_s" in r]
        first = [r["first_cell_s"] for r in results if "first_cell_s" in r]
        figures = [fig("burst", "users", n, "count", "higher"),
                   fig("burst", "failures", sum("error" in r for r in results), "count", "lower"),
                   fig("burst", "makespan_s", makespan, "s", "lower")]
        if ready:
            figures += [fig("burst", "ready_p50_s", statistics.median(ready), "s", "lower"),
                        fig("burst", "ready_p95_s", pct(ready, 0.95), "s", "lower")]
        if first:
            figures += [fig("burst", "first_cell_p95_s", pct(first, 0.95), "s", "lower")]
        return {"users": n, "window_s": window, "profile": self.profile, "attendees": results, "figures": figures}

    # -- Spark: spawn to the first result on the server's own cluster against local[*], fresh each side
    def bench_spark(self) -> dict:
        """Rounds of: spawn the spark profile, and once it is ready, a fresh driver (a Python subprocess of a
        fresh kernel) times ``getOrCreate()`` and a first small job, on the server's own cluster (the injected
        SPARK_MASTER) or on ``local[*]``; then stop the server. The sides take turns to go first each round
        and share one account, so that the machine's drift and the account's first-spawn costs fall on both
        alike (a first untimed spawn makes the account when there is more than one round). Figures: each side's
        spawn, session, first-job and total seconds (median, min, max), the ratio of the totals' medians
        (cluster / local; the goal is at most 1.2), the warm job on ``spark_rows`` rows, and the memory of the
        server's master, worker (idle) and executor (peak, while the job runs), with its control group's (and
        the local side's driver and group peaks: the memory the cluster costs is the difference)."""
        rounds, rows = self.sizes.get("spark_rounds", 3), self.sizes["spark_rows"]
        name = self.user("spark")
        if rounds > 1:
            self.progress.update(note="first spawn of the spark profile (untimed: makes the account)")
            self.hub.spawn(name, {"profile": "spark"})
            self.stop_all([name])
        # Variants: more sides, each the cluster side with settings of its own (to weigh a setting side by side).
        variants = {"cluster": {}, "local": {}, **self.sizes.get("spark_variants", {})}
        sides = list(variants)
        samples: dict[str, list[dict]] = {s: [] for s in sides}
        failed: dict[str, list[dict]] = {s: [] for s in sides}
        for i in range(rounds):
            for side in sides[i % len(sides):] + sides[:i % len(sides)]:  # each round starts with the next side
                self.progress.update(i, rounds, f"spawn, then first Spark result on {side}")
                t0 = time.monotonic()
                try:  # a failed round is counted and shown, not hidden, and the others still run
                    m = self.hub.spawn(name, {"profile": "spark"})
                    r = self.run(name, spark_first_code("local" if side == "local" else "cluster", rows, variants[side]),
                                 timeout=1800)
                    r["end_to_end_s"] = time.monotonic() - t0
                    r.update(round=i, spawn_s=m["seconds"], total_s=m["seconds"] + r["session_s"] + r["first_job_s"])
                    samples[side].append(r)
                except Exception as e:  # noqa: BLE001
                    failed[side].append({"round": i, "error": f"{type(e).__name__}: {e}"[:3000]})
                finally:
                    self.stop_all([name])
        for side in sides:
            if not samples[side]:
                raise RuntimeError(f"no round of the {side} side succeeded: {failed[side][-1]['error']}")
        out: dict = {"rounds": rounds, "rows": rows, "samples": samples, "failed": failed}
        figures = [fig(side, "failures", len(failed[side]), "count", "lower") for side in sides]
        med: dict[str, dict[str, float]] = {}
        for side, got in samples.items():
            med[side] = {}
            for metric in ("spawn_s", "session_s", "first_job_s", "total_s", "end_to_end_s", "job_s"):
                v = [s[metric] for s in got if s.get(metric) is not None]
                if not v:
                    continue
                med[side][metric] = statistics.median(v)
                figures.append(fig(side, metric, med[side][metric], "s", "lower"))
                if metric in ("total_s", "first_job_s", "session_s"):
                    figures += [fig(side, metric.replace("_s", "_min_s"), min(v), "s", "lower"),
                                fig(side, metric.replace("_s", "_max_s"), max(v), "s", "lower")]
            out[side] = {"master": got[0]["master"], "default_parallelism": got[0]["default_parallelism"], **med[side]}
        for side in sides[2:]:
            figures.append(fig(f"{side}_vs_local", "first_result_ratio", med[side]["total_s"] / med["local"]["total_s"],
                               "ratio", "lower"))
            out[side]["conf"] = variants[side]
        ratio = med["cluster"]["total_s"] / med["local"]["total_s"]
        local_by_round = {lo["round"]: lo for lo in samples["local"]}
        per_round = [c["total_s"] / local_by_round[c["round"]]["total_s"] for c in samples["cluster"]
                     if c["round"] in local_by_round] or [ratio]
        out["first_result_ratio"] = ratio
        out["first_result_ratio_rounds"] = per_round
        figures += [fig("cluster_vs_local", "first_result_ratio", ratio, "ratio", "lower"),
                    fig("cluster_vs_local", "first_result_ratio_min", min(per_round), "ratio", "lower"),
                    fig("cluster_vs_local", "first_result_ratio_max", max(per_round), "ratio", "lower")]
        if "job_s" in med["cluster"] and "job_s" in med["local"]:
            figures.append(fig("cluster_vs_local", "speedup", med["local"]["job_s"] / med["cluster"]["job_s"],
                               "ratio", "higher"))
        memory = spark_memory(samples["cluster"])
        memory.update({f"local_{k}": v for k, v in spark_memory(samples["local"]).items()
                       if k in ("driver_peak_rss_mb", "cgroup_peak_mb")})
        out["memory"] = memory
        figures += [fig("memory", k, v, "MB", "lower") for k, v in memory.items()]
        out["figures"] = figures
        return out

    # -- object storage from a user's server
    def bench_s3(self) -> dict:
        name = self.user("s3")
        self.progress.update(note=f"spawning {self.profile}")
        self.hub.spawn(name, {"profile": self.profile})
        res = self.run(name, S3_CODE.format(mb=self.sizes["s3_mb"], n=self.sizes["s3_objects"]))
        self.stop_all([name])
        if "skipped" in res:
            return {"skipped": res["skipped"], "figures": []}
        return {**res, "figures": [fig("server", "put_mb_s", res["put_mb_s"], "MB/s", "higher"),
                                   fig("server", "get_mb_s", res["get_mb_s"], "MB/s", "higher")]}

    # -- scratch from the kernel against the raw disk under it, side by side
    def bench_scratch(self) -> dict:
        """Rounds of the same fsynced write and cold read, in the server's SCRATCH_DIR (its quota filesystem,
        from its kernel, in its cgroup), in its HOME (a plain folder, when on the same disk: the server without
        the image) and on this host in the scratch root, the cases' order alternating each round so that the
        disk's drift (its cache, a neighbour's I/O) falls on every case alike. Figures: each case's median,
        min and max; ratios of the medians. Both sides run the same function (DISK_CODE) in a long-lived
        process: the server's in one kernel kept for every round, the host's in this process."""
        from esker.hubapi import KernelSession

        mb, rounds = self.sizes["scratch_mb"], self.sizes.get("scratch_rounds", 5)
        name = self.user("scratch")
        self.progress.update(note=f"spawning {self.profile}")
        self.hub.spawn(name, {"profile": self.profile})
        where = self.run(name, "import json, os\nprint('RESULT' + json.dumps({'scratch': os.environ['SCRATCH_DIR'], "
                               "'home': os.environ['HOME']}))")
        root = self.scratch_root or os.path.dirname(where["scratch"].rstrip("/"))
        dirs = {"server": "os.environ['SCRATCH_DIR']"}
        out: dict = {"directories": where, "rounds": rounds, "mb": mb}
        if not os.path.isdir(root):
            out["host"] = {"skipped": f"scratch root {root} is not on this machine (run esker bench on the hub's "
                                      "host, or pass --scratch-root)"}
        elif _same_disk(where["home"], root):
            dirs["server_home"] = "os.environ['HOME']"
        ns: dict = {}
        exec(DISK_CODE, ns)  # noqa: S102 - our own constant, the same code the kernel runs
        cases = [*dirs, *(["host"] if os.path.isdir(root) else [])]
        samples: dict[str, list[dict]] = {c: [] for c in cases}
        # One kernel for every round, started before the first: each side runs the same function in a
        # long-lived Python process (the kernel there, this process here), and no kernel start falls between
        # one measurement and the next.
        with KernelSession(self.hub.server_url(name), self.hub.user_token(name), timeout=1800) as kernel:
            kernel_result(kernel.run(DISK_CODE + "\nprint('RESULT' + json.dumps({}))"))
            for i in range(rounds):
                for case in (cases if i % 2 == 0 else cases[::-1]):
                    self.progress.update(i, rounds, f"{mb} MB fsynced, {case}")
                    if case == "host":
                        samples[case].append(ns["esker_disk_bw"](root, mb))
                    else:
                        samples[case].append(kernel_result(kernel.run(
                            f"print('RESULT' + json.dumps(esker_disk_bw({dirs[case]}, {mb})))")))
        self.stop_all([name])
        figures = []
        med: dict[str, dict[str, float]] = {}
        for case, got in samples.items():
            med[case] = {}
            for metric in ("write_mb_s", "read_mb_s"):
                v = [s[metric] for s in got]
                med[case][metric] = statistics.median(v)
                figures += [fig(case, metric, med[case][metric], "MB/s", "higher"),
                            fig(case, metric.replace("_mb_s", "_min_mb_s"), min(v), "MB/s", "higher"),
                            fig(case, metric.replace("_mb_s", "_max_mb_s"), max(v), "MB/s", "higher")]
            out[case] = {**med[case], "samples": got}
        for case in ("server", "server_home"):
            if case in med and "host" in med:
                for metric in ("write", "read"):
                    figures.append(fig(f"{case}_vs_host", f"{metric}_ratio",
                                       med[case][f"{metric}_mb_s"] / med["host"][f"{metric}_mb_s"], "ratio", "higher"))
        out["figures"] = figures
        return out

    # -- TensorFlow training throughput
    def bench_tensorflow(self) -> dict:
        from esker.hubapi import SpawnRefused

        groups = [self.gpu_group] if self.gpus != "0" and self.gpu_group else None
        name = self.user("tf", groups=groups)
        note = None
        self.progress.update(note="spawning tensorflow")
        try:
            self.hub.spawn(name, {"profile": "tensorflow", "gpus": self.gpus})
        except SpawnRefused as e:
            if self.gpus == "0":
                raise
            note = f"no GPU granted ({e.status}: {e.message[:200]}); measured on CPU"
            self.hub.spawn(name, {"profile": "tensorflow", "gpus": "0"})
        self.progress.update(note="training")
        res = self.run(name, TF_CODE.format(samples=self.sizes["tf_samples"], epochs=self.sizes["tf_epochs"]))
        self.stop_all([name])
        if note:
            res["note"] = note
        case = res["device"].lower()
        return {**res, "figures": [fig(case, "samples_per_s", res["samples_per_s"], "samples/s", "higher")]}


def spark_memory(samples: list[dict]) -> dict[str, float]:
    """Medians over the cluster side's rounds: resident MB of the server's master and worker while idle (before
    the driver starts), the executor's and the control group's peak while the job runs, the group's idle."""
    got: dict[str, list[float]] = {}
    for s in samples:
        mem = s.get("memory") or {}
        idle, peak = mem.get("idle", {}), mem.get("peak", {})
        for role in ("master", "worker"):
            if role in idle.get("rss_mb", {}):
                got.setdefault(f"{role}_idle_rss_mb", []).append(idle["rss_mb"][role])
        for role in ("executor", "driver"):
            if role in peak.get("rss_mb", {}):
                got.setdefault(f"{role}_peak_rss_mb", []).append(peak["rss_mb"][role])
        if idle.get("cgroup_mb") is not None:
            got.setdefault("cgroup_idle_mb", []).append(idle["cgroup_mb"])
        if peak.get("cgroup_mb") is not None:
            got.setdefault("cgroup_peak_mb", []).append(peak["cgroup_mb"])
    return {k: statistics.median(v) for k, v in got.items()}


def _same_disk(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _quiet(fn, *a):
    try:
        fn(*a)
    except Exception:  # noqa: BLE001
        pass
