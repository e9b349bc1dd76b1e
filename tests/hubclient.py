"""The tests' client for a running hub: the package's own (esker.hubapi), which `esker bench`
uses too, so tests and benchmarks drive the hub the same way."""

from esker.hubapi import Hub, SpawnRefused, run_code, run_notebook  # noqa: F401
