"""The courses service's OpenAPI description against its routes: every route is described with exactly the
methods its handler answers, every described path is a route, the document is valid OpenAPI (as schemathesis
loads it), and the bodies the handlers check are the described ones. And the instructors' access rule as data.
(tests/hub/test_courses_api_fuzz.py fuzzes the live service against the same document.)"""

from __future__ import annotations

import re

import pytest
import schemathesis
from tornado import web

from esker.courses import handlers, hubsync, openapi, service
from esker.courses.model import Course

PREFIX = "/services/esker-courses/"
METHODS = ("get", "post", "patch", "put", "delete")


def app():
    return service.make_app(None, PREFIX)


def rules():
    return [r for r in app().wildcard_router.rules if isinstance(r.target, type)]


def handler_for(url: str):
    found = [r for r in rules() if r.matcher.regex.fullmatch(url)]
    assert len(found) == 1, f"{url} matches {len(found)} routes"
    return found[0].target


def concrete(path: str) -> str:
    return PREFIX.rstrip("/") + re.sub(r"\{[a-z]+\}", "abc1", path)


def implemented(cls) -> set[str]:
    return {m for m in METHODS if getattr(cls, m) is not getattr(web.RequestHandler, m)}


def test_every_described_path_is_a_route_with_those_methods():
    doc = openapi.spec(PREFIX)
    for path, ops in doc["paths"].items():
        cls = handler_for(concrete(path))
        assert cls is not handlers.NotFoundHandler, path
        assert implemented(cls) == set(ops), f"{path}: {cls.__name__} answers {implemented(cls)}, described {set(ops)}"
        for method, op in ops.items():
            assert "200" in op["responses"] or "201" in op["responses"] or "204" in op["responses"], (path, method)
            if op.get("security") != []:
                assert "403" in op["responses"], f"{method} {path}: a token is required, so 403 is an answer"


def test_every_route_is_described():
    doc = openapi.spec(PREFIX)
    urls = [concrete(p) for p in doc["paths"]]
    for r in rules():
        assert any(r.matcher.regex.fullmatch(u) for u in urls), f"route {r.matcher.regex.pattern} is not described"


def test_the_document_loads_and_names_the_prefix():
    doc = openapi.spec("/services/x/")
    assert doc["servers"] == [{"url": "/services/x"}] and doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()
    labels = {o.ok().label for o in schema.get_all_operations()}
    assert {"POST /api/courses", "PATCH /api/courses/{name}", "DELETE /api/reservations/{id}"} <= labels
    assert len(labels) == sum(len(ops) for ops in doc["paths"].values())


def test_bodies_are_checked_against_the_described_schemas():
    doc = openapi.spec()
    bodies = {f"{m.upper()} {p}": op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
              for p, ops in doc["paths"].items() for m, op in ops.items() if "requestBody" in op}
    assert bodies == {"POST /api/courses": "CourseCreate", "PATCH /api/courses/{name}": "CoursePatch",
                      "POST /api/courses/{name}/join": "Join", "POST /api/reservations": "ReservationCreate"}
    assert doc["components"]["schemas"]["CoursePatch"] is openapi.COURSE_PATCH
    assert "name" not in openapi.COURSE_PATCH["properties"]  # a course is never renamed
    with pytest.raises(web.HTTPError) as e:
        handlers.check(openapi.RESERVATION_CREATE, {"course": "c", "seats": 0, "start": "x", "end": "y"})
    assert e.value.status_code == 400 and e.value.log_message.startswith("seats:")
    with pytest.raises(web.HTTPError):
        handlers.check(openapi.RESERVATION_CREATE, {"course": "c", "seats": 1, "start": "2030-01-01T09:00",
                                                    "end": "2030-01-01T10:00", "id": "mine"})


def test_hub_user_names():
    assert handlers.name_problems("participants", ["ana", "a.b", "ö-1"]) == []
    bad = handlers.name_problems("participants", ["Ana", "a/b", " a", "..", "a\x00"])
    assert len(bad) == 5 and bad[0].startswith("participants: 'Ana'")


def test_instructors_reach_every_member_of_their_groups_only():
    a = Course(name="a", group="ga", instructors=("ines", "ivo"))
    b = Course(name="b", group="gb", instructors=("ines",))
    c = Course(name="c", group="gc")  # no instructors
    members = {"ga": {"p1", "ines"}, "gb": {"p2"}, "gc": {"p3"}}
    assert hubsync.desired_access([a, b, c], members) == {("p1", "ines"), ("p1", "ivo"), ("ines", "ivo"),
                                                          ("p2", "ines")}
    assert hubsync.desired_access([a], {}) == set()
    assert hubsync.q("a/b c") == "a%2Fb%20c"


def test_a_course_created_at_run_time_is_checked_for_the_hubs_mode():
    """content.path is refused on Kubernetes at config check; a course made through the API is held to the
    same rule (the check sees hub.mode), and accepted on the embedded hub."""
    import copy

    from esker.core import config
    from esker.resources import SHIPPED_CONFIG

    course = {"name": "local", "group": "g", "content": {"path": "courses/intro-ml"}}
    embedded = config.load(SHIPPED_CONFIG).data
    assert handlers.validate_course(embedded, copy.deepcopy(course))["name"] == "local"
    kubernetes = {**embedded, "hub": {**embedded["hub"], "mode": "kubernetes"}}
    with pytest.raises(web.HTTPError) as e:
        handlers.validate_course(kubernetes, copy.deepcopy(course))
    assert e.value.status_code == 400 and "content.path" in e.value.log_message
