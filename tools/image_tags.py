#!/usr/bin/env python3
"""Write Esker's image tags into the default config (esker.yaml) and the Helm values (helm/esker/values.yaml).

Only image references to Esker's own images change; every other byte of the files (comments, order, quoting,
other images) stays as it was. An image is Esker's when the last part of its repository is one of:

    minimal-notebook  scikit-learn-notebook  spark-notebook  tensorflow-gpu-notebook  hub

Two shapes are understood, in either file:

    image: quay.io/esker/spark-notebook:2026.11        # one scalar (profiles, kubespawner_override, ...)

    image:                                             # z2jh style: name/repository and tag siblings
      name: quay.io/esker/hub
      tag: "2026.11"

Usage:
    python tools/image_tags.py 2026.12                  # set the tag everywhere
    python tools/image_tags.py 2026.12 --registry registry.example.org/esker
    python tools/image_tags.py --current                # print the tag esker.yaml uses now
    python tools/image_tags.py --list [TAG]             # print the image references, one a line
    python tools/image_tags.py 2026.12 --check          # exit 1 if a file would change (CI)

Standard library only, so it runs before any environment exists.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# images/<dir> -> the repository name it is published as.
IMAGES = {
    "minimal": "minimal-notebook",
    "scikit-learn": "scikit-learn-notebook",
    "spark": "spark-notebook",
    "tensorflow-gpu": "tensorflow-gpu-notebook",
    "hub": "hub",
}
DEFAULT_REGISTRY = "quay.io/esker"
OURS = set(IMAGES.values())

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SCALAR = re.compile(
    r"""^(?P<lead>\s*(?:-\s+)?image:\s*)(?P<q>["']?)(?P<repo>[^\s"'#@]+?)(?::(?P<tag>[^\s"'#@:/]+))?"""
    r"""(?P<digest>@sha256:[0-9a-f]{64})?(?P=q)(?P<rest>\s*(?:#.*)?)$"""
)
_KEY = re.compile(r"""^(?P<indent>\s*(?:-\s+)?)(?P<key>name|repository|tag):\s*(?P<q>["']?)(?P<value>[^\s"'#]*)(?P=q)(?P<rest>\s*(?:#.*)?)$""")


def is_ours(repo: str) -> bool:
    return repo.rsplit("/", 1)[-1] in OURS


def _repo(repo: str, registry: str | None) -> str:
    return f"{registry.rstrip('/')}/{repo.rsplit('/', 1)[-1]}" if registry else repo


def _indent(line: str) -> int:
    m = re.match(r"\s*(?:-\s+)?", line)
    return len(m.group(0)) if m else 0


def update_text(text: str, tag: str, registry: str | None = None) -> tuple[str, list[str]]:
    """Return ``text`` with Esker's image tags set to ``tag``, and a list of the changes made.

    A pinned digest (``@sha256:...``) on a changed reference is dropped: it belonged to the old tag.
    """
    if not _TAG.match(tag):
        raise ValueError(f"not a valid image tag: {tag!r}")
    lines = text.splitlines(keepends=True)
    changes: list[str] = []

    for i, raw in enumerate(lines):
        body = raw.rstrip("\r\n")
        eol = raw[len(body):]
        m = _SCALAR.match(body)
        if m and m.group("repo") and is_ours(m.group("repo")) and ":" not in m.group("repo").rsplit("/", 1)[-1]:
            new_ref = f"{_repo(m.group('repo'), registry)}:{tag}"
            old_ref = m.group("repo") + (f":{m.group('tag')}" if m.group("tag") else "") + (m.group("digest") or "")
            if new_ref != old_ref:
                q = m.group("q")
                lines[i] = f"{m.group('lead')}{q}{new_ref}{q}{m.group('rest')}{eol}"
                changes.append(f"line {i + 1}: {old_ref} -> {new_ref}")
            continue
        k = _KEY.match(body)
        if not (k and k.group("key") in ("name", "repository") and is_ours(k.group("value"))):
            continue
        # z2jh style: the sibling `tag:` in the same mapping (same indentation, same block).
        level = _indent(body)
        if registry:
            new_repo = _repo(k.group("value"), registry)
            if new_repo != k.group("value"):
                q = k.group("q")
                lines[i] = f"{k.group('indent')}{k.group('key')}: {q}{new_repo}{q}{k.group('rest')}{eol}"
                changes.append(f"line {i + 1}: {k.group('value')} -> {new_repo}")
        first, last = _block_bounds(lines, i)
        for j in range(first, last + 1):
            other = lines[j].rstrip("\r\n")
            t = _KEY.match(other)
            if j == i or _indent(other) != level or not (t and t.group("key") == "tag"):
                continue
            if t.group("value") != tag:
                q = t.group("q") or '"'  # a bare tag like 2026.11 would read as a number: quote it
                lines[j] = f"{t.group('indent')}tag: {q}{tag}{q}{t.group('rest')}{lines[j][len(other):]}"
                changes.append(f"line {j + 1}: tag {t.group('value') or '(empty)'} -> {tag}")
            break
    return "".join(lines), changes


def _is_item(line: str) -> bool:
    return re.match(r"\s*-\s", line) is not None


def _significant(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _block_bounds(lines: list[str], i: int) -> tuple[int, int]:
    """First and last line index of the YAML mapping that line ``i`` is a key of."""
    level = _indent(lines[i])
    first = i
    if not _is_item(lines[i]):
        j = i - 1
        while j >= 0:
            prev = lines[j].rstrip("\r\n")
            if _significant(prev):
                if _indent(prev) < level:
                    break
                if _indent(prev) == level and _is_item(prev):
                    first = j  # the list item this mapping starts with
                    break
                if _indent(prev) == level:
                    first = j
            j -= 1
    last = i
    j = i + 1
    while j < len(lines):
        nxt = lines[j].rstrip("\r\n")
        if _significant(nxt):
            if _indent(nxt) < level or (_is_item(nxt) and _indent(nxt) <= level):
                break
            last = j
        j += 1
    return first, last


def current_tag(config: Path) -> str | None:
    """The tag the first Esker image in ``config`` uses."""
    for line in config.read_text().splitlines():
        m = _SCALAR.match(line)
        if m and m.group("repo") and is_ours(m.group("repo")) and m.group("tag"):
            return m.group("tag")
    return None


def references(tag: str, registry: str = DEFAULT_REGISTRY) -> dict[str, str]:
    """images/<dir> -> the full reference it is built and pushed as."""
    return {d: f"{registry.rstrip('/')}/{name}:{tag}" for d, name in IMAGES.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="image_tags.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Files that do not exist are skipped (the Helm values are optional).",
    )
    p.add_argument("tag", nargs="?", help="the new tag, for example 2026.12")
    p.add_argument("--registry", help="also move the images to this registry/namespace, e.g. registry.example.org/esker")
    p.add_argument("--config", type=Path, default=ROOT / "esker.yaml", help="Esker config (default: esker.yaml)")
    p.add_argument("--values", type=Path, default=ROOT / "helm" / "esker" / "values.yaml",
                   help="Helm values (default: helm/esker/values.yaml)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    p.add_argument("--dry-run", action="store_true", help="print the changes without writing them")
    p.add_argument("--current", action="store_true", help="print the tag the config uses now and exit")
    p.add_argument("--list", action="store_true", help="print `dir reference` for every image and exit")
    args = p.parse_args(argv)

    if args.current or (args.list and not args.tag):
        tag = current_tag(args.config) if args.config.is_file() else None
        if tag is None:
            print(f"no Esker image tag found in {args.config}", file=sys.stderr)
            return 1
        if args.current:
            print(tag)
            return 0
        args.tag = tag
    if not args.tag:
        p.error("give a tag (or --current / --list)")
    if args.list:
        for d, ref in references(args.tag, args.registry or DEFAULT_REGISTRY).items():
            print(d, ref)
        return 0

    pending = False
    for path in (args.config, args.values):
        if not path.is_file():
            print(f"{path}: not there, skipped")
            continue
        old = path.read_text()
        try:
            new, changes = update_text(old, args.tag, args.registry)
        except ValueError as e:
            p.error(str(e))
        for c in changes:
            print(f"{path}: {c}")
        if new == old:
            print(f"{path}: up to date")
            continue
        pending = True
        if not (args.check or args.dry_run):
            path.write_text(new)
    return 1 if (args.check and pending) else 0


if __name__ == "__main__":
    sys.exit(main())
