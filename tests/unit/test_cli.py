"""Every command has a --help; the generated configuration reference is current."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from esker import docs
from esker.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_expected_commands_exist():
    assert {"check", "run", "prepare", "preview"} <= set(subcommands())


@pytest.mark.parametrize("command", [[]] + [[c] for c in subcommands()])
def test_every_command_has_help(command):
    r = subprocess.run([str(REPO / ".venv" / "bin" / "esker"), *command, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "usage: esker" in r.stdout and len(r.stdout.splitlines()) > 3


def test_configuration_reference_is_current():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == docs.render(), "docs/configuration.md is stale: run `make docs`"
    for field in ("profiles[].gpus", "spark.cores_per_user", "scratch.root", "gpus.devices"):
        assert f"`{field}`" in committed
    assert "c.EskerSpawner.state_dir" in committed
