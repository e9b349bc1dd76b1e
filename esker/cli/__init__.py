"""The `esker` command. Each subcommand lives in a module of its own that exposes
``register(subparsers)``; this file only wires them together, so `esker --help` lists them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import esker

# Modules of this package that add subcommands, in `esker --help` order. Each is imported when the parser
# is built; their own heavy imports (JupyterHub, kubernetes, matplotlib) wait until a command runs.
COMMAND_MODULES = [
    "core",  # run, check, env, stop
    "preview",  # preview
    "storage",  # storage, data
    "status",  # status
    "bench",  # bench
    "courses",  # course, reserve
    "fn",  # fn (esker_client.functions.cli, the same as in a notebook)
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
        importlib.import_module(f"{__name__}.{name}").register(sub)
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
