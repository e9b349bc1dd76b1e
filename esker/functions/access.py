"""Who may call a function and what a publish may start: pure decisions over the hub's token models and the
catalog, so the activator and the publish API are tested as plain data.

- A call needs ``access:servers!server=<owner>/fn-<name>`` among the caller token's scopes (the owner's own
  ``access:servers!user=<owner>`` covers it; shares to users, groups and share codes grant exactly it). The
  check is JupyterHub's own (``jupyterhub.services.auth.check_scopes``), the one the function server makes
  again when the call reaches it.
- A publish is the owner's (a user, never a service) and its profile and options pass the same ``select()``
  a spawn does, so a profile the owner may not use is refused with the spawn's message and status.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from jupyterhub.services.auth import check_scopes

from esker.core.catalog import Catalog, UserInfo
from esker.core.functions import OPTION, check_name, server_name, split_options
from esker.core.plan import OptionError, select
from esker.functions.roles import PUBLISH_SCOPE

VID_RE = re.compile(r"^[0-9a-f]{16}$")
SEMVER_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def access_scope(owner: str, name: str) -> str:
    return f"access:servers!server={owner}/{server_name(name)}"


def may_call(model: Mapping[str, Any] | None, owner: str, name: str) -> bool:
    """Whether a token's model (HubAuth.user_for_token) may call ``owner``'s function ``name``."""
    if not model:
        return False
    return bool(check_scopes({access_scope(owner, name)}, set(model.get("scopes") or ())))


def user_of(model: Mapping[str, Any]) -> UserInfo:
    """The caller as the catalog sees users (groups decide profiles); a service publishes nothing."""
    if model.get("kind", "user") != "user":
        raise OptionError(f"{model.get('kind')} {model.get('name')!r}: only users publish functions", 403)
    return UserInfo(name=str(model.get("name", "")), groups=frozenset(model.get("groups") or ()),
                    admin=bool(model.get("admin")))


def check_publisher(model: Mapping[str, Any], groups: list[str] | tuple[str, ...]) -> None:
    """With functions.publish_groups set, only a token holding the publishers' custom scope publishes (403)."""
    if groups and PUBLISH_SCOPE not in set(model.get("scopes") or ()):
        raise OptionError(f"publishing functions on this hub is for the groups {', '.join(groups)}; "
                          f"{model.get('name')} is not in any of them (or the token lacks {PUBLISH_SCOPE})", 403)


def publish_options(catalog: Catalog, user: UserInfo, name: str, manifest: Any) -> dict:
    """The named server's user_options for a publish of ``manifest`` (docs/functions.md): checked field by field,
    then by the catalog as a spawn is. OptionError (400, or 403 for a profile or choice the user may not use)
    naming the field."""
    check_name(name)
    if not isinstance(manifest, Mapping):
        raise OptionError("the body must be the version's manifest, a JSON object")
    if "name" in manifest and manifest["name"] != name:
        raise OptionError(f"name: the manifest is for {manifest['name']!r}, published as {name!r}")
    vid = manifest.get("vid")
    if not isinstance(vid, str) or not VID_RE.match(vid):
        raise OptionError(f"vid: expected 16 hex digits (the version id), got {vid!r}")
    semver = manifest.get("semver")
    if semver is not None and (not isinstance(semver, str) or not SEMVER_RE.match(semver)):
        raise OptionError(f"semver: expected MAJOR.MINOR.PATCH or null, got {semver!r}")
    profile = manifest.get("profile")
    if not isinstance(profile, str) or not profile:
        raise OptionError(f"profile: expected a profile's slug, got {profile!r}")
    options = manifest.get("options", {})
    if not isinstance(options, Mapping):
        raise OptionError(f"options: expected an object of the profile's options, got {type(options).__name__}")
    if "profile" in options or OPTION in options:
        raise OptionError(f"options: {'profile' if 'profile' in options else OPTION!r} is not a profile option")
    asked = {**options, "profile": profile, OPTION: name}
    function, rest = split_options(server_name(name), asked)
    sel = select(catalog, user, rest)
    return {**sel.user_options(), OPTION: function}
