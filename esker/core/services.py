"""The one small interface every service (Spark, object storage, scratch, GPUs, courses, the functions' task
broker) has towards a spawn.

- ``env``: what it adds to the server's environment, a pure contributor of the plan
  (:mod:`esker.core.contributors`), the same in both modes;
- ``prepare``: what it takes before start, handed back as the placement with its part filled in (a fact such
  as the GPU ids, or a grant such as the S3 keys in ``placement.grants[name]``);
- ``release``: what it gives back after stop or after a failed start (safe to call twice).

A backend lists its services in order (``EskerSpawner.esker_services``): preparation runs in that order and
release in the reverse one. The plan's environment is :data:`ENVIRONMENT`: the profile's own variables and
then each service's, so a service cannot be run without its variables, nor its variables set without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from esker.core.contributors import (
    Contributor,
    broker_env,
    course_env,
    gpu_env,
    mounts_env,
    profile_env,
    scratch_env,
    spark_env,
    storage_env,
)

if TYPE_CHECKING:  # the plan's types, for annotations only: plan.py imports the contributors
    from esker.core.plan import Placement, Selection

# name -> what the service adds to the environment. Each backend's services use exactly these names.
SERVICE_ENV: dict[str, Contributor] = {
    "scratch": scratch_env,
    "gpus": gpu_env,
    "storage": storage_env,
    "mounts": mounts_env,
    "spark": spark_env,
    "courses": course_env,
    "broker": broker_env,
}
ENVIRONMENT: tuple[Contributor, ...] = (profile_env, *SERVICE_ENV.values())


class Service(Protocol):
    name: str

    async def prepare(self, spawner: Any, sel: "Selection", placement: "Placement") -> "Placement":
        """Take what this server needs; return ``placement`` with this service's part."""

    async def release(self, spawner: Any) -> None:
        """Give back what :meth:`prepare` took (after stop, or after a failed start; safe twice)."""


def env_of(service: Service) -> Contributor:
    return SERVICE_ENV[service.name]
