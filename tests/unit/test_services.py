"""The service interface (esker.core.services) as each backend uses it: every service the plan has
variables for is prepared and released by both backends, once each, and nothing else is."""

from __future__ import annotations

import pytest

from esker.core import contributors
from esker.core.services import ENVIRONMENT, SERVICE_ENV, env_of
from esker.spawner.kubernetes import EskerKubeSpawner
from esker.spawner.local import EskerLocalSpawner


@pytest.mark.parametrize("backend", [EskerLocalSpawner, EskerKubeSpawner])
def test_each_backend_runs_every_service_once(backend):
    names = [s.name for s in backend.esker_services]
    assert sorted(names) == sorted(SERVICE_ENV), names
    for service in backend.esker_services:
        assert callable(service.prepare) and callable(service.release)
        assert env_of(service) is SERVICE_ENV[service.name]


def test_the_plan_environment_is_the_profile_and_the_services():
    assert ENVIRONMENT == (contributors.profile_env, *SERVICE_ENV.values())
    public = {name for name, f in vars(contributors).items() if name.endswith("_env") and callable(f)}
    assert {f.__name__ for f in ENVIRONMENT} == public  # no contributor outside a service


def test_both_backends_prepare_in_the_same_order():
    # Progress messages and grants arrive alike: courses first (content), Spark last (it reads the storage).
    assert [s.name for s in EskerLocalSpawner.esker_services] == [s.name for s in EskerKubeSpawner.esker_services]
