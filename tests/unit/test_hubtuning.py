"""esker.app.hubtuning: the hub's SQLite pragmas and the batched sweep of the proxy's routes."""

import asyncio
import sqlite3
from datetime import datetime

import jupyterhub
from jupyterhub import orm

from esker.app import hubtuning


def test_sqlite_connections_get_wal_and_normal_sync(tmp_path):
    from sqlalchemy import create_engine, event, text
    from sqlalchemy.engine import Engine

    hubtuning.install_sqlite_pragmas()
    hubtuning.install_sqlite_pragmas()  # idempotent
    try:
        engine = create_engine(f"sqlite:///{tmp_path / 'hub.sqlite'}")
        with engine.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    finally:
        event.remove(Engine, "connect", hubtuning.sqlite_pragmas)  # the rest of the session's engines as they were
    hubtuning.sqlite_pragmas(object())  # not SQLite: left alone
    assert sqlite3.connect(tmp_path / "hub.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class Proxy:
    def __init__(self, routes):
        self.routes, self.checked = routes, None

    async def get_all_routes(self):
        return self.routes

    async def check_routes(self, users, services, routes):
        self.checked = routes


class Log:
    def __init__(self):
        self.warnings = []

    def warning(self, *a):
        self.warnings.append(a[0] % a[1:])

    exception = warning


class App:
    def __init__(self, db, routes):
        self.db, self.proxy, self.log, self.users, self._service_map = db, Proxy(routes), Log(), {}, {}


def route(user, server, when):
    d = {"user": user, "server_name": server}
    if when:
        d["last_activity"] = when
    return {"routespec": f"/user/{user}/{server}", "target": "http://127.0.0.1:1", "data": d}


def test_the_sweep_updates_every_routes_user_and_spawner_in_chunks(monkeypatch):
    db = orm.new_session_factory("sqlite://")()
    old = datetime(2026, 12, 1, 10, 0)
    for i in range(7):
        u = orm.User(name=f"u{i}", last_activity=old if i % 2 else None)
        db.add(u)
        db.commit()
        for name in ("", "big"):
            db.add(orm.Spawner(user=u, name=name, last_activity=old))
    db.commit()
    routes = {f"/user/u{i}/": route(f"u{i}", "", "2026-12-01T11:00:00.000Z") for i in range(7)}
    routes["/user/u3/big"] = route("u3", "big", "2026-12-01T09:00:00Z")  # older than what the hub has: kept
    routes["/user/u4/"] = route("u4", "", None)  # no activity from this proxy: skipped
    routes["/user/ghost/"] = route("ghost", "", "2026-12-01T11:00:00Z")
    routes["/user/u5/nope"] = route("u5", "nope", "2026-12-01T11:00:00Z")
    routes["/services/x/"] = {"routespec": "/services/x/", "target": "http://127.0.0.1:2", "data": {"service": "x"}}
    monkeypatch.setattr(hubtuning, "CHUNK", 3)
    queries = []
    real_query = db.query
    monkeypatch.setattr(db, "query", lambda *a, **k: queries.append(a) or real_query(*a, **k))
    app = App(db, routes)
    asyncio.run(hubtuning.update_last_activity(app))
    new = datetime(2026, 12, 1, 11, 0)
    users = {u.name: u for u in real_query(orm.User)}
    for i in (0, 1, 2, 3, 5, 6):
        assert users[f"u{i}"].last_activity == new and users[f"u{i}"].orm_spawners[""].last_activity == new
    assert users["u4"].last_activity is None and users["u4"].orm_spawners[""].last_activity == old
    assert users["u3"].orm_spawners["big"].last_activity == old  # max(), never back in time
    assert len(queries) == 3  # 8 names in chunks of 3: not two queries per route
    assert app.proxy.checked is routes
    assert any("ghost" in w for w in app.log.warnings) and any("'nope'" in w for w in app.log.warnings)


def test_the_patch_is_for_the_pinned_release_only(monkeypatch):
    from jupyterhub.app import JupyterHub

    original = JupyterHub.update_last_activity
    try:
        monkeypatch.setattr(jupyterhub, "__version__", "7.0.0")
        assert hubtuning.batched_update_last_activity() is False and JupyterHub.update_last_activity is original
        monkeypatch.setattr(jupyterhub, "__version__", "6.1.1")
        assert hubtuning.batched_update_last_activity() is True
        assert JupyterHub.update_last_activity._esker and hubtuning.batched_update_last_activity() is True
    finally:
        JupyterHub.update_last_activity = original
