"""Courses as data: the ``courses:`` section of esker.yaml (and courses created at run time) as
:class:`Course` values, who takes or teaches which, and the checks a schema cannot make. Pure: no I/O
beyond checking that a ``content.path`` folder exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Mapping

from esker import resources
from esker.units import parse_size


class CourseError(RuntimeError):
    """A course problem a person can act on (unreachable git, unknown course)."""


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
    prestart_lead: int = 600  # seconds before a reservation's window: participants' servers started
    prestart_grace: int = 900  # seconds after it opens: pre-started servers kept from the cullers
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
            seats=int(c.get("seats", 0)), idle_timeout=int(c.get("idle_timeout", 3600)),
            prestart_lead=int(c.get("prestart_lead", 600)), prestart_grace=int(c.get("prestart_grace", 900)),
            source=source,
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
    """Checks a schema cannot make; each names the field. Registered with the config loader as the entry
    point ``esker.config_checks: courses`` (pyproject.toml). Backend-dependent checks follow ``hub.mode``
    (absent, as in the courses service's probe of one course: embedded)."""
    data = getattr(cfg, "data", cfg)
    problems: list[str] = []
    kubernetes = (data.get("hub") or {}).get("mode") == "kubernetes"
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
        if content.get("path") and kubernetes:
            # A folder on the hub machine: notebook pods cannot see it, and a ConfigMap (1 MiB) or an image
            # build is no way to ship course material. docs/kubernetes.md says why, and what to do.
            problems.append(f"{where}.content.path: a folder on the hub is not delivered on Kubernetes "
                            "(hub.mode: kubernetes; pods cannot see the hub's files): publish the notebooks in a "
                            "git repository and give content.git (with content.ref and content.subdir if needed)")
        elif content.get("path"):
            p = Path(content["path"])
            folder = p if p.is_absolute() else resources.notebooks_dir() / p
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
