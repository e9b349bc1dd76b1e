"""`esker fn`: the same command as `esker fn` in a notebook environment (esker_client.functions.cli)."""

from __future__ import annotations


def register(sub) -> None:
    try:
        from esker_client.functions.cli import register as fn_register
    except ImportError:  # a hub venv installed before esker-client was part of it: say how to get it
        p = sub.add_parser("fn", help="functions (needs esker-client: make install)")
        p.set_defaults(func=lambda args: print("esker fn needs the esker-client package in this venv: run "
                                              "`make install` (uv pip install --no-deps -e images/esker-client)")
                       or 1)
        return
    fn_register(sub)
