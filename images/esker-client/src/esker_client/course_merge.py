"""Course content into a home folder with nbgitpuller's rules: the one implementation both modes run.

Standard library only, importable on its own and runnable as a script, because it runs in three places:

- the embedded hub imports it (``esker.courses.model`` re-exports :func:`merge_content`) and runs this file as a
  script *as the participant* (``python -I course_merge.py merge SRC DEST``), so the kernel, not path checks,
  stops a planted symlink from redirecting a write;
- on Kubernetes, the notebook pod's init container runs ``python -m esker_client.course_merge merge ...`` as
  the notebook user, from the profile's own image (which installs esker-client), into the home volume;
- tests call :func:`merge_content` directly.

The rules (``merge_content``): new upstream files arrive; files the user did not change follow upstream; files
the user changed are kept; when both changed, upstream lands next to the user's as ``<stem>.upstream<suffix>``;
files the user deleted are not brought back; files removed upstream stay with the user. What was delivered
(SHA-256 per file) is kept in ``<dest>/.esker-course-state.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

STATE_FILE = ".esker-course-state.json"  # in ~/<course>/, hashes of what was delivered
SKIP = {".git", ".ipynb_checkpoints", "__pycache__", STATE_FILE}
GIT_TIMEOUT = 120

PathLike = Union[str, Path]


def file_hash(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def upstream_name(rel: str) -> str:
    """Where the upstream version of a conflicting file lands: lesson.ipynb -> lesson.upstream.ipynb."""
    p = Path(rel)
    return str(p.with_name(f"{p.stem}.upstream{p.suffix}"))


@dataclass
class MergeReport:
    added: List[str] = field(default_factory=list)
    updated: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)  # user edits, upstream unchanged
    conflicts: List[str] = field(default_factory=list)  # both changed: upstream written next to the user's
    not_restored: List[str] = field(default_factory=list)  # deleted by the user, left deleted

    def summary(self) -> str:
        parts = [f"{len(v)} {k.replace('_', ' ')}" for k, v in asdict(self).items() if v]
        return ", ".join(parts) or "up to date"


def _source_files(src: Path) -> Dict[str, Path]:
    out = {}
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not os.path.islink(os.path.join(root, d)))
        for f in sorted(files):
            p = Path(root) / f
            if f in SKIP or p.is_symlink() or not p.is_file():
                continue  # symlinks in content are never delivered
            out[str(p.relative_to(src))] = p
    return out


def _atomic_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".esker-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)  # replaces a symlink itself, never writes through it
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def merge_content(src: PathLike, dest: PathLike, state_file: Optional[PathLike] = None) -> MergeReport:
    """Bring ``src`` into ``dest`` with nbgitpuller's rules, tracking delivered hashes in ``state_file``.

    - new upstream files arrive; files the user did not change follow upstream;
    - files the user changed are kept; if upstream changed too, upstream lands next to them as
      ``<stem>.upstream<suffix>`` (a file already there with the same name that we never delivered counts as
      the user's);
    - files the user deleted are not brought back; files removed upstream stay with the user.

    Run it as the user who owns ``dest``: every write is then the user's own.
    """
    src, dest = Path(src), Path(dest)
    state_path = Path(state_file) if state_file else dest / STATE_FILE
    try:
        state: Dict[str, str] = json.loads(state_path.read_text()).get("files", {})
    except (OSError, ValueError):
        state = {}
    report = MergeReport()
    dest.mkdir(parents=True, exist_ok=True)
    new_state: Dict[str, str] = {}
    for rel, path in _source_files(src).items():
        up = file_hash(path)
        target = dest / rel
        if any(p.is_symlink() for p in [target, *target.parents] if dest in p.parents or p == target):
            report.kept.append(rel)  # a user's symlink on the way: leave it alone
            new_state[rel] = state.get(rel, up)
            continue
        if not target.exists():
            if rel in state:
                report.not_restored.append(rel)
                new_state[rel] = state[rel]
                continue
            _atomic_copy(path, target)
            report.added.append(rel)
            new_state[rel] = up
            continue
        mine = file_hash(target)
        if mine == up:
            new_state[rel] = up
        elif rel in state and mine == state[rel]:
            _atomic_copy(path, target)  # user did not touch it: follow upstream
            report.updated.append(rel)
            new_state[rel] = up
        elif rel in state and up == state[rel]:
            report.kept.append(rel)  # user edited, upstream unchanged
            new_state[rel] = up
        else:
            _atomic_copy(path, dest / upstream_name(rel))  # both changed (or a file of the user's own)
            report.conflicts.append(rel)
            new_state[rel] = up
    fd, tmp = tempfile.mkstemp(dir=state_path.parent, prefix=".esker-state-")
    with os.fdopen(fd, "w") as f:
        json.dump({"files": new_state, "merged_at": datetime.now(timezone.utc).isoformat()}, f, indent=1)
    os.replace(tmp, state_path)
    return report


def link(target: str, at: PathLike) -> bool:
    """Make ``at`` a symlink to ``target`` (datasets: ``~/<course>/data/<name>``). A file or folder of the user's
    own with that name is left alone (returns False)."""
    at = Path(at)
    if at.is_symlink() and os.readlink(at) == target:
        return True
    if at.is_symlink():
        at.unlink()
    elif at.exists():
        return False
    at.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, at)
    return True


def clone(url: str, ref: str, into: PathLike, timeout: float = GIT_TIMEOUT) -> Path:
    """A shallow checkout of ``url`` at ``ref`` (branch, tag or commit) into the empty folder ``into``."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}
    for args in (["init", "-q", "."], ["fetch", "-q", "--depth", "1", url, ref],
                 ["-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"]):
        r = subprocess.run(["git", *args], cwd=into, env=env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"cannot fetch {url} ({ref}): {(r.stderr.strip().splitlines() or ['failed'])[-1]}")
    return into


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m esker_client.course_merge",
                                 description="Merge course content into a folder with nbgitpuller's rules.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge SRC (or a git checkout) into DEST; prints the report as JSON")
    m.add_argument("src", help="content folder (with --git: the folder inside the repository, '.' for its root; "
                   "'' without --git: no content, only --link)")
    m.add_argument("dest")
    m.add_argument("--git", help="clone this URL first (shallow); src is then a folder inside it")
    m.add_argument("--ref", default="HEAD")
    m.add_argument("--link", action="append", default=[], metavar="REL=TARGET",
                   help="after merging, make DEST/REL a symlink to TARGET (datasets)")
    m.add_argument("--keep-going", action="store_true",
                   help="a content problem (unreachable git) is reported and exits 0: the server still starts")
    args = ap.parse_args(argv)
    os.umask(0o022)
    report: Dict[str, object] = {}
    try:
        if args.git:
            with tempfile.TemporaryDirectory(prefix="esker-course-") as tmp:
                checkout = clone(args.git, args.ref, Path(tmp) / "src")
                report = asdict(merge_content(checkout / args.src if args.src else checkout, args.dest))
        elif args.src:
            report = asdict(merge_content(args.src, args.dest))
        else:
            Path(args.dest).mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        if not args.keep_going:
            raise
        print(f"content not updated ({e}); your files are unchanged", file=sys.stderr)
        report = {"error": str(e)}
    for spec in args.link:
        rel, _, target = spec.partition("=")
        if not link(target, Path(args.dest) / rel):
            print(f"{rel}: a file of yours has that name; not linked", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
