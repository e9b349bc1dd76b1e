"""Shared fixtures. Integration tests share one real hub per session (starting one takes seconds and
a Spark cluster); tests that restart the hub start their own."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from ceph_fixture import ceph  # noqa: E402,F401  (the session's throwaway Ceph RGW)
from esker.devhub import RunningHub, prepare_environments  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="per-user accounts need root")

TIERS = ("unit", "hub", "services", "kubernetes", "browser")


def pytest_collection_modifyitems(items):
    """A test's folder is its tier and its marker: `pytest -m unit`, `pytest tests/services`."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def environments():
    """Every profile's environment, built once into the shared cache."""
    prepare_environments(["minimal", "spark", "scikit-learn", "tensorflow-gpu"])


@pytest.fixture(scope="session")
def running_hub(environments, ceph):
    h = RunningHub(ceph=ceph)
    try:
        h.start()
        yield h
    finally:
        h.teardown()


@pytest.fixture(scope="session")
def hub(running_hub):
    return running_hub.hub
