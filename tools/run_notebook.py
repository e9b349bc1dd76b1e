#!/usr/bin/env python3
"""Run notebooks headless with nbclient and check the `RESULT: {...}` line each one prints last.

Run it with the Python of the environment the notebook is for (its kernel is that interpreter's `python3`),
for example the Spark demo in a venv built from images/spark/requirements.lock, against `local[2]`:

    SPARK_MASTER='local[2]' PYSPARK_SUBMIT_ARGS='--master local[2] pyspark-shell' SCRATCH_DIR=/tmp/scratch \\
        /path/to/spark-venv/bin/python tools/run_notebook.py notebooks/demo/weather-spark.ipynb

Prints one JSON line per notebook ({"notebook", "ok", "seconds", "result"}) and exits non-zero when a
notebook fails or prints no RESULT line. `--output DIR` keeps the executed copies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RESULT_PREFIX = "RESULT: "


def result_line(nb) -> dict | None:
    """The JSON object of the last `RESULT: {...}` line printed by any cell, or None."""
    found = None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                for line in out.get("text", "").splitlines():
                    if line.startswith(RESULT_PREFIX):
                        found = json.loads(line[len(RESULT_PREFIX):])
    return found


def run(path: Path, timeout: int, kernel: str, output: Path | None) -> dict:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as e:
        error = str(e).splitlines()[-1] if str(e) else repr(e)
    except Exception as e:  # timeouts, dead kernels
        error = f"{type(e).__name__}: {e}"
    seconds = round(time.perf_counter() - start, 1)
    if output:
        output.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output / path.name)
    result = result_line(nb)
    if error is None and result is None:
        error = "the notebook printed no RESULT line"
    return {"notebook": str(path), "ok": error is None, "seconds": seconds, "result": result, "error": error}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="+", type=Path, help="notebook files to run, in order")
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    p.add_argument("--kernel", default="python3", help="kernel name (default python3: this interpreter)")
    p.add_argument("--output", type=Path, help="write the executed notebooks into this directory")
    args = p.parse_args(argv)
    failed = 0
    for path in args.notebooks:
        report = run(path, args.timeout, args.kernel, args.output)
        failed += not report["ok"]
        print(json.dumps(report, sort_keys=True), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
