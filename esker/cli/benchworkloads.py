"""`esker bench`'s workloads: the code each benchmark runs inside a user's kernel (the disk one on the hub's
host too). Each prints ``RESULT`` and its figures as JSON (DISK_CODE defines ``esker_disk_bw``, whose result
the caller prints); the str.format fields are the sizes, so literal braces are doubled."""

DISK_CODE = r'''
import json, os, time
def esker_disk_bw(directory, mb, block=4 * 1024 * 1024):
    """Write mb MB in 4 MB blocks and fsync, then read it back with its pages dropped from the cache.

    Untimed, first: the same mb MB written to a file that is unlinked unsynced (its pages are dropped, nothing
    reaches the disk), so the timed write gets page-cache pages the guest has just used. On a VM with free page
    reporting (virtio-balloon; this project's machines), memory freed for ~2 s is handed back to the
    hypervisor, and the next write re-faults every page of it there: 1 GB then copies into the page cache in
    2-3 s instead of 0.25 s, a cost of the gap before the measurement (a kernel's start), not of the disk.
    Then a quiet disk (sync, untimed): otherwise the fsync forces the journal commit that carries the previous
    measurement's cleanup (with the `discard` mount option, the discard of every block of the file it
    unlinked), and each case pays for the one before it."""
    path = os.path.join(directory, ".esker-bench-%d-%d" % (os.getpid(), time.time_ns()))
    buf = os.urandom(block)
    n = max(1, mb * 1024 * 1024 // block)
    t = time.perf_counter()
    fd = os.open(path + ".warm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(n):
            os.write(fd, buf)
    finally:
        os.close(fd)
        os.unlink(path + ".warm")
    warm = time.perf_counter() - t
    os.sync()
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
    return {"directory": directory, "bytes": total, "write_s": w, "read_s": r, "warmup_s": warm,
            "write_mb_s": total / w / 1e6, "read_mb_s": total / r / 1e6}
'''

# Spawn to first Spark result, one side (`cluster`: the server's own master from the injected
# PYSPARK_SUBMIT_ARGS; `local`: the same with .master('local[*]')): the kernel runs the driver in a Python
# subprocess of its own, so each side is a fresh session in a fresh driver JVM, never one the other side
# started. Meanwhile it samples the resident memory of the server's master, worker and executor (its own
# processes: found in /proc by their main class and this server's SPARK_CONF_DIR) and of its control group.
SPARK_DRIVER = r'''
import json, sys, time
t = time.perf_counter()
from pyspark.sql import SparkSession
import_s = time.perf_counter() - t
mode, rows, conf = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
t = time.perf_counter()
builder = SparkSession.builder.appName("esker-bench-" + mode)
if mode == "local":
    builder = builder.master("local[*]")
for k, v in conf.items():
    builder = builder.config(k, v)
spark = builder.getOrCreate()
session_s = time.perf_counter() - t
t = time.perf_counter()
total = spark.range(10 ** 6).selectExpr("sum(id)").collect()[0][0]
squares = spark.sparkContext.parallelize(range(10000), 2).map(lambda x: x * x).sum()
first_job_s = time.perf_counter() - t
assert total == 10 ** 6 * (10 ** 6 - 1) // 2 and squares == sum(x * x for x in range(10000))
job_s = None
if rows:
    t = time.perf_counter()
    groups = spark.range(rows).selectExpr("id % 1000 as k", "id * 2 as v").groupBy("k").sum("v").collect()
    assert len(groups) == 1000
    job_s = time.perf_counter() - t
sc = spark.sparkContext
out = {"master": sc.master, "default_parallelism": sc.defaultParallelism, "import_s": import_s,
       "session_s": session_s, "first_job_s": first_job_s, "job_s": job_s, "rows": rows}
spark.stop()
print("DRIVER" + json.dumps(out), flush=True)
'''

SPARK_FIRST_CODE = r'''
import json, os, subprocess, sys, threading, time
MODE, ROWS, CONF_JSON, DRIVER = {mode!r}, {rows!r}, {conf!r}, {driver!r}
CLASSES = {{"master": "org.apache.spark.deploy.master.Master", "worker": "org.apache.spark.deploy.worker.Worker",
           "executor": "org.apache.spark.executor.CoarseGrainedExecutorBackend",
           "driver": "org.apache.spark.deploy.SparkSubmit"}}
CONF = os.environ.get("SPARK_CONF_DIR", "")
def rss_mb():
    got = {{}}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                args = f.read().split(b"\0")
            role = next((r for r, c in CLASSES.items() if c.encode() in args), None)
            if role is None:
                continue
            with open("/proc/%s/environ" % d, "rb") as f:  # this server's processes, not another server's
                if CONF and ("SPARK_CONF_DIR=" + CONF).encode() not in f.read().split(b"\0"):
                    continue
            with open("/proc/%s/status" % d) as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue
        got[role] = got.get(role, 0) + kb / 1024
    return got
def cgroup_mb():
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctl, path = line.split(":", 2)
        if "memory" in ctl.split(","):
            files = ["/sys/fs/cgroup/memory%s/memory.usage_in_bytes" % path]
        elif ctl == "":
            files = ["/sys/fs/cgroup%s/memory.current" % path, "/sys/fs/cgroup/unified%s/memory.current" % path]
        else:
            continue
        for f in files:
            try:
                return int(open(f).read()) / 2 ** 20
            except (OSError, ValueError):
                pass
    return None
idle = {{"rss_mb": rss_mb(), "cgroup_mb": cgroup_mb()}}
peak = {{"rss_mb": {{}}, "cgroup_mb": None}}
stop = threading.Event()
def sample():
    while not stop.is_set():
        for role, mb in rss_mb().items():
            peak["rss_mb"][role] = max(mb, peak["rss_mb"].get(role, 0))
        c = cgroup_mb()
        if c is not None:
            peak["cgroup_mb"] = max(c, peak["cgroup_mb"] or 0)
        stop.wait(0.25)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t = time.perf_counter()
p = subprocess.run([sys.executable, "-c", DRIVER, MODE, str(ROWS), CONF_JSON], capture_output=True, text=True, timeout=1200)
wall = time.perf_counter() - t
stop.set()
sampler.join()
if p.returncode != 0 or "DRIVER" not in p.stdout:
    import shutil
    free = {{d: shutil.disk_usage(d).free // 2 ** 20 for d in (os.environ.get("SCRATCH_DIR"), "/tmp") if d}}
    raise RuntimeError("the %s driver failed (%s; free MB %s): %s %s" % (MODE, p.returncode, free,
                                                                        p.stdout[-1500:], p.stderr[-3000:]))
res = json.loads(p.stdout.rsplit("DRIVER", 1)[1].strip().splitlines()[0])
res.update(driver_wall_s=wall, memory={{"idle": idle, "peak": peak}})
print("RESULT" + json.dumps(res))
'''


def spark_first_code(mode: str, rows: int, conf: dict | None = None) -> str:
    """The kernel's code for one side of the Spark benchmark (``mode``: cluster or local; ``conf``: settings
    the driver's builder adds, for a variant of a side)."""
    import json

    return SPARK_FIRST_CODE.format(mode=mode, rows=rows, conf=json.dumps(conf or {}), driver=SPARK_DRIVER)


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

