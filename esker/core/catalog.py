"""The catalog: the one place profiles are defined. Everything else (spawn page, both backends, the
pre-pull list, `esker preview`) is derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from esker.core.gpus import Availability, describe
from esker.units import parse_size


@dataclass(frozen=True)
class UserInfo:
    """Who is spawning: the hub user name, its JupyterHub groups, and whether it is an admin."""

    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False

    def allowed(self, groups: Iterable[str]) -> bool:
        groups = tuple(groups)
        return not groups or self.admin or bool(self.groups.intersection(groups))


@dataclass(frozen=True)
class Choice:
    name: str
    display_name: str
    description: str = ""
    default: bool = False
    groups: tuple[str, ...] = ()
    override: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Option:
    name: str
    display_name: str
    choices: tuple[Choice, ...]

    def choice(self, name: str) -> Choice | None:
        return next((c for c in self.choices if c.name == name), None)

    def default_for(self, user: UserInfo) -> Choice | None:
        allowed = [c for c in self.choices if user.allowed(c.groups)]
        return next((c for c in allowed if c.default), allowed[0] if allowed else None)


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str
    image: str
    environment: str
    default: bool = False
    groups: tuple[str, ...] = ()
    cpu_limit: float = 1.0
    mem_limit: int = 2 * 1024**3
    scratch_size: int = 10 * 1024**3
    scratch_keep: bool = False
    gpus: int = 0
    gpu_type: str | None = None
    gpu_idle_timeout: int | None = None  # this profile's gpu_policy (None: the hub's gpus.policy)
    gpu_max_runtime: int | None = None
    spark: bool = False
    storage: str = "optional"
    options: tuple[Option, ...] = ()

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def max_gpus(self) -> int:
        """The most GPUs any choice of this profile can ask for."""
        counts = [self.gpus]
        for opt in self.options:
            counts += [int(c.override.get("gpus", self.gpus)) for c in opt.choices]
        return max(counts)


def _profile_from_config(p: dict) -> Profile:
    options = tuple(
        Option(
            name=oname,
            display_name=o["display_name"],
            choices=tuple(
                Choice(
                    name=cname,
                    display_name=c["display_name"],
                    description=c.get("description", ""),
                    default=c.get("default", False),
                    groups=tuple(c.get("groups", ())),
                    override=MappingProxyType(dict(c.get("override", {}))),
                )
                for cname, c in o["choices"].items()
            ),
        )
        for oname, o in p["options"].items()
    )
    return Profile(
        slug=p["slug"],
        display_name=p["display_name"],
        description=p["description"],
        image=p["image"],
        environment=p["environment"],
        default=p["default"],
        groups=tuple(p.get("groups", ())),
        cpu_limit=float(p["cpu_limit"]),
        mem_limit=parse_size(p["mem_limit"]),
        scratch_size=parse_size(p["scratch_size"]),
        scratch_keep=p["scratch_keep"],
        gpus=p["gpus"],
        gpu_type=p["gpu_type"],
        gpu_idle_timeout=p.get("gpu_policy", {}).get("idle_timeout"),
        gpu_max_runtime=p.get("gpu_policy", {}).get("max_runtime"),
        spark=p["spark"],
        storage=p["storage"],
        options=options,
    )


@dataclass(frozen=True)
class Catalog:
    profiles: tuple[Profile, ...]

    @classmethod
    def from_config(cls, cfg) -> "Catalog":
        """From the validated config: an EskerConfig or its ``data`` dict (defaults filled in)."""
        data = getattr(cfg, "data", cfg)
        return cls(tuple(_profile_from_config(p) for p in data["profiles"]))

    def get(self, slug: str) -> Profile | None:
        return next((p for p in self.profiles if p.slug == slug), None)

    def for_user(self, user: UserInfo) -> list[Profile]:
        return [p for p in self.profiles if user.allowed(p.groups)]

    def default_for(self, user: UserInfo) -> Profile | None:
        mine = self.for_user(user)
        return next((p for p in mine if p.default), mine[0] if mine else None)

    def images(self) -> list[str]:
        """Every container image a profile or choice can start: the pre-pull list."""
        seen: dict[str, None] = {}
        for p in self.profiles:
            seen[p.image] = None
            for o in p.options:
                for c in o.choices:
                    if "image" in c.override:
                        seen[str(c.override["image"])] = None
        return list(seen)

    def environments(self) -> list[str]:
        """Every local environment (images/<name>) a profile or choice can start."""
        seen: dict[str, None] = {}
        for p in self.profiles:
            seen[p.environment] = None
            for o in p.options:
                for c in o.choices:
                    if "environment" in c.override:
                        seen[str(c.override["environment"])] = None
        return list(seen)

    def profile_list(self, user: UserInfo, gpus_available: "int | Mapping[str | None, Availability] | None" = None,
                     gpu_types: Mapping[str, Mapping] | None = None, gpu_problem: str | None = None) -> list[dict]:
        """The user's profiles in KubeSpawner's ``profile_list`` shape, for the spawn page.

        ``gpus_available`` (embedded mode: GPUs per type, None for any type; a plain count means untyped) marks
        choices needing more GPUs of their type than the machine has as unavailable instead of hiding them, so a
        GPU-less laptop shows why the option is greyed out (``gpu_problem``: why there are none), and says how many
        of each type are free now.
        """
        if isinstance(gpus_available, int):
            gpus_available = {None: Availability(gpus_available, gpus_available)}
        types = gpu_types or {}

        def gpu_note(need: int, gpu_type: str | None) -> tuple[str, str]:
            """(why unavailable, how many free) for a choice of ``need`` GPUs of ``gpu_type``."""
            if not need or gpus_available is None:
                return "", ""
            a = gpus_available.get(gpu_type, Availability(0, 0))
            what = describe(gpu_type, types)
            if need > a.total:
                why = f"needs {need} {what}{'s' if need > 1 else ''}; this hub has {a.total}"
                return (why + (f" ({gpu_problem})" if gpu_problem and not a.total else "")), ""
            return "", f"{a.free} of {a.total} {what}{'s' if a.total > 1 else ''} free"

        out = []
        for p in self.for_user(user):
            options = {}
            for o in p.options:
                choices = {}
                default = o.default_for(user)
                for c in o.choices:
                    if not user.allowed(c.groups):
                        continue
                    unavailable, free = gpu_note(int(c.override.get("gpus", p.gpus)),
                                                 c.override.get("gpu_type", p.gpu_type))
                    choices[c.name] = {
                        "display_name": c.display_name,
                        "description": c.description,
                        "default": default is not None and c.name == default.name,
                        "unavailable": unavailable,
                        "gpus_free": free,
                    }
                if choices:
                    options[o.name] = {"display_name": o.display_name, "choices": choices}
            unavailable, free = gpu_note(p.gpus, p.gpu_type)
            out.append(
                {
                    "slug": p.slug,
                    "display_name": p.display_name,
                    "description": p.description,
                    "default": p is self.default_for(user),
                    "image": p.image,
                    "profile_options": options,
                    "unavailable": unavailable,
                    "gpus_free": free,
                    "limits": {
                        "cpu": p.cpu_limit,
                        "memory": p.mem_limit,
                        "scratch": p.scratch_size,
                        "gpus": p.gpus,
                    },
                }
            )
        return out
