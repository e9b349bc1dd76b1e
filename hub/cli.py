"""The `esker` command. Each subcommand lives in a module of its own that exposes
``register(subparsers)``; this file only wires them together, so `esker --help` lists them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import esker

# Modules (in esker.hub) that add subcommands. A module that fails to import (an optional dependency
# missing) is reported when its command is used, not when another command runs.
COMMAND_MODULES = [
    "cli_core",  # run, check, env
    "cli_preview",  # preview
    "cli_storage",  # storage, data
    "cli_status",  # status
    "cli_bench",  # bench
    "cli_courses",  # course, reserve
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esker",
        description="Esker: a notebook data hub for science teams (JupyterHub with curated profiles, "
        "Spark, S3 on Ceph, NVMe scratch and GPUs).",
    )
    parser.add_argument("--version", action="version", version=f"esker {esker.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"esker.hub.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"esker.hub.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
