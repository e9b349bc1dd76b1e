"""The esker-courses REST API described in OpenAPI 3.1, served by the service at ``<prefix>/openapi.json``
(and ``openapi.yaml``). The request schemas here are the ones the handlers validate bodies with, and the course
body is the ``courses:`` entry of the configuration schema (``esker.core.schema.COURSE``), so the description
and the checks cannot drift apart; ``tests/unit/test_courses_openapi.py`` checks that every route of the
service is described and ``tests/hub/test_courses_api_fuzz.py`` fuzzes the live service against it.
"""

from __future__ import annotations

import copy

from esker.core.schema import COURSE, ISO_DATETIME, SLUG

VERSION = "1.0.0"
JSON = "application/json"

# ------------------------------------------------------------------------------------ request bodies
COURSE_CREATE = copy.deepcopy(COURSE)


def _nullable(schema: dict) -> dict:
    types = schema.get("type")
    if isinstance(types, list):
        return schema if "null" in types else {**schema, "type": [*types, "null"]}
    if types:
        return {**schema, "type": [types, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


# PATCH: any subset of a course's fields; null resets a field to its default. The name cannot change.
COURSE_PATCH = {
    "type": "object",
    "additionalProperties": False,
    "description": "The fields to change. null resets a field to its default (a course without a password, "
    "without a window). Instructors may change display_name, participants, content, window, seats, password, "
    "idle_timeout, prestart_lead, prestart_grace and profiles; group, instructors and datasets only admins.",
    "properties": {k: (copy.deepcopy(v) if k == "group" else _nullable(copy.deepcopy(v)))
                   for k, v in COURSE["properties"].items() if k != "name"},
}

JOIN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["password"],
    "properties": {"password": {"type": "string", "description": "The course password."}},
}

RESERVATION_CREATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["course", "seats", "start", "end"],
    "properties": {
        "course": {"type": "string", "minLength": 1, "description": "The course the seats are for."},
        "profile": {"type": "string", "minLength": 1,
                    "description": "The profile the seats are for (default: the course's first profile)."},
        "seats": {"type": "integer", "minimum": 1, "description": "How many servers to promise."},
        "start": ISO_DATETIME,
        "end": ISO_DATETIME,
        "group": {"type": "string", "minLength": 1,
                  "description": "The group the seats are for: the course's group (the default)."},
    },
}

# ---------------------------------------------------------------------------------------- responses
ERROR = {
    "type": "object",
    "required": ["status", "message"],
    "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
}

_STRINGS = {"type": "array", "items": {"type": "string"}}
COURSE_OUT = {
    "type": "object",
    "description": "A course. participants is present for admins and the course's instructors only.",
    "required": ["name", "group", "display_name", "instructors", "content", "datasets", "profiles", "password",
                 "window", "seats", "idle_timeout", "prestart_lead", "prestart_grace", "source"],
    "properties": {
        "name": SLUG,
        "group": {"type": "string"},
        "display_name": {"type": "string"},
        "instructors": _STRINGS,
        "participants": {**_STRINGS, "description": "The course's named participants (the group may hold more: "
                         "people who joined with the password)."},
        "content": {"type": "object", "additionalProperties": {"type": "string"}},
        "datasets": _STRINGS,
        "profiles": _STRINGS,
        "password": {"type": "boolean", "description": "Whether the course has a password (never its value)."},
        "window": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["start", "end"],
                                                "properties": {"start": {"type": "string"},
                                                               "end": {"type": "string"}}}]},
        "seats": {"type": "integer"},
        "idle_timeout": {"type": "integer"},
        "prestart_lead": {"type": "integer", "description": "Seconds before a reservation's window when its "
                          "participants' servers are started (0: not pre-started)."},
        "prestart_grace": {"type": "integer", "description": "Seconds after the window opens during which "
                           "pre-started servers are kept from the idle cullers."},
        "source": {"enum": ["config", "runtime"],
                   "description": "config: from esker.yaml (perhaps changed at run time); runtime: created "
                   "through this API."},
    },
}

RESERVATION = {
    "type": "object",
    "required": ["id", "course", "group", "profile", "seats", "start", "end", "created_by"],
    "properties": {
        "id": {"type": "string", "pattern": "^[a-z0-9]+$"},
        "course": {"type": "string"},
        "group": {"type": "string"},
        "profile": {"type": "string"},
        "seats": {"type": "integer"},
        "start": {"type": "string"},
        "end": {"type": "string"},
        "created_by": {"type": "string"},
    },
}
PRESTART = {
    "type": ["object", "null"],
    "description": "The latest pre-start pass (null until the reservation's lead time has begun, or when its "
    "course has prestart_lead 0): the booked participants' servers the service started before the window.",
    "required": ["lead", "grace", "phase", "seats", "opens_at", "protected_until", "running", "starting", "failed",
                 "stopped", "already_running", "over_seats", "attempts", "checked_at", "message"],
    "properties": {
        "lead": {"type": "integer", "description": "The course's prestart_lead (seconds)."},
        "grace": {"type": "integer", "description": "The course's prestart_grace (seconds)."},
        "phase": {"enum": ["waiting", "lead", "grace", "after"],
                  "description": "lead: servers are being started; grace: the window is open and pre-started "
                  "servers are kept from the idle cullers."},
        "seats": {"type": "integer"},
        "opens_at": {"type": "string", "description": "When pre-starting began (the window's start - lead)."},
        "protected_until": {"type": "string", "description": "The window's start + grace."},
        "running": {**_STRINGS, "description": "Participants whose pre-started server is running."},
        "starting": {**_STRINGS, "description": "Participants whose server the hub is starting."},
        "failed": {"type": "array", "description": "Starts that failed, retried with a backoff until the window "
                   "opens (the seat stays reserved).",
                   "items": {"type": "object", "required": ["user", "message", "attempts"],
                             "properties": {"user": {"type": "string"},
                                            "message": {"type": "string", "description": "The hub's answer."},
                                            "attempts": {"type": "integer"},
                                            "next_try": {"type": ["string", "null"]}}}},
        "stopped": {**_STRINGS, "description": "Participants removed from the course whose pre-started server "
                    "was stopped."},
        "already_running": {**_STRINGS, "description": "Participants with a server of their own (left alone; "
                            "they count toward the seats)."},
        "over_seats": {**_STRINGS, "description": "Participants beyond the seats: not pre-started."},
        "attempts": {"type": "object", "additionalProperties": {"type": "integer"},
                     "description": "Failed starts in a row, per participant."},
        "checked_at": {"type": "string"},
        "message": {"type": "string", "description": "ok, or what needs attention (over seats, failures)."},
    },
}
RESERVATION_LISTED = {
    "allOf": [RESERVATION],
    "required": ["prewarmed_at", "prewarm", "prestart"],
    "properties": {
        "prewarmed_at": {"type": ["string", "null"],
                         "description": "When pre-warming first found everything ready (kept)."},
        "prewarm": {"type": ["object", "null"], "description": "The latest pre-warming pass's findings."},
        "prestart": PRESTART,
    },
}
REFUSAL = {
    "type": "object",
    "required": ["status", "message", "short"],
    "properties": {"status": {"type": "integer"}, "message": {"type": "string"}, "short": _STRINGS},
}
CAPACITY = {
    "type": "object",
    "required": ["cpu", "memory", "gpus", "scratch"],
    "properties": {"cpu": {"type": "number"}, "memory": {"type": "integer", "description": "bytes"},
                   "gpus": {"type": "integer"}, "scratch": {"type": "integer", "description": "bytes"}},
}
JOINED = {
    "type": "object",
    "required": ["course", "group", "joined"],
    "properties": {"course": {"type": "string"}, "group": {"type": "string"}, "joined": {"type": "string"}},
}
SYNCED = {
    "type": "object",
    "required": ["course", "merged"],
    "properties": {
        "course": {"type": "string"},
        "merged": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "Per member: what the merge did ('2 added, 1 conflicts', 'up to date') or "
                   "'failed: why'. Members who never started a server get the content at their first start."},
        "message": {"type": "string"},
    },
}


def _error(description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: dict | None = None, status: str = "200") -> dict:
    out = {"description": description}
    if schema is not None:
        out["content"] = {JSON: {"schema": schema}}
    return {status: out}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


FORBIDDEN = _error("No hub token, or one whose owner may not do this")
NOT_FOUND = _error("No such course (or not one of yours), or no such path")
BAD_REQUEST = _error("The body is not JSON, does not match the schema, or names unknown profiles, datasets, "
                     "users or groups (the message names the field)")
HUB_DOWN = _error("The hub's REST API did not answer")

_COURSE_NAME = {"name": "name", "in": "path", "required": True, "description": "The course's name",
                "schema": {"type": "string", "pattern": "^[a-z0-9-]+$"}}
_RESERVATION_ID = {"name": "id", "in": "path", "required": True, "description": "The reservation's id",
                   "schema": {"type": "string", "pattern": "^[a-z0-9]+$"}}


def _body(name: str, required: bool = True) -> dict:
    return {"required": required, "content": {JSON: {"schema": _ref(name)}}}


def spec(prefix: str = "/services/esker-courses/") -> dict:
    """The OpenAPI document for the service mounted at ``prefix`` (its ``servers`` entry)."""
    course_ops = {
        "get": {
            "operationId": "getCourse",
            "summary": "A course: admins and its instructors see everything; its participants all but the "
                       "member list",
            "parameters": [_COURSE_NAME],
            "responses": {**_ok("The course", _ref("Course")), "403": FORBIDDEN, "404": NOT_FOUND},
        },
        "patch": {
            "operationId": "updateCourse",
            "summary": "Change a course (admins; instructors for their own courses' participants, content, "
                       "window, seats, password, idle timeout and profiles)",
            "parameters": [_COURSE_NAME],
            "requestBody": _body("CoursePatch"),
            "responses": {**_ok("The course as it is now", _ref("Course")), "400": BAD_REQUEST,
                          "403": FORBIDDEN, "404": NOT_FOUND, "502": HUB_DOWN},
        },
    }
    paths = {
        "/": {"get": {
            "operationId": "reservationsPage",
            "summary": "An HTML page listing the reservations (admins and instructors)",
            "responses": {"200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}},
                          "403": FORBIDDEN},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi",
            "summary": "This description; no token needed",
            "security": [],
            "responses": _ok("The OpenAPI document", {"type": "object"}),
        }},
        "/openapi.yaml": {"get": {
            "operationId": "openapiYaml",
            "summary": "This description in YAML; no token needed",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document",
                                  "content": {"application/yaml": {"schema": {"type": "object"}}}}},
        }},
        "/api/courses": {
            "get": {
                "operationId": "listCourses",
                "summary": "The courses the caller manages (with their members) or takes part in (without)",
                "responses": {**_ok("The courses", {"type": "array", "items": _ref("Course")}), "403": FORBIDDEN},
            },
            "post": {
                "operationId": "createCourse",
                "summary": "Create a course (admins): stored, its group and users created in the hub, its "
                           "instructors given access to its participants' servers",
                "requestBody": _body("CourseCreate"),
                "responses": {**_ok("The new course", _ref("Course"), "201"), "400": BAD_REQUEST,
                              "403": FORBIDDEN, "409": _error("A course of that name exists"),
                              "502": HUB_DOWN},
            },
        },
        "/api/courses/{name}": course_ops,
        "/api/courses/{name}/join": {"post": {
            "operationId": "joinCourse",
            "summary": "Join a course's group with its password (users)",
            "parameters": [_COURSE_NAME],
            "requestBody": _body("Join"),
            "responses": {**_ok("Joined", _ref("Joined")),
                          "400": _error("The body is malformed, or the caller is not a user (a service)"),
                          "403": _error("No hub token, a wrong password, or the course has no password"),
                          "404": NOT_FOUND, "502": HUB_DOWN},
        }},
        "/api/courses/{name}/sync": {"post": {
            "operationId": "syncCourse",
            "summary": "Fetch the course's content and merge it into every member's home now (admins, "
                       "instructors)",
            "parameters": [_COURSE_NAME],
            "responses": {**_ok("What the merge did per member", _ref("Synced")), "403": FORBIDDEN,
                          "404": NOT_FOUND,
                          "502": _error("The content's git remote could not be fetched (or the hub's API did "
                                        "not answer)")},
        }},
        "/api/reservations": {
            "get": {
                "operationId": "listReservations",
                "summary": "Reservations of the courses the caller manages, with what pre-warming found and which "
                           "participants' servers were pre-started",
                "responses": {**_ok("The reservations", {"type": "array", "items": _ref("ReservationListed")}),
                              "403": FORBIDDEN},
            },
            "post": {
                "operationId": "createReservation",
                "summary": "Reserve seats of a profile for a course in a window (admins, the course's "
                           "instructors); accepted only if the hub's capacity holds them beside every other "
                           "promise",
                "requestBody": _body("ReservationCreate"),
                "responses": {**_ok("The reservation", _ref("Reservation"), "201"),
                              "400": _error("Malformed: no seats, a window that ends before it starts or is "
                                            "in the past, a profile the course does not use"),
                              "403": FORBIDDEN,
                              "404": _error("Unknown course, profile or group"),
                              "409": {"description": "Does not fit, or the course already has seats then",
                                      "content": {JSON: {"schema": _ref("Refusal")}}}},
            },
        },
        "/api/reservations/{id}": {"delete": {
            "operationId": "deleteReservation",
            "summary": "Release a reservation (admins, the course's instructors)",
            "parameters": [_RESERVATION_ID],
            "responses": {"204": {"description": "Deleted"}, "403": FORBIDDEN,
                          "404": _error("No such reservation")},
        }},
        "/api/capacity": {"get": {
            "operationId": "capacity",
            "summary": "What this hub can run at once (admins, instructors)",
            "responses": {**_ok("The capacity", _ref("Capacity")), "403": FORBIDDEN},
        }},
    }
    for ops in paths.values():  # the token is checked with the hub: an unreachable hub is a 502 anywhere
        for op in ops.values():
            if op.get("security") != []:
                op["responses"].setdefault("502", HUB_DOWN)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Esker courses",
            "version": VERSION,
            "description": "Courses, seat reservations and content of an Esker hub (docs/courses.md). Every "
                           "call but this description's needs a hub token: `Authorization: token <token>`. "
                           "Who may do what is decided from the token's owner, never from the body.",
        },
        "servers": [{"url": prefix.rstrip("/") or "/"}],
        "security": [{"hubToken": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"hubToken": {
                "type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`token <hub API token>`: a user's token (from the hub's token page or "
                               "API) or a service's"}},
            "schemas": {
                "Error": ERROR, "Course": COURSE_OUT, "CourseCreate": COURSE_CREATE, "CoursePatch": COURSE_PATCH,
                "Join": JOIN, "Joined": JOINED, "Synced": SYNCED, "ReservationCreate": RESERVATION_CREATE,
                "Reservation": RESERVATION, "ReservationListed": RESERVATION_LISTED, "Refusal": REFUSAL,
                "Capacity": CAPACITY,
            },
        },
    }
