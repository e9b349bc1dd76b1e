"""Where a selection lands in embedded mode, as pure functions: the system account, its home, its scratch,
the GPU ids and the Spark site. The local backend and ``esker preview --backend embedded`` both use them,
so what the preview prints is what a start does.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Mapping, Sequence

from esker.core.plan import Placement, Selection, Site
from esker.runtime import spark_site
from esker.system.accounts import system_username
from esker.system.scratch import scratch_path


def account_name(cfg: Mapping, hub_user: str) -> str:
    """The system account a hub user's servers run as (``users.system_user_prefix`` + a safe name)."""
    return system_username(hub_user, cfg["users"]["system_user_prefix"])


def developer_home(state_dir: str, account: str) -> str:
    """The home in developer mode, where every server runs as the hub's own account."""
    return os.path.join(state_dir, "homes", account)


def scratch_root(cfg: Mapping, state_dir: str) -> str:
    return cfg["scratch"]["root"].replace("{state_dir}", state_dir)


def embedded_site(cfg: Mapping) -> Site:
    return Site(mode="embedded", spark=spark_site(cfg))


def embedded_placement(sel: Selection, cfg: Mapping, state_dir: str, *, account: str, home: str,
                       gpu_devices: Sequence[str] | None = None, python: str = "python3",
                       grants: Mapping[str, Mapping[str, str]] | None = None, server: str = "") -> Placement:
    """Scratch under ``scratch.root`` for the account, its home, and the assigned GPU ids (the first N
    when none are assigned yet, as the preview shows them). A named server (a function's ``fn-<name>``) has a
    scratch of its own, ``<account>.<server>``: each server mounts, limits and wipes its scratch at its own
    start and stop, so one must never unmount another's (account names have no dots: no account collides)."""
    devices = tuple(gpu_devices) if gpu_devices is not None else tuple(str(i) for i in range(sel.gpus))
    where = f"{account}.{server}" if server else account
    return Placement(scratch_dir=scratch_path(scratch_root(cfg, state_dir), where), gpu_devices=devices,
                     python=python, home=home, grants=MappingProxyType(dict(grants or {})))
