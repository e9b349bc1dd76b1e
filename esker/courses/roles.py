"""What courses add to the hub's configuration, as plain dicts for the configurer: their groups, their
instructors' RBAC roles and the ``esker-courses`` managed service with its role.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

from esker.courses.model import Course, courses_from_config
from esker.system.ports import stable_port

SERVICE_NAME = "esker-courses"


def course_roles(cfg, courses: Iterable[Course] | None = None) -> list[dict]:
    """Roles for ``JupyterHub.load_roles``: a course's instructors may list and read the course group's users,
    start, stop and open their servers, and nobody else's (``!group=`` filters, which the hub resolves against the
    group as it is at each request, so participants added at run time are covered at once). Participants get
    nothing beyond JupyterHub's default ``user`` role: their own server only.

    Roles are read at hub start only (JupyterHub has no REST API for them), and single-user servers cannot resolve
    ``!group=`` filters (jupyterhub.services.auth.check_scopes) for API tokens. Opening a participant's server
    with an instructor's token, and everything about courses created at run time, therefore goes through the
    shares the courses service keeps in step (esker.courses.hubsync.reconcile_access)."""
    roles = []
    for c in (courses if courses is not None else courses_from_config(cfg)):
        if not c.instructors:
            continue
        g = f"!group={c.group}"
        roles.append({
            "name": f"course-{c.name}-instructors",
            "description": f"Instructors of {c.display_name or c.name}: the {c.group} group's servers",
            "scopes": [f"list:users{g}", f"read:users{g}", f"read:users:activity{g}", f"read:groups{g}",
                       f"read:servers{g}", f"servers{g}", f"access:servers{g}", "admin-ui"],
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


SERVICE_ENV_KEEP = ("ESKER_ENVS_DIR", "ESKER_CUDA", "ESKER_COURSES_CULL_EVERY", "ESKER_COURSES_PREWARM_EVERY",
                    "ESKER_COURSES_PREWARM_LOOKAHEAD", "ESKER_COURSES_ACCESS_EVERY", "ESKER_COURSES_ACCESS_FULL_EVERY",
                    "ESKER_COURSES_BACKEND", "ESKER_COURSES_PRESTART_EVERY", "ESKER_COURSES_PRESTART_BACKOFF",
                    "UV_CACHE_DIR")
# What the service's token may do, and why (the same role in both modes: esker.app.configurer.course_traits, for
# the embedded hub and the chart's hub.extraConfig alike). JupyterHub 5+ scopes.
SERVICE_SCOPES = [
    "admin:users",   # create the accounts a course names (POST /users); read members' activity (culling);
                     # report activity of pre-started servers until their grace ends (users:activity)
    "admin:groups",  # create course groups, add and remove members, read them
    "servers",       # read and stop idle participants' servers (culling); start them before a reservation's
                     # window (pre-start; start:servers is also needed to share a server)
    "shares",        # grant and revoke instructors' shares of participants' servers (includes access:servers,
                     # which a share of it needs: the hub lets a token share only what it holds)
]


def courses_service(cfg, deployment, port: int | None = None) -> tuple[dict, dict]:
    """The ``esker-courses`` managed service (REST API + culling) and the role it runs with."""
    if port is None and os.path.isdir(deployment.state_dir):
        port = stable_port(deployment.state_dir, SERVICE_NAME, 0)  # picked once, kept in ports.json
    elif port is None:  # no state dir (a dry rendering of the traitlets): a fixed, recognisable port
        port = 20000 + int(hashlib.sha256(deployment.state_dir.encode()).hexdigest(), 16) % 10000
    service = {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{port}",
        "command": [deployment.python, "-m", "esker.courses.service"],
        # The service pre-warms environments into the folder the spawner uses: pass ESKER_ENVS_DIR on, and the
        # service's own knobs (JupyterHub gives managed services only the variables listed here).
        "environment": {"ESKER_CONFIG": deployment.config_file, "ESKER_STATE_DIR": deployment.state_dir,
                        **{k: v for k, v in os.environ.items() if k in SERVICE_ENV_KEEP}},
        "display": True,
        "oauth_no_confirm": True,
    }
    role = {"name": SERVICE_NAME,
            "description": "Course management: groups, instructors' shares, seats, per-course idle culling",
            "scopes": list(SERVICE_SCOPES), "services": [SERVICE_NAME]}
    return service, role
