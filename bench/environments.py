"""Local environments: how long each profile's environment takes to prepare, cold and warm, and how long
its demo notebook takes to run in it. Side by side in one run.

- cold: the environment is built from its lock file with uv's download cache warm (a fresh hub on a
  machine that has built it once); `--cold-cache` also empties uv's cache (a brand-new machine, downloads
  included);
- warm: the environment exists; what a spawn pays to find it ready.
- notebook: `jupyter execute` of the profile's demo notebook with that environment's kernel, Spark on
  local[2] (no hub involved; the hub path is covered by tests/hub/test_notebooks.py).

    .venv/bin/python bench/environments.py [--envs minimal,spark,...] [--cold-cache] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = {"spark": "weather-spark", "scikit-learn": "scikit-learn", "tensorflow-gpu": "tensorflow-training"}


def build(builder, name: str) -> float:
    async def go():
        async for _ in builder.ensure(name):
            pass

    t0 = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - t0


def run_notebook(env_path: Path, notebook: str) -> float:
    work = Path(tempfile.mkdtemp(prefix="nb-bench-"))
    scratch = work / "scratch"
    (scratch / "tmp").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPARK_", "ESKER_", "PYSPARK"))}
    env.update(PATH=f"{env_path}/bin:/usr/bin:/bin", SCRATCH_DIR=str(scratch), TMPDIR=str(scratch / "tmp"),
               CUDA_VISIBLE_DEVICES="", HOME=str(work), PYSPARK_PYTHON=f"{env_path}/bin/python",
               PYSPARK_SUBMIT_ARGS="--master local[2] pyspark-shell", SPARK_MASTER="local[2]")
    src = REPO / "notebooks" / "demo" / f"{notebook}.ipynb"
    t0 = time.perf_counter()
    r = subprocess.run([f"{env_path}/bin/jupyter", "execute", "--output", str(work / "out.ipynb"), str(src)],
                       env=env, cwd=work, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"{notebook} failed:\n{r.stderr[-2000:]}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", default="minimal,scikit-learn,spark,tensorflow-gpu")
    ap.add_argument("--cold-cache", action="store_true", help="also empty uv's cache (downloads everything)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from esker.system.envs import EnvironmentBuilder

    root = Path(tempfile.mkdtemp(prefix="env-bench-", dir="/tmp"))
    if args.cold_cache:
        os.environ["UV_CACHE_DIR"] = str(root / "uv-cache")
    builder = EnvironmentBuilder(root / "envs", REPO / "images")
    rows = []
    try:
        for name in args.envs.split(","):
            cold = build(builder, name)
            warm = build(builder, name)
            env_path = builder.get(name).path
            size = sum(f.stat().st_size for f in env_path.rglob("*") if f.is_file() and not f.is_symlink())
            nb = run_notebook(env_path, NOTEBOOKS[name]) if name in NOTEBOOKS else None
            row = {"environment": name, "cold_seconds": round(cold, 2), "warm_seconds": round(warm, 4),
                   "size_mb": round(size / 2**20), "notebook_seconds": round(nb, 1) if nb else None,
                   "uv_cache": "empty" if args.cold_cache else "warm"}
            rows.append(row)
            print(f"{name:15s} cold {cold:7.1f}s  warm {warm * 1000:7.1f}ms  {row['size_mb']:6d} MB"
                  + (f"  notebook {nb:6.1f}s" if nb else ""), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "environments.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "environments.json").write_text(json.dumps(rows, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        names = [r["environment"] for r in rows]
        ax.bar(names, [r["cold_seconds"] for r in rows], label="cold build")
        ax.bar(names, [r["notebook_seconds"] or 0 for r in rows], label="demo notebook run", alpha=0.7)
        ax.set_ylabel("seconds")
        ax.set_title("Local environments: preparation and notebook time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "environments.png", dpi=100)
    except ImportError:
        pass
    print(f"wrote {out}/environments.csv, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
