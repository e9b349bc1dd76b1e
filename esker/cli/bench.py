"""`esker bench`: the reference benchmarks an admin runs against a live hub (its URL and an admin token).

Benchmarks (each can be chosen with --only, and each reports figures with a unit and a direction):

  spawn       spawn latency of the `minimal` profile at 1, 10 and 30 concurrent users, timed from the request
              to the `ready` event of the progress stream (what a person waits for), not to the POST's answer
  burst       a workshop: N users arrive over W seconds, each spawns and runs a first cell
  spark       the same Spark job on the hub's cluster (SPARK_MASTER) and on local[*], inside a user's server
  s3          put/get throughput to the user's bucket from a user's server (skipped without object storage)
  scratch     write/read bandwidth of N MB in SCRATCH_DIR from a kernel, beside the same measurement taken on
              this host in the scratch root (the raw disk under it)
  tensorflow  Keras training throughput (samples/s) in the tensorflow profile, on a GPU when one is granted

Results go to --out as results.json, results.csv and PNG plots; --compare REFERENCE.json prints the ratio
of every figure to a reference run. Users are named bench<id>-...; they are stopped and deleted afterwards.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import secrets
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = ["spawn", "burst", "spark", "s3", "scratch", "tensorflow"]
FULL = {"levels": [1, 10, 30], "burst_users": 30, "burst_window": 30.0, "spark_rows": 20_000_000,
        "s3_objects": 8, "s3_mb": 64, "scratch_mb": 1024, "tf_samples": 20_000, "tf_epochs": 3}
QUICK = {"levels": [1, 2], "burst_users": 3, "burst_window": 2.0, "spark_rows": 1_000_000,
         "s3_objects": 2, "s3_mb": 8, "scratch_mb": 32, "tf_samples": 1_024, "tf_epochs": 1}

# ---------------------------------------------------------------------------- workloads (run in kernels)
DISK_CODE = r'''
import json, os, time
def esker_disk_bw(directory, mb, block=4 * 1024 * 1024):
    """Write mb MB in 4 MB blocks and fsync, then read it back with its pages dropped from the cache."""
    path = os.path.join(directory, ".esker-bench-%d-%d" % (os.getpid(), time.time_ns()))
    buf = os.urandom(block)
    n = max(1, mb * 1024 * 1024 // block)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t = time.perf_counter()
        for _ in range(n):
            os.write(fd, buf)
        os.fsync(fd)
        w = time.perf_counter() - t
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean after fsync: evict, so reads hit the disk
        t = time.perf_counter()
        while os.read(fd, block):
            pass
        r = time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(path)
    total = n * block
    return {"directory": directory, "bytes": total, "write_s": w, "read_s": r,
            "write_mb_s": total / w / 1e6, "read_mb_s": total / r / 1e6}
'''

SPARK_CODE = r'''
import json, os, time
from pyspark.sql import SparkSession
N = {rows}
def job(spark):
    t = time.perf_counter()
    groups = spark.range(N).selectExpr("id % 1000 as k", "id * 2 as v").groupBy("k").sum("v").collect()
    squares = spark.sparkContext.parallelize(range(N // 10), 8).map(lambda x: x * x).sum()
    assert len(groups) == 1000 and squares > 0
    return time.perf_counter() - t
res = {{}}
for name, master in (("cluster", os.environ.get("SPARK_MASTER")), ("local", "local[*]")):
    if not master:
        res[name] = {{"skipped": "SPARK_MASTER is not set in this server"}}
        continue
    t = time.perf_counter()
    spark = SparkSession.builder.master(master).appName("esker-bench-" + name).getOrCreate()
    startup = time.perf_counter() - t
    warm = job(spark)
    secs = job(spark)
    cores = spark.sparkContext.defaultParallelism
    spark.stop()
    res[name] = {{"master": master, "startup_s": startup, "warmup_s": warm, "job_s": secs,
                 "default_parallelism": cores, "rows": N}}
print("RESULT" + json.dumps(res))
'''

S3_CODE = r'''
import json, os, time
endpoint, bucket = os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("ESKER_BUCKET")
if not endpoint or not bucket:
    print("RESULT" + json.dumps({{"skipped": "no object storage in this server (AWS_ENDPOINT_URL/ESKER_BUCKET unset)"}}))
else:
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint)
    data = os.urandom({mb} * 1024 * 1024)
    keys = ["esker-bench/%d-%d" % (time.time_ns(), i) for i in range({n})]
    t = time.perf_counter()
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=data)
    put = time.perf_counter() - t
    t = time.perf_counter()
    for k in keys:
        assert len(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) == len(data)
    get = time.perf_counter() - t
    for k in keys:
        s3.delete_object(Bucket=bucket, Key=k)
    total = len(data) * len(keys)
    print("RESULT" + json.dumps({{"endpoint": endpoint, "bucket": bucket, "bytes": total, "objects": len(keys),
                                 "put_mb_s": total / put / 1e6, "get_mb_s": total / get / 1e6}}))
'''

TF_CODE = r'''
import json, os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
N, EPOCHS, BATCH = {samples}, {epochs}, 128
rng = np.random.default_rng(0)
x = rng.random((N, 28, 28, 1), dtype=np.float32)
y = rng.integers(0, 10, N)
model = tf.keras.Sequential([
    tf.keras.Input((28, 28, 1)),
    tf.keras.layers.Conv2D(32, 3, activation="relu"),
    tf.keras.layers.MaxPooling2D(),
    tf.keras.layers.Conv2D(64, 3, activation="relu"),
    tf.keras.layers.MaxPooling2D(),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(128, activation="relu"),
    tf.keras.layers.Dense(10),
])
model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x[: BATCH * 4], y[: BATCH * 4], batch_size=BATCH, epochs=1, verbose=0)  # build and trace
t = time.perf_counter()
model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
secs = time.perf_counter() - t
print("RESULT" + json.dumps({{"device": "GPU" if gpus else "CPU", "gpus": len(gpus), "tensorflow": tf.__version__,
                             "samples": N * EPOCHS, "seconds": secs, "samples_per_s": N * EPOCHS / secs,
                             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}}))
'''


# ---------------------------------------------------------------------------- helpers
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

    # -- scratch from the kernel against the raw disk under it
    def bench_scratch(self) -> dict:
        mb = self.sizes["scratch_mb"]
        name = self.user("scratch")
        self.progress.update(note=f"spawning {self.profile}")
        self.hub.spawn(name, {"profile": self.profile})
        self.progress.update(note=f"writing and reading {mb} MB in SCRATCH_DIR")
        server = self.run(name, DISK_CODE + f"\nprint('RESULT' + json.dumps(esker_disk_bw(os.environ['SCRATCH_DIR'], {mb})))")
        self.stop_all([name])
        out = {"server": server, "figures": [fig("server", "write_mb_s", server["write_mb_s"], "MB/s", "higher"),
                                              fig("server", "read_mb_s", server["read_mb_s"], "MB/s", "higher")]}
        root = self.scratch_root or os.path.dirname(server["directory"].rstrip("/"))
        if not os.path.isdir(root):
            out["host"] = {"skipped": f"scratch root {root} is not on this machine (run esker bench on the hub's "
                                      "host, or pass --scratch-root)"}
            return out
        self.progress.update(note=f"the same on this host in {root}")
        ns: dict = {}
        exec(DISK_CODE, ns)  # noqa: S102 - our own constant, the same code the kernel ran
        host = ns["esker_disk_bw"](root, mb)
        out["host"] = host
        out["figures"] += [fig("host", "write_mb_s", host["write_mb_s"], "MB/s", "higher"),
                           fig("host", "read_mb_s", host["read_mb_s"], "MB/s", "higher"),
                           fig("server_vs_host", "write_ratio", server["write_mb_s"] / host["write_mb_s"], "ratio",
                               "higher"),
                           fig("server_vs_host", "read_ratio", server["read_mb_s"] / host["read_mb_s"], "ratio",
                               "higher")]
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


def _quiet(fn, *a):
    try:
        fn(*a)
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------------------- outputs
def rows(results: dict) -> list[dict]:
    out = []
    for bench, r in results["benchmarks"].items():
        for f in r.get("figures", []):
            out.append({"benchmark": bench, **f})
    return out


def write_csv(results: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "benchmark", "case", "metric", "value", "unit", "better"])
        w.writeheader()
        for r in rows(results):
            w.writerow({"run": results["run_id"], **r})


def plot(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    b = results["benchmarks"]
    spawn = b.get("spawn", {}).get("cases")
    if spawn:
        figure, ax = plt.subplots(figsize=(7, 4))
        labels, data = [], []
        for case in spawn.values():
            lat = [s["seconds"] for s in case["spawns"] if "seconds" in s]
            if lat:
                labels.append(f"{case['concurrency']} users")
                data.append(lat)
        if data:
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.set_ylabel("seconds to ready (progress stream)")
        ax.set_title(f"Spawn latency, {next(iter(spawn.values()))['profile']} profile")
        written.append(_save(figure, out / "spawn_latency.png"))
    burst = b.get("burst", {}).get("attendees")
    if burst:
        figure, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(burst) + 1)))
        for i, a in enumerate(burst):
            start = a["arrival_s"]
            if "ready_s" in a:
                ax.barh(i, a["ready_s"], left=start, color="tab:blue", label="spawn" if i == 0 else None)
            if "first_cell_s" in a and "ready_s" in a:
                ax.barh(i, a["first_cell_s"] - a["ready_s"], left=start + a["ready_s"], color="tab:green",
                        label="first cell" if i == 0 else None)
            if "error" in a:
                ax.plot(start, i, "rx")
        ax.set_xlabel("seconds since the first arrival")
        ax.set_ylabel("attendee")
        ax.set_title(f"Workshop burst: {len(burst)} users over {b['burst']['window_s']:.0f}s")
        ax.legend(loc="lower right")
        written.append(_save(figure, out / "burst.png"))
    for name in ("spark", "s3", "scratch", "tensorflow"):
        figs = [f for f in b.get(name, {}).get("figures", []) if f["unit"] != "ratio"]
        if not figs:
            continue
        units = sorted({f["unit"] for f in figs})
        figure, axes = plt.subplots(1, len(units), figsize=(4.5 * len(units), 3.5), squeeze=False)
        for ax, unit in zip(axes[0], units):
            sel = [f for f in figs if f["unit"] == unit]
            ax.bar([f"{f['case']}\n{f['metric']}" for f in sel], [f["value"] for f in sel], color="tab:blue")
            ax.set_ylabel(unit)
            ax.tick_params(axis="x", labelsize=8)
        figure.suptitle(name)
        written.append(_save(figure, out / f"{name}.png"))
    return written


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path.name


def compare(results: dict, reference: dict) -> list[dict]:
    ref = {(r["benchmark"], r["case"], r["metric"]): r for r in rows(reference)}
    out = []
    for r in rows(results):
        old = ref.get((r["benchmark"], r["case"], r["metric"]))
        if not old or not old["value"]:
            continue
        ratio = r["value"] / old["value"]
        better = (ratio > 1) if r["better"] == "higher" else (ratio < 1)
        out.append({**r, "reference": old["value"], "ratio": round(ratio, 3),
                    "verdict": "same" if abs(ratio - 1) < 0.05 else ("better" if better else "worse")})
    return out


def print_compare(table: list[dict], stream=sys.stdout) -> None:
    print(f"{'benchmark':<11} {'case':<16} {'metric':<16} {'value':>11} {'reference':>11} {'ratio':>7}  verdict",
          file=stream)
    for r in table:
        print(f"{r['benchmark']:<11} {r['case']:<16} {r['metric']:<16} {r['value']:>11.3f} {r['reference']:>11.3f} "
              f"{r['ratio']:>7.3f}  {r['verdict']}", file=stream)


# ---------------------------------------------------------------------------- the command
def cmd_bench(args) -> int:
    from esker.hubapi import Hub

    if args.compare and args.compare_only:
        table = compare(json.loads(Path(args.compare_only).read_text()), json.loads(Path(args.compare).read_text()))
        print_compare(table)
        return 0
    url = args.url
    if not url:
        from esker.cli.status import hub_url
        from esker.core import config as config_mod

        try:
            url = hub_url(config_mod.load(os.environ.get("ESKER_CONFIG")))
        except config_mod.ConfigError as e:
            print(f"no --url and no valid esker.yaml to find the hub: {e}", file=sys.stderr)
            return 2
    token = args.token or os.environ.get("ESKER_ADMIN_TOKEN")
    if not token:
        print("an admin token is needed: --token or $ESKER_ADMIN_TOKEN", file=sys.stderr)
        return 2
    hub = Hub(url.rstrip("/"), token)
    try:
        r = hub.request("GET", "/", timeout=10)
        r.raise_for_status()
        version = r.json().get("version")
        hub.request("GET", "/users", timeout=10).raise_for_status()
    except Exception as e:  # noqa: BLE001
        print(f"cannot use the hub API at {hub.api} with this token: {e}", file=sys.stderr)
        return 2

    chosen = [b.strip() for b in (args.only.split(",") if args.only else BENCHMARKS) if b.strip()]
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    sizes = dict(QUICK if args.quick else FULL)
    if args.levels:
        sizes["levels"] = [int(x) for x in args.levels.split(",")]
    if args.burst_users:
        sizes["burst_users"] = args.burst_users
    if args.scratch_mb:
        sizes["scratch_mb"] = args.scratch_mb
    run_id = secrets.token_hex(2)
    started = datetime.now(timezone.utc)
    out = Path(args.out or Path("bench") / "results" / f"esker-bench-{started:%Y%m%dT%H%M%SZ}")
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(chosen))
    bench = Bench(hub, sizes, progress, run_id, profile=args.profile, gpus=args.gpus, gpu_group=args.gpu_group,
                  scratch_root=args.scratch_root, keep_users=args.keep_users)
    results = {"esker_bench": 1, "run_id": run_id, "started": started.isoformat(), "hub": url,
               "jupyterhub": version, "quick": args.quick, "sizes": sizes,
               "client": {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count()},
               "benchmarks": {}}
    try:
        for name in chosen:
            progress.start(name)
            t0 = time.monotonic()
            try:
                r = getattr(bench, f"bench_{name}")()
                r["status"] = "skipped" if r.get("skipped") else "ok"
            except Exception as e:  # noqa: BLE001 - one broken benchmark must not lose the others
                r = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
                     "traceback": traceback.format_exc()[-3000:], "figures": []}
            r["seconds"] = round(time.monotonic() - t0, 2)
            results["benchmarks"][name] = r
            progress.done(r["status"] + (f": {r.get('skipped') or r.get('error')}" if r["status"] != "ok" else ""))
    finally:
        bench.cleanup()
    results["finished"] = datetime.now(timezone.utc).isoformat()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_csv(results, out / "results.csv")
    results["plots"] = plot(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for r in rows(results):
        print(f"{r['benchmark']:<11} {r['case']:<16} {r['metric']:<16} {r['value']:>11.3f} {r['unit']}")
    print(f"Results: {out}/results.json, results.csv, {', '.join(results['plots'])}")
    if args.compare:
        print()
        print_compare(compare(results, json.loads(Path(args.compare).read_text())))
    errors = [n for n, r in results["benchmarks"].items() if r["status"] == "error"]
    if errors:
        print(f"FAILED: {', '.join(errors)}", file=sys.stderr)
    return 1 if errors else 0


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run the reference benchmarks against a live hub",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="the hub's URL (default: from $ESKER_CONFIG and $ESKER_PORT)")
    p.add_argument("--token", help="admin API token (default: $ESKER_ADMIN_TOKEN)")
    p.add_argument("--out", help="results folder (default: bench/results/esker-bench-<UTC time>)")
    p.add_argument("--quick", action="store_true", help="a small run: 1 and 2 users, 3 attendees, small sizes")
    p.add_argument("--only", metavar="LIST", help=f"comma-separated benchmarks (default all: {','.join(BENCHMARKS)})")
    p.add_argument("--levels", metavar="N,N", help="spawn concurrency levels (default 1,10,30; quick 1,2)")
    p.add_argument("--burst-users", type=int, help="workshop attendees (default 30; quick 3)")
    p.add_argument("--scratch-mb", type=int, help="MB written and read in scratch (default 1024; quick 32)")
    p.add_argument("--profile", default="minimal", help="profile for spawn, burst, s3, scratch (default minimal)")
    p.add_argument("--gpus", default="1", help="GPUs asked for the tensorflow run (default 1; CPU if refused)")
    p.add_argument("--gpu-group", default="gpu-users", help="group that may ask for GPUs (default gpu-users)")
    p.add_argument("--scratch-root", help="where to measure the raw disk on this host (default: the parent of "
                   "the server's SCRATCH_DIR)")
    p.add_argument("--keep-users", action="store_true", help="do not delete the bench users afterwards")
    p.add_argument("--compare", metavar="REFERENCE.json", help="print each figure's ratio to a reference run")
    p.add_argument("--compare-only", metavar="RESULTS.json",
                   help="with --compare: compare two result files, run nothing")
    p.set_defaults(func=cmd_bench)
