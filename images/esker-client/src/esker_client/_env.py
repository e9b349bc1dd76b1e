"""Reading the environment Esker injects, and the errors raised when something is missing."""

from __future__ import annotations

import importlib
import os
from typing import Mapping, Optional


class EskerNotConfigured(RuntimeError):
    """This server was not given something a helper needs.

    ``variable`` names the environment variable that is missing or wrong (or ``None`` when a package is
    missing instead); ``hint`` says what to do about it, usually what to ask the hub administrator.
    """

    def __init__(self, variable: Optional[str], problem: str, hint: str):
        self.variable = variable
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}. {hint}")


class EskerPackageMissing(EskerNotConfigured, ImportError):
    """A helper needs a Python package that this server's environment does not have."""

    def __init__(self, package: str, needed_for: str):
        self.package = package
        profile = current_profile()
        where = f"the {profile!r} profile" if profile else "this environment"
        super().__init__(
            None,
            f"{needed_for} needs the Python package {package!r}, which is not installed in {where}",
            f"Start a server with a profile that includes {package} (see esker_client.describe()), "
            f"or ask your hub administrator to add it to the image.",
        )


def environ(env: Optional[Mapping[str, str]] = None) -> Mapping[str, str]:
    return os.environ if env is None else env


def current_profile(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    return environ(env).get("ESKER_PROFILE") or None


def require(variable: str, problem: str, hint: str, env: Optional[Mapping[str, str]] = None) -> str:
    """The value of ``variable``, or :class:`EskerNotConfigured` when it is unset or empty."""
    value = environ(env).get(variable, "")
    if not value.strip():
        profile = current_profile(env)
        on = f" (profile {profile!r})" if profile else ""
        raise EskerNotConfigured(variable, f"{variable} is not set on this server{on}: {problem}", hint)
    return value


def optional_import(module: str, package: str, needed_for: str):
    """Import ``module`` lazily, turning ImportError into :class:`EskerPackageMissing`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EskerPackageMissing(package, needed_for) from e
