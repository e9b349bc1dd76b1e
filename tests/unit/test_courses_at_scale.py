"""The courses service's periodic passes cost a few hub API pages, not one request per participant: the idle
culler reads the ready servers page by page, and the full access pass reads the instructors' shares instead of
granting every pair again (docs/scale.md)."""

import asyncio
from datetime import datetime, timedelta, timezone

from esker.courses import hubsync, jobs
from esker.courses.hubsync import HubApi
from esker.courses.model import Course
from esker.state.coursestore import CourseStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def iso(dt):
    return dt.isoformat().replace("+00:00", "Z")


class FakeHub(HubApi):
    """The hub's API for users, groups and shares, in memory; paginated lists as the hub answers them."""

    def __init__(self, users, groups, shares=(), page_max=2):
        self.users, self.groups, self.shares, self.page_max = users, groups, list(shares), page_max
        self.calls = []

    async def request(self, method, path, body=None, headers=None):
        self.calls.append((method, path))
        route, _, query = path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if p)
        if method == "GET" and route == "/users":
            assert params.get("state") == "ready" and headers["Accept"].endswith("pagination+json")
            items = [{"name": n, "servers": {"": s}} for n, s in sorted(self.users.items()) if s.get("ready")]
            return 200, self._page(items, params)
        if method == "GET" and route.startswith("/groups/"):
            return 200, {"name": route[8:], "users": self.groups[route[8:]]}
        if method == "GET" and route.endswith("/shared"):
            who = route.split("/")[2]
            if who not in self.groups.get("staff", ()):
                return 404, {"message": "no such user"}
            items = [{"kind": "user", "server": {"user": {"name": o}, "name": ""}, "user": {"name": w},
                      "scopes": [f"{s}!server={o}/" for s in hubsync.SHARED_SCOPES]}
                     for o, w in self.shares if w == who]
            return 200, self._page(items, params)
        if method == "DELETE" and route.endswith("/server"):
            self.users[route.split("/")[2]] = {}
            return 204, None
        if method == "POST" and route.startswith("/shares/"):
            self.shares.append((route.split("/")[2], body["user"]))
            return 200, {}
        if method == "POST" and route == "/users":  # ensure_users: the instructors' accounts
            self.groups.setdefault("staff", []).extend(u for u in body["usernames"] if u not in self.groups["staff"])
            return 201, []
        raise AssertionError(f"unexpected {method} {path}")

    def _page(self, items, params):
        offset, limit = int(params["offset"]), min(int(params["limit"]), self.page_max)
        nxt = {"offset": offset + limit} if offset + limit < len(items) else None
        return {"items": items[offset:offset + limit], "_pagination": {"offset": offset, "next": nxt}}


class State:
    def __init__(self, api, courses, tmp_path):
        self.api, self._courses = api, courses
        self.store = CourseStore.for_state_dir(str(tmp_path))

    def courses(self):
        return {c.name: c for c in self._courses}


def test_culler_reads_ready_servers_in_pages_and_stops_only_idle_participants(tmp_path):
    idle, busy = iso(NOW - timedelta(hours=3)), iso(NOW - timedelta(minutes=5))
    users = {f"p{i}": {"ready": True, "last_activity": idle if i % 2 else busy} for i in range(7)}
    users["p6"] = {}  # no server
    users["outsider"] = {"ready": True, "last_activity": idle}
    api = FakeHub(users, {"lab": [f"p{i}" for i in range(7)]})
    st = State(api, [Course(name="lab", group="lab", idle_timeout=3600)], tmp_path)
    stopped = asyncio.run(jobs.cull_once(st, now=NOW))
    assert sorted(stopped) == ["p1", "p3", "p5"]  # idle participants; not the busy ones, not an outsider
    gets = [p for m, p in api.calls if m == "GET"]
    assert not any(p.startswith("/users/") for p in gets)  # no request per participant
    assert sum(p.startswith("/users?") for p in gets) == 4  # 7 ready servers in pages of 2


def test_culler_without_courses_asks_nothing(tmp_path):
    api = FakeHub({}, {})
    assert asyncio.run(jobs.cull_once(State(api, [], tmp_path), now=NOW)) == [] and api.calls == []


def test_full_access_pass_grants_only_what_the_hub_lacks_and_records_what_it_has(tmp_path):
    participants = [f"p{i}" for i in range(5)]
    api = FakeHub({}, {"lab": participants, "staff": ["ta"]}, shares=[("p0", "ta"), ("p1", "ta"), ("x", "ta")])
    store = CourseStore.for_state_dir(str(tmp_path))
    course = Course(name="lab", group="lab", instructors=("ta", "gone"))
    out = asyncio.run(hubsync.reconcile_access(api, store, [course], full=True))
    posts = sorted(p for m, p in api.calls if m == "POST" and p.startswith("/shares/"))
    # ta lacks p2-p4; "gone" (unknown to the hub: 404 on its list) lacks all five
    assert posts.count("/shares/p0/") == 1 and posts.count("/shares/p2/") == 2 and len(posts) == 8
    assert out["wanted"] == 10
    assert ("p0", "ta") in store.access_grants() and ("p1", "ta") in store.access_grants()  # held: recorded
    assert ("x", "ta") not in store.access_grants()  # not the courses' share: neither recorded nor revoked
    # the next full pass finds everything in place: nothing granted again
    api.calls.clear()
    asyncio.run(hubsync.reconcile_access(api, store, [course], full=True))
    assert not [p for m, p in api.calls if m == "POST" and p.startswith("/shares/")]
