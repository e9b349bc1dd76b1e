"""Scratch bandwidth from a user's server against the raw disk, same run: a throwaway root hub (so each server's
scratch is its quota filesystem, of the shipped profile's scratch_size), then `esker bench --only scratch`
against it (fsynced writes and cold reads in SCRATCH_DIR, in the server's HOME and on the host, alternating).

    .venv/bin/python bench/scratch.py [--mb 1024] [--rounds 7] [--profile minimal] [--out bench/results/...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from esker import resources
from esker.devhub import ESKER, RunningHub, prepare_environments, test_config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--profile", default="minimal")
    ap.add_argument("--out", default=f"bench/results/scratch-{time.strftime('%Y%m%dT%H%M%S')}")
    args = ap.parse_args()
    prepare_environments([args.profile])
    cfg = test_config("x-", "/nonexistent", storage={"enabled": False})
    shipped = {p["slug"]: p for p in yaml.safe_load(Path(resources.default_config()).read_text())["profiles"]}
    for p in cfg["profiles"]:  # the shipped sizes, not the tests' small ones: what a user gets
        p["scratch_size"] = shipped[p["slug"]]["scratch_size"]
    h = RunningHub(cfg=cfg)
    try:
        h.start()
        cmd = [ESKER, "bench", "--only", "scratch", "--url", h.url, "--token", h.token, "--profile", args.profile,
               "--scratch-mb", str(args.mb), "--scratch-rounds", str(args.rounds), "--out", args.out]
        rc = subprocess.run(cmd, env=h.env()).returncode
        log = Path(h.log_path).read_text(errors="replace").splitlines()
        for line in log:  # what the spawn paid for the filesystem
            if "scratch filesystem of" in line:
                print(line)
        return rc
    finally:
        h.teardown()


if __name__ == "__main__":
    sys.exit(main())
