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

