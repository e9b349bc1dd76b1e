"""The tests' client for a running hub: the package's own (esker.hub.benchclient), which `esker bench`
uses too, so tests and benchmarks drive the hub the same way."""

from esker.hub.benchclient import Hub, SpawnRefused, run_code, run_notebook  # noqa: F401
