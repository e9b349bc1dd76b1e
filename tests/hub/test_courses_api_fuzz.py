"""Fuzz the live esker-courses service against its own OpenAPI description with schemathesis: a real embedded hub
(proxy, hub, the service as a managed service), the description fetched from the service itself, every operation
called with generated data (valid and invalid) as an ordinary user, as a course's instructor and as an admin user,
on made-up names and on a real course and reservation. Every answer must be described (status, content type,
body schema), invalid data must be refused with a 4xx, and nothing may answer 5xx (403s are fine, 500s are not).

The one 5xx the description allows is 502 from ``POST .../sync`` when the course's git remote cannot be fetched
(the fuzzer gives courses made-up git URLs); the hub's API is up throughout, so 502 anywhere else fails too.

Bounded: ``ESKER_FUZZ_EXAMPLES`` cases per operation, path variant and mode (default 25), no deadline, no shrinking
(failures are collected and reported together instead).
"""

from __future__ import annotations

import collections
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import needs_root
from esker import devhub

pytestmark = [pytest.mark.integration, needs_root]

PREFIX = "/services/esker-courses"
EXAMPLES = int(os.environ.get("ESKER_FUZZ_EXAMPLES", "25"))
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
SYNC = "POST /api/courses/{name}/sync"


@pytest.fixture(scope="module")
def fuzz_hub():
    # Only the service is fuzzed: no Spark, no object storage, no server is started.
    h = devhub.RunningHub(devhub.test_config("", "", spark={"enabled": False}, storage={"enabled": False}))
    try:
        h.start()
        yield h
    finally:
        h.teardown()


def test_the_courses_api_survives_fuzzing(fuzz_hub):
    h = fuzz_hub
    base = f"{h.url}{PREFIX}"
    # the description, as the service serves it (no token needed)
    r = requests.get(f"{base}/openapi.json", timeout=30)
    assert r.status_code == 200 and r.json()["openapi"].startswith("3.1"), r.text[:300]
    assert requests.get(f"{base}/openapi.yaml", timeout=30).text.startswith("openapi:")
    described = {f"{m.upper()} {p}" for p, ops in r.json()["paths"].items() for m in ops}
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [o.ok() for o in schema.get_all_operations()]
    # all of them (schemathesis leaves out the document it was loaded from, fetched above)
    assert {o.label for o in operations} == described - {"GET /openapi.json"}, [o.label for o in operations]

    tokens = {"user": h.hub.login_token("fuzz-user"), "instructor": h.hub.login_token("fuzz-ines"),
              "admin": h.hub.login_token("admin")}
    adm = {"Authorization": f"token {tokens['admin']}"}
    # a real course (the user takes part, fuzz-ines teaches it) and a reservation of it
    body = {"name": "fuzz", "group": "fuzz", "instructors": ["fuzz-ines"], "participants": ["fuzz-user"],
            "password": "pw", "profiles": ["minimal"]}
    r = requests.post(f"{base}/api/courses", json=body, headers=adm, timeout=60)
    assert r.status_code == 201, r.text
    now = datetime.now(timezone.utc)
    r = requests.post(f"{base}/api/reservations", headers=adm, timeout=60, json={
        "course": "fuzz", "seats": 1, "start": (now + timedelta(days=1)).isoformat(),
        "end": (now + timedelta(days=1, hours=1)).isoformat()})
    assert r.status_code == 201, r.text
    fixed = {"name": "fuzz", "id": r.json()["id"]}

    cases: collections.Counter = collections.Counter()
    statuses: dict = collections.defaultdict(collections.Counter)
    samples: dict = {}
    failures: dict[tuple, str] = {}
    session = requests.Session()
    t0 = time.monotonic()

    aimed_at = [0]

    def aim(label: str, case):
        """A body pointed at real things (the course, a profile, future times), so that more cases get past 404
        and 400 into the service's deeper paths (the hub calls); the generated variant fuzzes these fields."""
        b = case.body
        if not isinstance(b, dict):
            return case
        if label == "POST /api/reservations":
            aimed_at[0] += 1  # a window of its own, so most are judged on capacity, not on overlapping
            start = now + timedelta(days=2, hours=2 * aimed_at[0])
            b.update(course="fuzz", start=start.isoformat(), end=(start + timedelta(hours=1)).isoformat())
            b.pop("profile", None)
            b.pop("group", None)
        elif label == "POST /api/courses":  # what goes to the hub (names, group) stays generated
            b.update(profiles=["minimal"], datasets=[], content={}, window=None, seats=0)
        return case

    def run(who: str, op, mode, path_parameters: dict | None, aimed: bool = False):
        headers = {"Authorization": f"token {tokens[who]}"}
        variant = "aimed" if aimed else "fixed" if path_parameters else "generated"
        strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)
        if aimed:
            strategy = strategy.map(lambda case: aim(op.label, case))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def fuzz(case):
            cases[(who, op.label, mode.value, variant)] += 1
            response = case.call(base_url=base, headers=headers, session=session, timeout=120)
            statuses[(who, op.label)][response.status_code] += 1
            if os.environ.get("ESKER_FUZZ_DEBUG"):
                samples.setdefault((who, op.label, variant, response.status_code),
                                   f"{case.as_curl_command(headers)} -> {response.text[:200]}")
            where = (who, op.label, response.status_code)
            if response.status_code >= 500:
                allowed = op.label == SYNC and response.status_code == 502 and "cannot fetch" in response.text
                if not allowed and where not in failures:
                    failures[where] = f"server error: {response.text[:300]}\n{case.as_curl_command(headers)}"
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except FailureGroup as e:  # every failed check of this case
                for f in e.exceptions:
                    key = (*where, type(f).__name__, getattr(f, "title", ""))
                    failures.setdefault(key, f"{f}\n{case.as_curl_command(headers)}"[:2500])

        fuzz()

    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    for who in ("user", "instructor", "admin"):  # the admin last: it may change or delete the real ones
        for op in operations:
            params = [p.name for p in op.path_parameters]
            has_input = bool(params) or len(op.body) > 0
            variants = [None] + ([{p: fixed[p] for p in params}] if params else [])
            for mode in modes if has_input else modes[:1]:
                for pp in variants:
                    if mode.is_negative and pp and not len(op.body):
                        continue  # nothing left to make invalid but the fixed path
                    run(who, op, mode, pp)
            if op.label in ("POST /api/reservations", "POST /api/courses"):
                run(who, op, modes[0], None, aimed=True)
    took = time.monotonic() - t0

    # the fuzzing really ran: every operation, as everyone, with many cases
    per_op = collections.Counter((who, label) for (who, label, _, _) in cases.elements())
    assert {label for (_, label) in per_op} == {o.label for o in operations}
    assert all(per_op[(who, o.label)] > 0 for who in tokens for o in operations)
    total = sum(cases.values())
    print(f"\nfuzzed {len(operations)} operations, {total} cases in {took:.0f}s")
    for k, v in sorted(samples.items()):
        print(k, v)
    for (who, label), counts in sorted(statuses.items()):
        print(f"  {who:10} {label:35} " + " ".join(f"{c}x{n}" for c, n in sorted(counts.items())))
    assert total >= len(operations) * len(tokens) * min(EXAMPLES, 5)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    # and the service is still there and sane
    assert requests.get(f"{base}/api/courses/fuzz", headers=adm, timeout=30).status_code in (200, 404)
