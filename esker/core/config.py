"""Load esker.yaml: parse, validate against the schema, fill defaults, check what a schema cannot.

Errors name the field (``profiles[2].gpus``) and the reason, so a broken file fails at start, not at the
first spawn.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from esker import resources
from esker.core import broker
from esker.core.schema import SCHEMA
from esker.units import parse_size

# Checks that need a domain's own knowledge (courses, ...) register under this entry-point group
# (pyproject.toml); each is ``check(cfg: dict) -> list[str]`` over the filled config, naming the field.
CHECKS_GROUP = "esker.config_checks"


class ConfigError(ValueError):
    """A configuration problem, with every field that is wrong and why."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def field_path(parts) -> str:
    """['profiles', 2, 'gpus'] -> 'profiles[2].gpus'."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _fill_defaults(schema: dict, value: Any) -> Any:
    """Fill schema defaults into objects (recursively), leaving what the user wrote alone."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _fill_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in props:
                    value[key] = _fill_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_fill_defaults(schema["items"], v) for v in value]
    return value


def _schema_problems(data: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        where = field_path(list(err.absolute_path))
        if err.validator == "additionalProperties":
            problems.append(f"{where}: {err.message} (check the spelling; see docs/configuration.md)")
        elif err.validator == "pattern" and err.schema.get("description"):
            problems.append(f"{where}: {err.instance!r} is not valid: {err.schema['description']}")
        else:
            problems.append(f"{where}: {err.message}")
    return problems


def _semantic_problems(cfg: dict, images_dir: Path) -> list[str]:
    problems = []
    seen = set()
    defaults = 0
    gpu_types = set(cfg["gpus"]["types"])
    for i, prof in enumerate(cfg["profiles"]):
        where = f"profiles[{i}]"
        if prof["slug"] in seen:
            problems.append(f"{where}.slug: {prof['slug']!r} is used by another profile")
        seen.add(prof["slug"])
        defaults += prof["default"]
        for key in ("mem_limit", "scratch_size"):
            try:
                parse_size(prof[key])
            except ValueError as e:
                problems.append(f"{where}.{key}: {e}")
        envs = {prof["environment"]}
        types = {prof["gpu_type"]} - {None}
        for oname, opt in prof["options"].items():
            n_default = sum(1 for c in opt["choices"].values() if c.get("default"))
            if n_default > 1:
                problems.append(f"{where}.options.{oname}: more than one choice is marked default")
            for cname, choice in opt["choices"].items():
                ov = choice.get("override", {})
                if "environment" in ov:
                    envs.add(ov["environment"])
                if "gpu_type" in ov:
                    types.add(ov["gpu_type"])
                for key in ("mem_limit", "scratch_size"):
                    if key in ov:
                        try:
                            parse_size(ov[key])
                        except ValueError as e:
                            problems.append(f"{where}.options.{oname}.choices.{cname}.override.{key}: {e}")
        for env in sorted(envs) if images_dir.is_dir() else ():
            if not (images_dir / env / "requirements.lock").is_file():
                problems.append(
                    f"{where}.environment: {env!r} has no images/{env}/requirements.lock to build it from"
                )
        for t in sorted(types - gpu_types):
            problems.append(f"{where}: gpu_type {t!r} is not declared under gpus.types")
    if defaults > 1:
        problems.append("profiles: more than one profile is marked default")
    devices = cfg["gpus"]["devices"]
    for i, d in enumerate(devices if isinstance(devices, list) else ()):
        if isinstance(d, dict) and d.get("type") is not None and d["type"] not in gpu_types:
            problems.append(f"gpus.devices[{i}].type: {d['type']!r} is not declared under gpus.types")
    ids = [str(d["id"] if isinstance(d, dict) else d) for d in (devices if isinstance(devices, list) else ())]
    for dup in sorted({x for x in ids if ids.count(x) > 1}):
        problems.append(f"gpus.devices: device {dup!r} is listed more than once")
    hub = cfg["hub"]
    if hub["ip"] not in ("127.0.0.1", "localhost", "::1") and not os.environ.get("ESKER_ALLOW_PUBLIC"):
        # Secure by default: exposing the hub is a deliberate act, not a typo.
        problems.append(
            f"hub.ip: {hub['ip']!r} listens beyond loopback; set ESKER_ALLOW_PUBLIC=1 to confirm you mean it"
        )
    if cfg["auth"]["type"] == "oauth" and "oauth" not in cfg["auth"]:
        problems.append("auth.oauth: required when auth.type is oauth")
    why = broker.check_url(cfg["functions"]["broker"]["url"])
    if why:
        problems.append(f"functions.broker.url: {why}")
    for check in domain_checks():
        problems += check(cfg)
    return problems


def domain_checks() -> list:
    """The registered domain checks, in name order (entry points: no import of the domains from here)."""
    eps = sorted(entry_points(group=CHECKS_GROUP), key=lambda ep: ep.name)
    return [ep.load() for ep in eps]


@dataclass(frozen=True)
class EskerConfig:
    """A validated configuration with defaults filled in (plain dicts, as in the file)."""

    data: dict
    source: str

    def __getitem__(self, key):
        return self.data[key]


def validate(data: Any, source: str = "esker.yaml", images_dir: Path | None = None) -> EskerConfig:
    """Validate parsed YAML; raise ConfigError naming every bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of sections (hub, profiles, ...)"])
    problems = _schema_problems(data)
    if problems:
        raise ConfigError(source, problems)
    filled = _fill_defaults(SCHEMA, copy.deepcopy(data))
    problems = _semantic_problems(filled, images_dir or resources.images_dir())
    if problems:
        raise ConfigError(source, problems)
    return EskerConfig(filled, source)


def load(path: str | os.PathLike | None = None, images_dir: Path | None = None) -> EskerConfig:
    """Read and validate a config file (default: $ESKER_CONFIG, else the shipped esker.yaml)."""
    path = Path(path or resources.default_config())
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read the file: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError(str(path), [f"{where}: not valid YAML ({getattr(e, 'problem', e)})"]) from None
    return validate(data, str(path), images_dir)
