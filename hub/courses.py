"""Workshops and courses: who is in a course, what content and data they find, and what rights instructors get.

Pure where possible:

- ``courses_from_config`` / ``course_problems``: the ``courses:`` section as data, and the semantic checks
  that name the field (``courses[0].profiles: 'gpu-xl' is not a profile``).
- ``merge_content``: nbgitpuller's merge rules over two directory trees and a state file of delivered hashes.
- ``course_roles`` / ``course_groups`` / ``courses_service``: JupyterHub RBAC roles, groups and the managed
  service entry, as plain dicts for hub/traits.py.

Impure, for the spawner (embedded mode): ``prepare_course_content`` (merge content into ``~/<course>/`` *as the
user*, so the kernel, not path checks, stops a planted symlink from redirecting a root write; set the
datasets' POSIX ACLs) and ``course_environment``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = Path(os.environ.get("ESKER_NOTEBOOKS_DIR") or REPO_ROOT / "notebooks")
STATE_FILE = ".esker-course-state.json"  # in ~/<course>/, hashes of what was delivered (course_merge's)
SKIP = {".git", ".ipynb_checkpoints", "__pycache__", STATE_FILE}
SERVICE_NAME = "esker-courses"
GIT_TIMEOUT = 120


class CourseError(RuntimeError):
    """A course problem a person can act on (unreachable git, unknown course)."""


# --------------------------------------------------------------------------------------------- model
def parse_when(value: str | datetime) -> datetime:
    """ISO 8601 -> aware datetime; no offset means the hub's local time."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.astimezone()


@dataclass(frozen=True)
class Course:
    name: str
    group: str
    display_name: str = ""
    instructors: tuple[str, ...] = ()
    participants: tuple[str, ...] = ()
    content: Mapping[str, str] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    password: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    seats: int = 0
    idle_timeout: int = 3600
    source: str = "config"  # or "runtime" (created through the service)

    @classmethod
    def from_dict(cls, c: Mapping, source: str = "config") -> "Course":
        w = c.get("window") or {}
        return cls(
            name=c["name"], group=c["group"], display_name=c.get("display_name") or c["name"],
            instructors=tuple(c.get("instructors", ())), participants=tuple(c.get("participants", ())),
            content=dict(c.get("content") or {}), datasets=tuple(c.get("datasets", ())),
            profiles=tuple(c.get("profiles", ())), password=c.get("password"),
            start=parse_when(w["start"]) if w.get("start") else None,
            end=parse_when(w["end"]) if w.get("end") else None,
            seats=int(c.get("seats", 0)), idle_timeout=int(c.get("idle_timeout", 3600)), source=source,
        )

    def to_dict(self, secrets: bool = False) -> dict:
        d = asdict(self)
        for k in ("instructors", "participants", "datasets", "profiles"):
            d[k] = list(d[k])
        d["content"] = dict(self.content)
        d["window"] = ({"start": self.start.isoformat(), "end": self.end.isoformat()}
                       if self.start and self.end else None)
        del d["start"], d["end"]
        if not secrets:
            d["password"] = bool(self.password)  # whether one is set, never the value
        return d

    def is_instructor(self, name: str) -> bool:
        return name in self.instructors

    def is_participant(self, groups: Iterable[str]) -> bool:
        return self.group in set(groups)


def courses_from_config(cfg) -> list[Course]:
    data = getattr(cfg, "data", cfg)
    return [Course.from_dict(c) for c in data.get("courses", ())]


def courses_for(user, courses: Iterable[Course]) -> list[Course]:
    """The courses a UserInfo takes part in (group member) or teaches."""
    return [c for c in courses if c.is_participant(user.groups) or c.is_instructor(user.name)]


def course_problems(cfg) -> list[str]:
    """Checks a schema cannot make; each names the field. Called from hub/config.py `_semantic_problems`."""
    from .config import parse_size

    data = getattr(cfg, "data", cfg)
    problems: list[str] = []
    profiles = [p["slug"] for p in data.get("profiles", ())]
    datasets = [d["name"] for d in (data.get("storage") or {}).get("datasets", ())]
    seen: set[str] = set()
    for i, c in enumerate(data.get("courses", ())):
        where = f"courses[{i}]"
        if c["name"] in seen:
            problems.append(f"{where}.name: {c['name']!r} is used by another course")
        seen.add(c["name"])
        for p in c.get("profiles", ()):
            if p not in profiles:
                problems.append(f"{where}.profiles: {p!r} is not a profile (profiles: {', '.join(profiles)})")
        for d in c.get("datasets", ()):
            if d not in datasets:
                problems.append(f"{where}.datasets: {d!r} is not in storage.datasets "
                                f"({', '.join(datasets) or 'none declared'})")
        content = c.get("content") or {}
        if content.get("path") and content.get("git"):
            problems.append(f"{where}.content: give path or git, not both")
        if content.get("path"):
            p = Path(content["path"])
            folder = p if p.is_absolute() else NOTEBOOKS_DIR / p
            if ".." in p.parts:
                problems.append(f"{where}.content.path: {content['path']!r} must not contain '..'")
            elif not folder.is_dir():
                problems.append(f"{where}.content.path: {str(folder)!r} is not a folder")
        w = c.get("window")
        if w:
            try:
                start, end = parse_when(w["start"]), parse_when(w["end"])
                if end <= start:
                    problems.append(f"{where}.window.end: must be after window.start")
            except ValueError as e:
                problems.append(f"{where}.window: {e}")
        if c.get("seats") and not w:
            problems.append(f"{where}.seats: seats are reserved during a window; set window.start and window.end")
        if c.get("seats") and not c.get("profiles") and len(profiles) > 1:
            problems.append(f"{where}.profiles: name the profile the seats are for (seats are reserved per profile)")
    cap = data.get("capacity") or {}
    for key in ("memory", "scratch"):
        if cap.get(key) is not None:
            try:
                parse_size(cap[key])
            except ValueError as e:
                problems.append(f"capacity.{key}: {e}")
    return problems


# ------------------------------------------------------------------------------------- merge rules
# One implementation for both modes: esker_client.course_merge (stdlib only) runs here, as the participant in
# embedded mode, and in the notebook image's init container on Kubernetes. Loaded from this checkout's
# images/esker-client first (same revision as the hub), else from an installed esker-client.
CLIENT_MERGE = REPO_ROOT / "images" / "esker-client" / "src" / "esker_client" / "course_merge.py"


def _load_course_merge():
    if CLIENT_MERGE.is_file():
        import importlib.util

        spec = importlib.util.spec_from_file_location("esker_client_course_merge", CLIENT_MERGE)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(mod)
        return mod
    try:
        from esker_client import course_merge

        return course_merge
    except ImportError:
        return None  # the Kubernetes hub image: merges happen in the notebook pods' init containers


_cm = _load_course_merge()
if _cm is not None:
    STATE_FILE, SKIP = _cm.STATE_FILE, _cm.SKIP
    file_hash, upstream_name, merge_content = _cm.file_hash, _cm.upstream_name, _cm.merge_content
    MergeReport = _cm.MergeReport
else:  # pragma: no cover - exercised only in the Kubernetes hub image
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


def fetch_git(url: str, ref: str, cache: Path, timeout: float = GIT_TIMEOUT) -> Path:
    """Clone or update ``url`` at ``ref`` into ``cache`` (hub side). The new checkout is built beside the old
    one and swapped in, so an unreachable remote leaves the previous checkout (or nothing) and raises."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    for d in (cache.parent.parent, cache.parent):
        os.chmod(d, 0o711)
    work = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}-"))
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}

    def git(*args: str, cwd: Path = work) -> str:
        try:
            r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CourseError(f"git {args[0]} of {url} timed out after {timeout:.0f}s") from None
        if r.returncode != 0:
            msg = (r.stderr.strip().splitlines() or ["failed"])[-1]
            raise CourseError(f"cannot fetch {url} ({ref}): {msg}")
        return r.stdout.strip()

    try:
        git("init", "-q", ".")
        git("fetch", "-q", "--depth", "1", url, ref)
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
        return p if p.is_absolute() else NOTEBOOKS_DIR / p
    if c.get("git"):
        cache = git_cache_dir(state_dir, c["git"], c.get("ref", "HEAD"))
        if fetch or not cache.exists():
            fetch_git(c["git"], c.get("ref", "HEAD"), cache)
        return cache / c["subdir"] if c.get("subdir") else cache
    return None


# ------------------------------------------------------------------------ datasets (POSIX ACLs, embedded)
# The kernel's xattr format for POSIX ACLs (linux/posix_acl_xattr.h); no setfacl binary needed.
_ACL_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF


def acl_encode(entries: Iterable[tuple[int, int, int | None]]) -> bytes:
    out = struct.pack("<I", _ACL_VERSION)
    for tag, perm, ident in sorted(entries, key=lambda e: (e[0], e[2] if e[2] is not None else -1)):
        out += struct.pack("<HHI", tag, perm, _UNDEFINED_ID if ident is None else ident)
    return out


def acl_decode(blob: bytes) -> list[tuple[int, int, int | None]]:
    (version,) = struct.unpack_from("<I", blob)
    if version != _ACL_VERSION:
        raise ValueError(f"unknown ACL version {version}")
    out = []
    for off in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, off)
        out.append((tag, perm, None if ident == _UNDEFINED_ID else ident))
    return out


def acl_with_users(mode: int, users: Mapping[int, int]) -> bytes:
    """An access ACL: the mode's owner/group/other bits plus ``users`` {uid: perm}, mask = union."""
    mask = (mode >> 3) & 7
    for p in users.values():
        mask |= p
    entries = [(USER_OBJ, (mode >> 6) & 7, None), (GROUP_OBJ, (mode >> 3) & 7, None), (OTHER, mode & 7, None),
               (MASK, mask, None)] + [(USER, p, uid) for uid, p in users.items()]
    return acl_encode(entries)


def _acl_users(path: str, attr: str) -> dict[int, int]:
    try:
        return {i: p for t, p, i in acl_decode(os.getxattr(path, attr, follow_symlinks=False)) if t == USER}
    except OSError:
        return {}


def grant_dataset(path: str, uid: int, write: bool) -> None:
    """Give ``uid`` read (participants) or read-write (instructors) on a dataset tree, and make it inherited
    (default ACL) by whatever instructors add later. Raises OSError (ENOTSUP) where ACLs are unsupported."""
    for root, dirs, files in os.walk(path):
        for name, is_dir in [(root, True)] + [(os.path.join(root, f), False) for f in files]:
            if os.path.islink(name):
                continue
            perm = (7 if write else 5) if is_dir else (6 if write else 4)
            st = os.lstat(name)
            users = _acl_users(name, "system.posix_acl_access")
            users[uid] = perm if write else users.get(uid, 0) | perm
            os.setxattr(name, "system.posix_acl_access", acl_with_users(st.st_mode & 0o777, users),
                        follow_symlinks=False)
            if is_dir:
                dflt = _acl_users(name, "system.posix_acl_default")
                dflt[uid] = 7 if write else dflt.get(uid, 0) | 5
                os.setxattr(name, "system.posix_acl_default", acl_with_users(0o750, dflt), follow_symlinks=False)


def dataset_dir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "datasets", name)


def ensure_dataset_dir(state_dir: str, name: str) -> str:
    root = os.path.join(state_dir, "datasets")
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o711)  # traverse, not list
    path = dataset_dir(state_dir, name)
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o750)
    return path


# ----------------------------------------------------------------------------------- spawner hooks
def all_courses(runtime) -> list[Course]:
    """esker.yaml's courses with the runtime ones (and runtime updates) from the service's store."""
    from .reservations import CourseStore

    base = courses_from_config(runtime.config)
    return CourseStore.for_state_dir(runtime.state_dir).effective_courses(base)


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


async def prepare_course_content(runtime, user, home: str, uid: int | None, gid: int | None) -> list[str]:
    """Before a server starts: merge each of the user's courses into ``~/<course>/`` and link its datasets as
    ``~/<course>/data/<dataset>``. Returns progress messages. Never fails the spawn: a course whose content
    cannot be fetched says so and leaves the user's files as they were."""
    messages: list[str] = []
    for course in courses_for(user, await asyncio.to_thread(all_courses, runtime)):
        label = course.display_name or course.name
        dest = Path(home) / course.name
        try:
            src = await asyncio.to_thread(content_source, course, runtime.state_dir)
            if src is not None:
                if not src.is_dir():
                    raise CourseError(f"content folder {src} is missing")
                report = await asyncio.to_thread(merge_as_user, str(src), str(dest), uid, gid)
                messages.append(f"Course {label}: notebooks in ~/{course.name} ({report.summary()})")
        except (CourseError, OSError, subprocess.SubprocessError) as e:
            messages.append(f"Course {label}: content not updated ({e}); your files are unchanged")
            continue
        for ds in course.datasets:
            path = await asyncio.to_thread(ensure_dataset_dir, runtime.state_dir, ds)
            write = course.is_instructor(user.name) or user.admin
            if uid is not None and os.geteuid() == 0:
                try:
                    await asyncio.to_thread(grant_dataset, path, uid, write)
                except OSError as e:
                    messages.append(f"Course {label}: dataset {ds} not shared ({e.strerror}: no POSIX ACLs here)")
                    continue
            await asyncio.to_thread(_link, path, dest / "data" / ds, uid, gid)
            messages.append(f"Course {label}: dataset {ds} in ~/{course.name}/data/{ds} "
                            f"({'read-write' if write else 'read-only'})")
    return messages


def course_environment(runtime, user, home: str = "") -> dict[str, str]:
    """Variables for the plan: ESKER_COURSES (comma list), ESKER_COURSE / ESKER_COURSE_DIR (the first)."""
    mine = courses_for(user, all_courses(runtime))
    if not mine:
        return {}
    env = {"ESKER_COURSES": ",".join(c.name for c in mine), "ESKER_COURSE": mine[0].name}
    if home:
        env["ESKER_COURSE_DIR"] = os.path.join(home, mine[0].name)
    if any(c.is_instructor(user.name) for c in mine):
        env["ESKER_COURSE_ROLE"] = "instructor"
    return env


# ------------------------------------------------------------------------------------- RBAC, services
def course_roles(cfg, courses: Iterable[Course] | None = None) -> list[dict]:
    """Roles for ``JupyterHub.load_roles``: a course's instructors may list and read the course group's users,
    start, stop and open their servers, and nobody else's (``!group=`` filters). Participants get nothing
    beyond JupyterHub's default ``user`` role: their own server only.

    Single-user servers cannot resolve ``!group=`` filters (jupyterhub.services.auth.check_scopes), so opening a
    participant's server also needs ``access:servers!user=<participant>``, one per participant known when the
    hub starts (esker.yaml's and runtime courses' participants); people added later are reachable by their
    instructors after the next hub restart. Hub-side rights (list, start, stop) follow the group live."""
    roles = []
    for c in (courses if courses is not None else courses_from_config(cfg)):
        if not c.instructors:
            continue
        g = f"!group={c.group}"
        roles.append({
            "name": f"course-{c.name}-instructors",
            "description": f"Instructors of {c.display_name or c.name}: the {c.group} group's servers",
            "scopes": [f"list:users{g}", f"read:users{g}", f"read:users:activity{g}", f"read:groups{g}",
                       f"read:servers{g}", f"servers{g}", f"access:servers{g}", "admin-ui"]
            + [f"access:servers!user={u}" for u in c.participants if u not in c.instructors],
            "users": list(c.instructors),
        })
    return roles


def course_groups(cfg, courses: Iterable[Course] | None = None) -> dict[str, dict]:
    """``JupyterHub.load_groups`` entries: each course group with its configured participants (adds only)."""
    groups: dict[str, dict] = {}
    for c in (courses if courses is not None else courses_from_config(cfg)):
        members = groups.setdefault(c.group, {"users": []})["users"]
        members += [u for u in c.participants if u not in members]
    return groups


SERVICE_ENV_KEEP = ("ESKER_ENVS_DIR", "ESKER_COURSES_CULL_EVERY", "ESKER_COURSES_PREWARM_EVERY",
                    "ESKER_COURSES_PREWARM_LOOKAHEAD", "ESKER_COURSES_BACKEND", "UV_CACHE_DIR")
SERVICE_SCOPES = ["list:users", "read:users", "read:users:activity", "read:servers", "delete:servers",
                  "admin:users", "list:groups", "read:groups", "admin:groups", "read:hub"]


def courses_service(cfg, deployment, port: int | None = None) -> tuple[dict, dict]:
    """The ``esker-courses`` managed service (REST API + culling) and the role it runs with."""
    if port is None and os.path.isdir(deployment.state_dir):
        from .deployment import stable_port

        port = stable_port(deployment.state_dir, SERVICE_NAME, 0)  # picked once, kept in ports.json
    elif port is None:  # no state dir (a dry rendering of the traitlets): a fixed, recognisable port
        port = 20000 + int(hashlib.sha256(deployment.state_dir.encode()).hexdigest(), 16) % 10000
    service = {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{port}",
        "command": [deployment.python, "-m", "esker.hub.courses_service"],
        # The service pre-warms environments into the folder the spawner uses: pass ESKER_ENVS_DIR on, and the
        # service's own knobs (JupyterHub gives managed services only the variables listed here).
        "environment": {"ESKER_CONFIG": deployment.config_file, "ESKER_STATE_DIR": deployment.state_dir,
                        **{k: v for k, v in os.environ.items() if k in SERVICE_ENV_KEEP}},
        "display": True,
        "oauth_no_confirm": True,
    }
    role = {"name": SERVICE_NAME, "description": "Course management: groups, seats, per-course idle culling",
            "scopes": list(SERVICE_SCOPES), "services": [SERVICE_NAME]}
    return service, role


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "merge":
        os.umask(0o022)
        print(json.dumps(asdict(merge_content(argv[1], argv[2]))))
        return 0
    print("usage: python -m esker.hub.courses merge SRC DEST", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
