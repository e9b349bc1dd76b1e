"""Course content for embedded servers: fetch it (a folder of the shipped notebooks, or a git checkout
cached in the state dir) and merge it into each participant's ``~/<course>/`` *as the participant*, so the
kernel, not path checks, stops a planted symlink from redirecting a root write; link the datasets.

The merge rules are nbgitpuller's, implemented once in ``esker_client.course_merge`` (stdlib only): run here
as the participant, and in the notebook image's init container on Kubernetes.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from esker import resources
from esker.courses import acls
from esker.courses.model import Course, CourseError, courses_for

GIT_TIMEOUT = 120


def _load_course_merge():
    """The merge module from the shipped esker-client source (same revision as the hub), else an installed
    esker-client, else None (a Kubernetes hub image: merges happen in the pods' init containers)."""
    script = resources.course_merge_script()
    if script.is_file():
        spec = importlib.util.spec_from_file_location("esker_client_course_merge", script)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(mod)
        return mod
    try:
        from esker_client import course_merge
    except ImportError:
        return None
    return course_merge


_cm = _load_course_merge()
if _cm is not None:
    STATE_FILE, SKIP = _cm.STATE_FILE, _cm.SKIP
    file_hash, upstream_name, merge_content = _cm.file_hash, _cm.upstream_name, _cm.merge_content
    MergeReport = _cm.MergeReport
else:  # pragma: no cover - exercised only in the Kubernetes hub image
    STATE_FILE = ".esker-course-state.json"

    def merge_content(src, dest, state_file=None):
        raise CourseError("esker_client.course_merge is not available on this hub")


def user_python() -> str:
    for cand in (os.environ.get("ESKER_MERGE_PYTHON"), "/usr/bin/python3", "/usr/local/bin/python3"):
        if cand and os.path.exists(cand):
            return cand
    return sys.executable


def merge_as_user(src: str, dest: str, uid: int | None, gid: int | None, timeout: float = 120) -> MergeReport:
    """merge_content in a child process running as uid/gid (root's only job is to start it)."""
    if uid is None or os.geteuid() != 0:
        return merge_content(src, dest)
    # course_merge.py is stdlib-only, so the child runs it as a script with a Python every account can
    # execute (the hub's own may live under /root).
    if _cm is None:
        raise CourseError("esker_client.course_merge is not available on this hub")
    r = subprocess.run(
        [user_python(), "-I", os.path.abspath(_cm.__file__), "merge", src, dest],
        user=uid, group=gid, extra_groups=[], capture_output=True, text=True, timeout=timeout,
        cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": str(Path(dest).parent), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    if r.returncode != 0:
        raise CourseError(f"could not merge the course content: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
    return MergeReport(**json.loads(r.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------------- git sources
def git_cache_dir(state_dir: str, url: str, ref: str) -> Path:
    key = hashlib.sha256(f"{url}\0{ref}".encode()).hexdigest()[:16]
    return Path(state_dir) / "courses" / "git" / key


def _redact(url: str) -> str:
    """``url`` without a password or token in it (https://user:TOKEN@host/... -> https://user:***@host/...)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, host = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def fetch_git(url: str, ref: str, cache: Path, timeout: float = GIT_TIMEOUT) -> Path:
    """Clone or update ``url`` at ``ref`` into ``cache`` (hub side). The new checkout is built beside the old
    one and swapped in, so an unreachable remote leaves the previous checkout (or nothing) and raises."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    for d in (cache.parent.parent, cache.parent):
        os.chmod(d, 0o711)
    work = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}-"))
    # The URL (which may carry a token) reaches git through its environment, never its argv.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "remote.origin.url", "GIT_CONFIG_VALUE_0": url}
    shown = _redact(url)

    def git(*args: str, cwd: Path = work) -> str:
        try:
            r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CourseError(f"git {args[0]} of {shown} timed out after {timeout:.0f}s") from None
        if r.returncode != 0:
            msg = (r.stderr.strip().splitlines() or ["failed"])[-1].replace(url, shown)
            raise CourseError(f"cannot fetch {shown} ({ref}): {msg}")
        return r.stdout.strip()

    try:
        git("init", "-q", ".")
        # "--": a URL or ref that looks like an option (--upload-pack=...) is a name, never an option
        git("fetch", "-q", "--depth", "1", "--", "origin", ref)
        git("-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD")
        rev = git("rev-parse", "HEAD")
        shutil.rmtree(work / ".git")
        (work / ".esker-rev").write_text(rev + "\n")
        for root, dirs, files in os.walk(work):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        old = cache.with_name(cache.name + ".old")
        if cache.exists():
            os.replace(cache, old)
        os.replace(work, cache)
        shutil.rmtree(old, ignore_errors=True)
        return cache
    finally:
        shutil.rmtree(work, ignore_errors=True)


def content_source(course: Course, state_dir: str, fetch: bool = True) -> Path | None:
    """The folder to merge from: notebooks/<path>, or the git cache (fetched now when ``fetch``)."""
    c = course.content
    if c.get("path"):
        p = Path(c["path"])
        return p if p.is_absolute() else resources.notebooks_dir() / p
    if c.get("git"):
        cache = git_cache_dir(state_dir, c["git"], c.get("ref", "HEAD"))
        if fetch or not cache.exists():
            fetch_git(c["git"], c.get("ref", "HEAD"), cache)
        return cache / c["subdir"] if c.get("subdir") else cache
    return None


def _link(target: str, link: Path, uid: int | None, gid: int | None) -> None:
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        return  # the user's own file or folder of that name: leave it
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    if uid is not None and os.geteuid() == 0:
        os.lchown(link, uid, gid if gid is not None else -1)


async def prepare_course_content(courses: Iterable[Course], state_dir: str, user, home: str, uid: int | None,
                                 gid: int | None) -> list[str]:
    """Before a server starts: merge each of the user's courses into ``~/<course>/`` and link its datasets as
    ``~/<course>/data/<dataset>``. Returns progress messages. Never fails the spawn: a course whose content
    cannot be fetched says so and leaves the user's files as they were."""
    messages: list[str] = []
    for course in courses_for(user, courses):
        label = course.display_name or course.name
        dest = Path(home) / course.name
        try:
            src = await asyncio.to_thread(content_source, course, state_dir)
            if src is not None:
                if not src.is_dir():
                    raise CourseError(f"content folder {src} is missing")
                report = await asyncio.to_thread(merge_as_user, str(src), str(dest), uid, gid)
                messages.append(f"Course {label}: notebooks in ~/{course.name} ({report.summary()})")
        except (CourseError, OSError, subprocess.SubprocessError) as e:
            messages.append(f"Course {label}: content not updated ({e}); your files are unchanged")
            continue
        for ds in course.datasets:
            path = await asyncio.to_thread(acls.ensure_dataset_dir, state_dir, ds)
            write = course.is_instructor(user.name) or user.admin
            if uid is not None and os.geteuid() == 0:
                try:
                    await asyncio.to_thread(acls.grant_dataset, path, uid, write)
                except OSError as e:
                    messages.append(f"Course {label}: dataset {ds} not shared ({e.strerror}: no POSIX ACLs here)")
                    continue
            await asyncio.to_thread(_link, path, dest / "data" / ds, uid, gid)
            messages.append(f"Course {label}: dataset {ds} in ~/{course.name}/data/{ds} "
                            f"({'read-write' if write else 'read-only'})")
    return messages


def course_grant(courses: Iterable[Course], user) -> dict[str, str]:
    """The ``courses`` grant of a plan (esker.core.contributors.course_env turns it into variables)."""
    mine = courses_for(user, courses)
    if not mine:
        return {}
    grant = {"names": ",".join(c.name for c in mine)}
    if any(c.is_instructor(user.name) for c in mine):
        grant["role"] = "instructor"
    return grant
