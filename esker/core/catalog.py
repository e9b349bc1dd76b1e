"""The catalog: the one place profiles are defined. Everything else (spawn page, both backends, the
pre-pull list, `esker preview`) is derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

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

    def profile_list(self, user: UserInfo, gpus_available: int | None = None) -> list[dict]:
        """The user's profiles in KubeSpawner's ``profile_list`` shape, for the spawn page.

        ``gpus_available`` (embedded mode) marks choices needing more GPUs than the machine has as
        unavailable instead of hiding them, so a GPU-less laptop shows why the option is greyed out.
        """
        out = []
        for p in self.for_user(user):
            options = {}
            for o in p.options:
                choices = {}
                default = o.default_for(user)
                for c in o.choices:
                    if not user.allowed(c.groups):
                        continue
                    need = int(c.override.get("gpus", p.gpus))
                    unavailable = gpus_available is not None and need > gpus_available
                    choices[c.name] = {
                        "display_name": c.display_name,
                        "description": c.description,
                        "default": default is not None and c.name == default.name,
                        "unavailable": (
                            f"needs {need} GPU{'s' if need > 1 else ''}; this hub has {gpus_available}"
                            if unavailable
                            else ""
                        ),
                    }
                if choices:
                    options[o.name] = {"display_name": o.display_name, "choices": choices}
            need = p.gpus
            out.append(
                {
                    "slug": p.slug,
                    "display_name": p.display_name,
                    "description": p.description,
                    "default": p is self.default_for(user),
                    "image": p.image,
                    "profile_options": options,
                    "unavailable": (
                        f"needs {need} GPU{'s' if need > 1 else ''}; this hub has {gpus_available}"
                        if gpus_available is not None and need > gpus_available
                        else ""
                    ),
                    "limits": {
                        "cpu": p.cpu_limit,
                        "memory": p.mem_limit,
                        "scratch": p.scratch_size,
                        "gpus": p.gpus,
                    },
                }
            )
        return out
