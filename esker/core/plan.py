"""Profile + user + choices -> launch plan. Pure functions over plain data: no I/O, no clock.

Two steps, because what a server gets (GPU device ids, a scratch path, S3 keys) is decided by allocation
between them:

1. ``select(catalog, user, user_options)`` validates the request against the catalog and the user's groups
   and returns a :class:`Selection` (what was asked for, resolved). Anything forged or stale raises
   :class:`OptionError` with an HTTP status, before anything is allocated.
2. ``build_plan(selection, placement, site)`` turns the selection and where it landed into a
   :class:`LaunchPlan`, whose ``env`` is what both backends inject, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from esker.core.catalog import Catalog, Profile, UserInfo
from esker.core.contributors import Contributor, private_files
from esker.core.services import ENVIRONMENT
from esker.units import parse_size


class OptionError(ValueError):
    """A spawn request the catalog does not allow. ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Selection:
    """A validated request: the profile, the chosen option values, and the resources they imply."""

    user: UserInfo
    profile: Profile
    choices: Mapping[str, str]
    image: str
    environment: str
    cpu_limit: float
    mem_limit: int
    scratch_size: int
    scratch_keep: bool
    gpus: int
    gpu_type: str | None
    function: str | None = None  # the function a named server fn-<name> runs (esker.core.functions); None: a notebook

    def user_options(self) -> dict:
        """The canonical user_options for this selection (what the hub stores and re-uses)."""
        fn = {"function": self.function} if self.function else {}
        return {"profile": self.profile.slug, **dict(self.choices), **fn}


def _scalar(key: str, value: Any) -> str:
    # HTML forms deliver lists; a JSON client may send numbers. Accept one scalar, refuse the rest.
    if isinstance(value, list):
        if len(value) != 1:
            raise OptionError(f"{key}: expected one value, got {len(value)}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise OptionError(f"{key}: expected a string, got {type(value).__name__}")
    return str(value)


def select(catalog: Catalog, user: UserInfo, user_options: Mapping[str, Any] | None) -> Selection:
    """Validate ``user_options`` (KubeSpawner convention: ``{"profile": slug, option: choice}``)."""
    opts = dict(user_options or {})
    slug = opts.pop("profile", None)
    if slug is None or slug == "":
        profile = catalog.default_for(user)
        if profile is None:
            raise OptionError(f"no profile is available to {user.name}", 403)
    else:
        slug = _scalar("profile", slug)
        profile = catalog.get(slug)
        if profile is None:
            offered = ", ".join(p.slug for p in catalog.for_user(user)) or "none"
            raise OptionError(f"unknown profile {slug!r} (offered: {offered})")
        if not user.allowed(profile.groups):
            raise OptionError(
                f"profile {slug!r} is reserved for the groups {', '.join(profile.groups)}; "
                f"{user.name} is not in any of them",
                403,
            )

    values: dict[str, Any] = {
        "image": profile.image,
        "environment": profile.environment,
        "cpu_limit": profile.cpu_limit,
        "mem_limit": profile.mem_limit,
        "scratch_size": profile.scratch_size,
        "gpus": profile.gpus,
        "gpu_type": profile.gpu_type,
    }
    choices: dict[str, str] = {}
    for key in opts:
        if profile.option(key) is None:
            offered = ", ".join(o.name for o in profile.options) or "none"
            raise OptionError(f"profile {profile.slug!r} has no option {key!r} (its options: {offered})")
    for option in profile.options:
        if option.name in opts:
            name = _scalar(option.name, opts[option.name])
            choice = option.choice(name)
            if choice is None:
                offered = ", ".join(c.name for c in option.choices if user.allowed(c.groups))
                raise OptionError(
                    f"{option.name}: {name!r} is not a choice of profile {profile.slug!r} (choices: {offered})"
                )
            if not user.allowed(choice.groups):
                raise OptionError(
                    f"{option.name}={name!r} is reserved for the groups {', '.join(choice.groups)}", 403
                )
        else:
            choice = option.default_for(user)
            if choice is None:
                raise OptionError(f"{option.name}: no choice is available to {user.name}", 403)
        choices[option.name] = choice.name
        for k, v in choice.override.items():
            values[k] = parse_size(v) if k in ("mem_limit", "scratch_size") else v

    return Selection(
        user=user,
        profile=profile,
        choices=MappingProxyType(choices),
        image=str(values["image"]),
        environment=str(values["environment"]),
        cpu_limit=float(values["cpu_limit"]),
        mem_limit=int(values["mem_limit"]),
        scratch_size=int(values["scratch_size"]),
        scratch_keep=profile.scratch_keep,
        gpus=int(values["gpus"]),
        gpu_type=values["gpu_type"],
    )


@dataclass(frozen=True)
class Placement:
    """Where a selection landed: facts each backend decides, the only inputs that differ between them.

    ``grants`` holds what services prepared for this server (for example ``{"storage": {...keys...}}``);
    ``home`` is the notebook user's home as the server sees it (course folders live there).
    """

    scratch_dir: str
    gpu_devices: tuple[str, ...] = ()
    python: str = "python3"
    home: str = ""
    grants: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class SparkSite:
    """How user sessions reach Spark, and the share of the cluster each one may take. ``master_url`` is an
    external master; "" when each server runs its own (the ``spark`` grant names it)."""

    master_url: str
    cores_per_user: int = 1
    executor_memory: str = "1g"
    driver_memory: str = "1g"
    driver_host: str = "127.0.0.1"
    extra_conf: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Site:
    """Deployment-wide facts the plan needs: which mode, and the services' endpoints."""

    mode: str = "embedded"  # or "kubernetes"
    spark: SparkSite | None = None


@dataclass(frozen=True)
class LaunchPlan:
    user: str
    profile: str
    choices: Mapping[str, str]
    image: str
    environment: str
    cpu_limit: float
    mem_limit: int
    scratch_dir: str
    scratch_size: int
    scratch_keep: bool
    gpus: int
    gpu_type: str | None
    gpu_devices: tuple[str, ...]
    env: Mapping[str, str]
    # Files the backend writes as the user, mode 0600, before start (path -> content): secrets that must not
    # be on a command line, such as the Spark S3A keys ($SPARK_CONF_DIR/spark-defaults.conf).
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def build_plan(
    sel: Selection,
    placement: Placement,
    site: Site,
    contributors: Sequence[Contributor] | None = None,
) -> LaunchPlan:
    """Combine a selection and its placement into the plan both backends run."""
    if len(placement.gpu_devices) != sel.gpus and site.mode == "embedded":
        raise ValueError(f"placement has {len(placement.gpu_devices)} GPUs for a selection of {sel.gpus}")
    env: dict[str, str] = {}
    for contribute in ENVIRONMENT if contributors is None else contributors:
        for k, v in contribute(sel, placement, site).items():
            if k in env and env[k] != v:
                raise ValueError(f"two services set {k} differently")
            env[k] = v
    return LaunchPlan(
        user=sel.user.name,
        profile=sel.profile.slug,
        choices=sel.choices,
        image=sel.image,
        environment=sel.environment,
        cpu_limit=sel.cpu_limit,
        mem_limit=sel.mem_limit,
        scratch_dir=placement.scratch_dir,
        scratch_size=sel.scratch_size,
        scratch_keep=sel.scratch_keep,
        gpus=sel.gpus,
        gpu_type=sel.gpu_type,
        gpu_devices=tuple(placement.gpu_devices),
        env=MappingProxyType(env),
        files=MappingProxyType(private_files(sel, placement, site)),
    )


def with_grants(placement: Placement, **grants: Mapping[str, str]) -> Placement:
    return replace(placement, grants=MappingProxyType({**placement.grants, **grants}))
