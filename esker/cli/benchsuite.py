"""`esker bench`'s benchmarks against a live hub: each ``Bench.bench_<name>`` spawns its users, runs its
workload and returns its figures; plus the progress line and the figure helpers they share."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from esker.cli.benchworkloads import DISK_CODE, S3_CODE, SPARK_CODE, TF_CODE


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

    # -- Spark: the hub's cluster against local[*]
    def bench_spark(self) -> dict:
        name = self.user("spark")
        self.progress.update(note="spawning the spark profile")
        self.hub.spawn(name, {"profile": "spark"})
        self.progress.update(note="running the job on the cluster and on local[*]")
        res = self.run(name, SPARK_CODE.format(rows=self.sizes["spark_rows"]))
        self.stop_all([name])
        figures = []
        for case in ("cluster", "local"):
            r = res.get(case, {})
            if "job_s" in r:
                figures += [fig(case, "job_s", r["job_s"], "s", "lower"),
                            fig(case, "startup_s", r["startup_s"], "s", "lower")]
        if "job_s" in res.get("cluster", {}) and "job_s" in res.get("local", {}):
            figures.append(fig("cluster_vs_local", "speedup", res["local"]["job_s"] / res["cluster"]["job_s"],
                               "ratio", "higher"))
        return {**res, "figures": figures}

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
