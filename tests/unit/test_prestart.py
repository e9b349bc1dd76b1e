"""Pre-starting participants' servers before a reservation's window, as plain data: who is started (within the
seats, those with a server first), what a failed start does (retried after a doubling, bounded backoff), who is
stopped (only a removed participant's server this service started, never one they started themselves), what a
restart finds (the records from the course store reconciled with the hub's server state: nothing doubled, nothing
lost), what the cullers leave alone (until the window's start plus the grace), and the counts for the metrics."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from esker.courses import prestart as P
from esker.courses.reservations import Decision, Reservation
from esker.state.coursestore import CourseStore

T0 = datetime(2030, 3, 5, 9, 0, tzinfo=timezone.utc)
LEAD, GRACE = 600, 900
NAMED = [f"p{i}" for i in range(1, 6)]


def res(seats=3, start=T0, rid="r1"):
    return Reservation(course="ws", profile="minimal", seats=seats, start=start, end=start + timedelta(hours=3),
                       group="ws", id=rid)


def win(r=None):
    return P.Window.of(r or res(), LEAD, GRACE)


def ready(started="2030-03-05T08:51:00+00:00", active=None):
    return P.Server("ready", started, active)


def run_pass(now, r, members, servers, entries, failures=None, answer=lambda u: (202, "")):
    """A pass as the job does it, with the hub's answers given: returns (plan, entries after)."""
    w = win(r)
    plan = P.plan_prestart(now, r, w, members, NAMED, servers, entries, failures)
    after = dict(plan.entries)
    for u in plan.start:
        code, msg = answer(u)
        after[u] = P.after_start(after.get(u), u, w, code, msg, now)
    for u in plan.stop:
        after[u] = P.after_stop(after[u], 204)
    return plan, after


def test_phases():
    w = win()
    assert w.phase(T0 - timedelta(seconds=LEAD + 1)) == "waiting"
    assert w.phase(T0 - timedelta(seconds=LEAD)) == "lead"
    assert w.phase(T0 - timedelta(seconds=1)) == "lead"
    assert w.phase(T0) == "grace"
    assert w.phase(T0 + timedelta(seconds=GRACE)) == "after"
    # lead 0: never pre-started
    w0 = P.Window.of(res(), 0, GRACE)
    assert w0.phase(T0 - timedelta(seconds=1)) == "waiting" and w0.phase(T0) == "grace"
    # a grace longer than the window ends with it
    short = Reservation("ws", "minimal", 3, T0, T0 + timedelta(minutes=5), "ws", "r1")
    assert P.Window.of(short, LEAD, GRACE).phase(T0 + timedelta(minutes=6)) == "after"


def test_nothing_before_the_lead_and_nothing_after_the_grace():
    for now in (T0 - timedelta(hours=1), T0 + timedelta(seconds=GRACE + 1)):
        plan = P.plan_prestart(now, res(), win(), NAMED, NAMED, {}, {})
        assert plan.start == plan.stop == plan.keep_alive == ()


def test_starts_up_to_the_seats_and_says_who_is_left_out():
    now = T0 - timedelta(minutes=9)
    plan = P.plan_prestart(now, res(seats=3), win(), NAMED, NAMED, {}, {})
    assert plan.phase == "lead" and plan.start == ("p1", "p2", "p3") and plan.over_seats == ("p4", "p5")
    s = P.summary(plan, win(), now, LEAD, GRACE)
    assert s["over_seats"] == ["p4", "p5"] and "beyond the 3 seats not pre-started: p4, p5" in s["message"]


def test_servers_already_there_count_toward_the_seats_and_are_left_alone():
    now = T0 - timedelta(minutes=9)
    servers = {"p4": ready("2030-03-05T08:00:00+00:00"), "p5": P.Server("pending")}
    plan = P.plan_prestart(now, res(seats=3), win(), NAMED, NAMED, servers, {})
    assert plan.already == ("p4", "p5") and plan.start == ("p1",) and plan.over_seats == ("p2", "p3")
    assert "p4" not in plan.stop and "p4" not in plan.keep_alive  # not ours: no protection either


def test_members_added_at_run_time_are_started_at_the_next_pass():
    now = T0 - timedelta(minutes=9)
    plan, entries = run_pass(now, res(seats=10), NAMED[:2], {}, {})
    assert plan.start == ("p1", "p2")
    servers = {u: ready() for u in ("p1", "p2")}
    # someone who joined with the password (not named) and a named participant added later
    plan, entries = run_pass(now + timedelta(minutes=1), res(seats=10), ["p1", "p2", "zed", "p3"], servers, entries)
    assert plan.start == ("p3", "zed")  # named participants before the others
    assert {u: e.status for u, e in entries.items()} == {"p1": "running", "p2": "running", "p3": "starting",
                                                          "zed": "starting"}


def test_a_failed_start_is_retried_with_a_bounded_backoff_and_keeps_its_seat():
    now = T0 - timedelta(minutes=10)
    r = res(seats=2)
    plan, entries = run_pass(now, r, NAMED, {}, {}, answer=lambda u: (503, "capacity reserved") if u == "p1" else (202, ""))
    e = entries["p1"]
    assert e.status == "failed" and e.attempts == 1 and "503: capacity reserved" in e.message
    assert P.parse_when(e.next_try) == now + timedelta(seconds=60)
    # before the next try: waiting, and p3 does not take the seat
    plan = P.plan_prestart(now + timedelta(seconds=30), r, win(r), NAMED, NAMED, {"p2": ready()}, entries)
    assert plan.start == () and plan.waiting == ("p1",) and "p3" in plan.over_seats
    # a start accepted by the hub that then fails (the spawn failed later): the hub's message, next backoff
    entries = {**entries, "p1": P.Entry("p1", "starting", 1)}
    plan = P.plan_prestart(now + timedelta(seconds=90), r, win(r), NAMED, NAMED, {"p2": ready()}, entries,
                           failures={"p1": "Spawn failed: the environment minimal could not be built"})
    e = plan.entries["p1"]
    assert e.status == "failed" and e.attempts == 2 and e.message.startswith("Spawn failed: the environment")
    assert P.parse_when(e.next_try) == now + timedelta(seconds=90 + 120)
    assert P.summary(plan, win(r), now, LEAD, GRACE)["failed"][0]["attempts"] == 2
    assert [P.backoff(n).total_seconds() for n in (1, 2, 3, 4, 5, 9)] == [60, 120, 240, 480, 600, 600]
    # retried once the time has come, and ready at last: attempts start again
    plan = P.plan_prestart(now + timedelta(seconds=300), r, win(r), NAMED, NAMED, {"p2": ready()}, plan.entries)
    assert plan.start == ("p1",)
    entries = {**plan.entries, "p1": P.after_start(plan.entries["p1"], "p1", win(r), 202, "", now)}
    plan = P.plan_prestart(now + timedelta(seconds=330), r, win(r), NAMED, NAMED,
                           {"p1": ready("x"), "p2": ready()}, entries)
    assert plan.entries["p1"].status == "running" and plan.entries["p1"].attempts == 0
    # no retry once the window has opened
    failed = {"p1": P.Entry("p1", "failed", 3, "boom", next_try=(T0 - timedelta(hours=1)).isoformat())}
    assert P.plan_prestart(T0 + timedelta(seconds=1), r, win(r), NAMED, NAMED, {}, failed).start == ()


def test_a_removed_participant_has_only_the_pre_started_server_stopped():
    now = T0 - timedelta(minutes=5)
    ours = P.Entry("p1", "running", started="s1")
    theirs = P.Entry("p2", "running", started="s2")  # p2 stopped ours and started their own: started differs
    failed = P.Entry("p3", "failed", 1, "boom")
    servers = {"p1": ready("s1"), "p2": ready("s2-again"), "p4": ready("own")}
    plan = P.plan_prestart(now, res(seats=5), win(), ["p5"], NAMED, servers,
                           {"p1": ours, "p2": theirs, "p3": failed})
    assert plan.stop == ("p1",)  # never p2 (their own now) nor p4 (never ours)
    assert plan.entries["p2"].status == "own" and plan.entries["p3"].status == "stopped"
    after = P.after_stop(plan.entries["p1"], 204)
    assert after.status == "stopped" and after.message.startswith("stopped")
    assert P.after_stop(plan.entries["p1"], 500, "busy").status == "running"  # tried again next pass
    # still during the grace; not after it
    assert P.plan_prestart(T0 + timedelta(minutes=1), res(), win(), [], NAMED, servers, {"p1": ours}).stop == ("p1",)
    assert P.plan_prestart(T0 + timedelta(seconds=GRACE), res(), win(), [], NAMED, servers, {"p1": ours}).stop == ()
    # a deleted reservation's servers go if its window had not opened
    orphan = {"p1": P.after_start(None, "p1", win(), 202, "", now)}
    orphan["p1"] = P.reconcile(orphan["p1"], ready("s1"))
    assert P.orphan_stops(now, orphan, {"p1": ready("s1")}) == ["p1"]
    assert P.orphan_stops(T0 + timedelta(seconds=1), orphan, {"p1": ready("s1")}) == []
    assert P.orphan_stops(now, orphan, {"p1": ready("other")}) == []


def test_a_restart_neither_doubles_nor_loses(tmp_path):
    """The records go through the course store (as a service restart reads them) and are reconciled with the
    hub's servers: pending or ready ones are not started again; one that vanished is started again."""
    store = CourseStore(tmp_path / "courses.sqlite")
    now = T0 - timedelta(minutes=9)
    r = res(seats=3)
    store.reserve(r, lambda n, e: Decision(True))
    plan, entries = run_pass(now, r, NAMED, {}, {})
    store.put_prestart(r.id, entries, P.summary(plan, win(r), now, LEAD, GRACE))
    # the service restarts: a new store object, the hub has p1 ready and p2 still pending
    again = CourseStore(tmp_path / "courses.sqlite").prestart_entries()[r.id]
    assert again == entries
    servers = {"p1": ready("s1"), "p2": P.Server("pending"), "p3": ready("s3")}
    plan, entries = run_pass(now + timedelta(minutes=1), r, NAMED, servers, again)
    assert plan.start == () and plan.over_seats == ("p4", "p5")
    assert {u: e.status for u, e in entries.items()} == {"p1": "running", "p2": "starting", "p3": "running"}
    store.put_prestart(r.id, entries, None, P.outcomes(again, entries))
    # the hub restarts and p3's server is lost (the hub's state is the truth): started again, no one else
    servers = {"p1": ready("s1"), "p2": ready("s2")}
    plan, after = run_pass(now + timedelta(minutes=2), r, NAMED, servers, store.prestart_entries()[r.id])
    assert plan.start == ("p3",) and plan.entries["p3"].status == "gone"
    assert after["p3"].status == "starting"
    store.put_prestart(r.id, after, None, P.outcomes(entries, after))
    assert store.prestart_totals() == {"started": 3}
    # a pass that asks again for the same state changes nothing
    plan2 = P.plan_prestart(now + timedelta(minutes=3), r, win(r), NAMED, NAMED,
                            {**servers, "p3": P.Server("pending")}, after)
    assert plan2.start == () and plan2.stop == ()
    # deleting the reservation keeps the records (the orphan pass stops its servers); expiry drops them
    store.delete_reservation(r.id)
    assert store.prestart_entries()[r.id] and store.prestart_summaries() == {}
    store.reserve(r, lambda n, e: Decision(True))
    store.expire(r.end)
    assert store.prestart_entries() == {}


def test_the_cullers_leave_pre_started_servers_alone_until_start_plus_grace():
    now = T0 - timedelta(minutes=5)
    r = res()
    plan, entries = run_pass(now, r, NAMED[:2], {}, {})
    plan = P.plan_prestart(now + timedelta(minutes=1), r, win(r), NAMED[:2], NAMED,
                           {"p1": ready("s1", now - timedelta(minutes=4)), "p2": ready("s2", now + timedelta(seconds=30))}, entries)
    # keep-alive only where the hub's last_activity is stale
    assert plan.keep_alive == ("p1",)
    by_res = {r.id: plan.entries}
    assert P.protected_users(T0, by_res) == {"p1", "p2"}
    assert P.protected_users(T0 + timedelta(seconds=GRACE - 1), by_res) == {"p1", "p2"}
    assert P.protected_users(T0 + timedelta(seconds=GRACE), by_res) == set()
    # a server the participant owns now, or a failed start, is not protected
    mixed = {r.id: {"a": P.Entry("a", "own", until=win(r).until.isoformat()),
                    "b": P.Entry("b", "failed", until=win(r).until.isoformat())}}
    assert P.protected_users(T0, mixed) == set()
    # no keep-alive after the grace
    late = P.plan_prestart(T0 + timedelta(seconds=GRACE), r, win(r), NAMED[:2], NAMED,
                           {"p1": ready("s1", T0 - timedelta(hours=1))}, plan.entries)
    assert late.keep_alive == ()


def test_server_from_the_hubs_user_model():
    assert P.Server.from_user({"servers": {}}).state == "none"
    s = P.Server.from_user({"servers": {"": {"ready": True, "pending": None, "started": "2030-03-05T08:51:00Z",
                                             "last_activity": "2030-03-05T08:52:00.123Z"}}})
    assert s.state == "ready" and s.last_activity == datetime(2030, 3, 5, 8, 52, 0, 123000, tzinfo=timezone.utc)
    assert P.Server.from_user({"servers": {"": {"ready": False, "pending": "spawn"}}}).state == "pending"
    assert P.Server.from_user({"servers": {"": {"ready": True, "pending": "stop"}}}).state == "stopping"
    assert P.Server.from_user(None).state == "none"


def test_outcomes_count_each_change_once():
    a = {"p1": P.Entry("p1", "starting"), "p2": P.Entry("p2", "starting")}
    b = {"p1": P.Entry("p1", "running", started="s"), "p2": P.Entry("p2", "failed", 1, "x", requested_at="t")}
    assert P.outcomes(a, b) == {"started": 1, "failed": 1}
    assert P.outcomes(b, b) == {}
    c = {"p1": P.after_stop(b["p1"], 204)}
    assert P.outcomes(b, c) == {"stopped": 1}


def test_the_hubs_metrics_read_the_records(tmp_path):
    """esker_prestart_* on the hub's /hub/metrics: the hub process reads what the courses service recorded."""
    from prometheus_client import CollectorRegistry

    from esker import metrics

    path = tmp_path / "courses.sqlite"
    reg = CollectorRegistry()
    reg.register(metrics.PrestartCollector(lambda: str(path)))
    assert reg.get_sample_value("esker_prestart_total", {"outcome": "started"}) == 0
    assert not path.exists()  # a scrape creates no store
    store = CourseStore(path)
    r = res(seats=2)
    store.reserve(r, lambda n, e: Decision(True))
    now = T0 - timedelta(minutes=5)
    entries = {"p1": P.Entry("p1", "running", started="s"), "p2": P.Entry("p2", "failed", 2, "boom")}
    plan = P.plan_prestart(now, r, win(r), NAMED, NAMED, {"p1": ready("s")}, entries)
    store.put_prestart(r.id, plan.entries, P.summary(plan, win(r), now, LEAD, GRACE), {"started": 1, "failed": 2})
    assert reg.get_sample_value("esker_prestart_total", {"outcome": "started"}) == 1
    assert reg.get_sample_value("esker_prestart_total", {"outcome": "failed"}) == 2
    assert reg.get_sample_value("esker_prestart_servers", {"status": "running"}) == 1
    assert reg.get_sample_value("esker_prestart_servers", {"status": "failed"}) == 1
    assert reg.get_sample_value("esker_prestart_over_seats") == 3
