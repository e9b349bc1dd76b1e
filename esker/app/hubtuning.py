"""What the embedded hub's process needs at 1,000 users that JupyterHub's defaults do not give (docs/scale.md).

* **SQLite in WAL mode with synchronous=NORMAL.** JupyterHub's database calls run on its one event loop, and
  every commit (an activity report, a token's last use, a spawn's state) waits for the disk: in the default
  rollback-journal mode with synchronous=FULL that is several fsyncs per commit, and on a machine whose disk
  is busy (other users' notebooks write to it) one commit took tens of milliseconds, during which the hub
  answers nothing. WAL with NORMAL appends to the log and syncs at checkpoints only; a power cut can lose the
  last commits (activity timestamps, a token minted a moment before), never the database. Readers no longer
  block behind the writer either (the culler and the courses service read while activity is written).
* **The hub's sweep of the proxy's routes in a few queries.** Every ``JupyterHub.last_activity_interval``
  (300 s) the hub reads every route from the proxy and, upstream, looks each route's user and spawners up one
  route at a time: two queries per running server, all in one step of the event loop. At 1,000 running
  servers that held the loop for seconds (measured: bench/scale.py, docs/scale.md), so every request that
  arrived meanwhile waited. ``batched_update_last_activity`` does the same updates with one query per 500
  users and lets the loop serve requests between them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import timezone

log = logging.getLogger("esker.hubtuning")

# The JupyterHub release whose JupyterHub.update_last_activity the batched one replaces (pyproject pins it).
PATCHED_RELEASES = ("6.1.",)
CHUNK = 500


def sqlite_pragmas(dbapi_conn, _record=None) -> None:
    """On each new SQLite connection: WAL (persistent in the file) and synchronous=NORMAL (per connection)."""
    if not isinstance(dbapi_conn, sqlite3.Connection):
        return
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def install_sqlite_pragmas() -> None:
    """For every SQLAlchemy engine of this process (the hub's own database is the only SQLite one it opens
    through SQLAlchemy; Esker's own stores use esker.state.db)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", sqlite_pragmas):
        event.listen(Engine, "connect", sqlite_pragmas)


def route_activity(routes: dict) -> dict[str, list[tuple[str, str]]]:
    """user name -> [(server name, last_activity as the proxy says)] for the user routes that carry one."""
    out: dict[str, list[tuple[str, str]]] = {}
    for route in routes.values():
        data = route.get("data") or {}
        if "user" not in data or "server_name" not in data or "last_activity" not in data:
            continue
        out.setdefault(data["user"], []).append((data["server_name"], data["last_activity"]))
    return out


async def update_last_activity(app) -> None:
    """JupyterHub.update_last_activity (6.1) with the users and their spawners loaded CHUNK at a time."""
    from dateutil.parser import parse as parse_date
    from jupyterhub import orm
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import selectinload

    routes = await app.proxy.get_all_routes()
    wanted = route_activity(routes)
    names = sorted(wanted)
    users = {}
    for i in range(0, len(names), CHUNK):
        q = (app.db.query(orm.User).filter(orm.User.name.in_(names[i:i + CHUNK]))
             .options(selectinload(orm.User._orm_spawners)))
        users.update((u.name, u) for u in q)
        await asyncio.sleep(0)  # requests that arrived meanwhile go first
    for name in names:
        user = users.get(name)
        if user is None:
            app.log.warning("Found no user for route of %s", name)
            continue
        spawners = user.orm_spawners
        for server_name, when in wanted[name]:
            spawner = spawners.get(server_name)
            if spawner is None:
                app.log.warning("Found no spawner %r for route of %s", server_name, name)
                continue
            dt = parse_date(when)
            if dt.tzinfo:  # naive UTC, as the hub keeps it
                dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
            user.last_activity = max(user.last_activity, dt) if user.last_activity else dt
            spawner.last_activity = max(spawner.last_activity, dt) if spawner.last_activity else dt
    try:
        app.db.commit()
    except SQLAlchemyError:
        app.log.exception("Rolling back session due to database error")
        app.db.rollback()
        return
    await app.proxy.check_routes(app.users, app._service_map, routes)


def batched_update_last_activity() -> bool:
    """Put update_last_activity in place of JupyterHub's own, for the pinned release only (another one keeps
    its own: its internals may differ). True when installed. Call it before the hub starts (its periodic
    callback takes the method when the hub starts)."""
    import jupyterhub
    from jupyterhub.app import JupyterHub
    from jupyterhub.utils import catch_db_error

    if not jupyterhub.__version__.startswith(PATCHED_RELEASES):
        log.warning("JupyterHub %s: keeping its own update_last_activity (Esker's batched one is for %s)",
                    jupyterhub.__version__, ", ".join(PATCHED_RELEASES))
        return False
    if getattr(JupyterHub.update_last_activity, "_esker", False):
        return True
    patched = catch_db_error(update_last_activity)
    patched._esker = True
    JupyterHub.update_last_activity = patched
    return True
