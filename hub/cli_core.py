"""`esker check`: validate a config file."""

from __future__ import annotations

import sys

from . import config


def cmd_check(args) -> int:
    try:
        cfg = config.load(args.file)
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    slugs = ", ".join(p["slug"] for p in cfg["profiles"])
    print(f"{cfg.source}: OK ({len(cfg['profiles'])} profiles: {slugs})")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "check",
        help="validate a configuration file",
        description="Validate esker.yaml against the schema; print every bad field with the reason. "
        "Exits 1 when the file is invalid.",
    )
    p.add_argument("file", nargs="?", help="config file (default: $ESKER_CONFIG or the shipped esker.yaml)")
    p.set_defaults(func=cmd_check)
