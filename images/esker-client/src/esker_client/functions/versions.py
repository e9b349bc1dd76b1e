"""Version ids and alias rules for published functions: pure, no I/O (docs/functions.md, "Versions")."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
SEMVER_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
FLOAT_RE = re.compile(r"^(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?$")
VID_RE = re.compile(r"^[0-9a-f]{16}$")
MIN_PREFIX = 6


class VersionError(Exception):
    """Base of the version errors; the message says what to do."""


class VersionConflict(VersionError):
    """A pinned semver already names other code."""


class VersionInUse(VersionError):
    """A version an alias points to cannot be deleted."""

    def __init__(self, vid: str, aliases: List[str]):
        self.vid, self.aliases = vid, aliases
        super().__init__(f"version {vid} is in use by alias(es) {', '.join(aliases)}: move them first "
                         f"(esker fn alias NAME ALIAS OTHER_VERSION)")


class UnknownVersion(VersionError, LookupError):
    """A reference that names no version."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid function name, else raise ValueError saying the rule."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"function name {name!r} is invalid: it must start with a lowercase letter and contain "
                         f"only lowercase letters, digits and '-', at most 31 characters")
    return name


def version_id(code: str, profile: str, options: Optional[Mapping] = None, packages: Iterable[str] = ()) -> str:
    """The first 16 hex digits of sha256 over code, profile, options (sorted JSON) and the package lock."""
    h = hashlib.sha256()
    for part in (code, profile or "", json.dumps(dict(options or {}), sort_keys=True),
                 "\n".join(sorted(packages))):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))  # length-prefixed: no ambiguity between the parts
        h.update(data)
    return h.hexdigest()[:16]


def parse_semver(s: str) -> Tuple[int, int, int]:
    """``"1.2.3"`` -> (1, 2, 3); ValueError for anything else."""
    m = SEMVER_RE.match(s or "")
    if not m:
        raise ValueError(f"version {s!r} is not a semver MAJOR.MINOR.PATCH such as 1.2.3")
    return tuple(int(x) for x in m.groups())  # type: ignore[return-value]


def is_pinned(alias: str) -> bool:
    return bool(SEMVER_RE.match(alias))


def is_floating(alias: str) -> bool:
    return bool(FLOAT_RE.match(alias))


def _highest_pinned(aliases: Mapping[str, str], prefix: Tuple[int, ...]) -> Optional[Tuple[int, int, int]]:
    best = None
    for a in aliases:
        if is_pinned(a):
            v = parse_semver(a)
            if v[: len(prefix)] == prefix and (best is None or v > best):
                best = v
    return best


def aliases_after_publish(aliases: Mapping[str, str], vid: str, semver: Optional[str] = None) -> Dict[str, str]:
    """The aliases after publishing ``vid`` (optionally as ``semver``): a new dict, the input is not changed.

    ``latest`` moves to ``vid``; a pinned ``1.2.3`` is set once (VersionConflict if it names other code);
    floating ``1.2`` and ``1`` move to it only when it is the highest ``1.2.x`` / ``1.x.y``.
    """
    out = dict(aliases)
    out["latest"] = vid
    if semver is None:
        return out
    v = parse_semver(semver)
    if semver in out and out[semver] != vid:
        raise VersionConflict(f"version {semver} is already published as {out[semver]} with other code: "
                              f"pinned versions never change, publish a new version number")
    out[semver] = vid
    for prefix in (v[:2], v[:1]):
        if _highest_pinned(out, prefix) == v:
            out[".".join(map(str, prefix))] = vid
    return out


def aliases_to(aliases: Mapping[str, str], vid: str) -> List[str]:
    """The aliases naming ``vid``, sorted."""
    return sorted(a for a, v in aliases.items() if v == vid)


def resolve(aliases: Mapping[str, str], vids: Iterable[str], ref: str) -> str:
    """An alias, a full vid or a unique vid prefix of at least 6 hex digits -> the vid.

    UnknownVersion (a LookupError) lists what exists when nothing or several match.
    """
    vids = list(vids)
    if ref in aliases:
        return aliases[ref]
    if ref in vids:
        return ref
    known = f"aliases: {', '.join(sorted(aliases)) or '(none)'}; versions: {', '.join(vids) or '(none)'}"
    if re.fullmatch(r"[0-9a-f]+", ref or "") and len(ref) >= MIN_PREFIX:
        hits = [v for v in vids if v.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise UnknownVersion(f"version prefix {ref!r} is ambiguous ({', '.join(hits)}): give more digits")
    raise UnknownVersion(f"no version {ref!r} (use an alias, a version id or a prefix of at least {MIN_PREFIX} "
                         f"hex digits); {known}")


def move_alias(aliases: Mapping[str, str], alias: str, target_vid: str) -> Dict[str, str]:
    """Point ``alias`` (``latest`` or a floating ``1.2``/``1``) at ``target_vid``: a rollback. A new dict.

    A pinned semver never moves (VersionConflict); other alias names are refused with ValueError.
    """
    if is_pinned(alias):
        if aliases.get(alias) not in (None, target_vid):
            raise VersionConflict(f"alias {alias} is a pinned version and never moves; move 'latest' or "
                                  f"'{'.'.join(alias.split('.')[:2])}' instead")
    elif alias != "latest" and not is_floating(alias):
        raise ValueError(f"alias {alias!r} is invalid: use 'latest', a floating version such as 1.2 or 1, "
                         f"or a pinned one such as 1.2.3")
    out = dict(aliases)
    out[alias] = target_vid
    return out


def undo(aliases: Mapping[str, str], before: Mapping[str, str], after: Mapping[str, str]) -> Dict[str, str]:
    """Take back one change (``before`` -> ``after``) from ``aliases``, leaving alone every alias that someone
    else has moved since: a refused publish must not undo a concurrent one's aliases. A new dict."""
    out = dict(aliases)
    for alias, vid in after.items():
        if before.get(alias) != vid and out.get(alias) == vid:
            if alias in before:
                out[alias] = before[alias]
            else:
                del out[alias]
    return out
