"""`esker course` and `esker reserve`: clients of the esker-courses service (/services/esker-courses/api) with a
hub token ($ESKER_ADMIN_TOKEN, or --token: an instructor's own token works for their courses)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timedelta

import yaml


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="hub URL (default: $ESKER_URL, else http://127.0.0.1:$ESKER_PORT, port 8000)")
    p.add_argument("--token", default=None, help="hub API token (default: $ESKER_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _call(args, method: str, path: str, body=None):
    import requests

    url = args.url or os.environ.get("ESKER_URL") or f"http://127.0.0.1:{os.environ.get('ESKER_PORT', '8000')}"
    token = args.token or os.environ.get("ESKER_ADMIN_TOKEN")
    if not token:
        sys.exit("esker: no token: set ESKER_ADMIN_TOKEN or pass --token")
    try:
        r = requests.request(method, f"{url.rstrip('/')}/services/esker-courses/api{path}", json=body,
                             headers={"Authorization": f"token {token}"}, timeout=300)
    except requests.RequestException as e:
        sys.exit(f"esker: cannot reach {url}: {e}")
    if r.status_code >= 400:
        try:
            msg = r.json().get("message", r.text)
        except ValueError:
            msg = r.text[:300]
        print(f"esker: refused ({r.status_code}): {msg}", file=sys.stderr)
        sys.exit(1)
    return r.json() if r.content else None


def _show(args, data, table) -> int:
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        table(data)
    return 0


def cmd_course_list(args) -> int:
    def table(cs):
        for c in cs:
            w = c.get("window") or {}
            print(f"{c['name']:<20} {c['group']:<16} {len(c.get('participants', [])):>4} participants  "
                  f"{c.get('seats', 0):>3} seats  {w.get('start', '')[:16]} {c.get('source', '')}")
    return _show(args, _call(args, "GET", "/courses"), table)


def cmd_course_show(args) -> int:
    return _show(args, _call(args, "GET", f"/courses/{args.name}"), lambda c: print(yaml.safe_dump(c)))


def cmd_course_create(args) -> int:
    if args.file:
        body = yaml.safe_load(open(args.file))
    else:
        body = {"name": args.name, "group": args.group or args.name}
    if args.name:
        body["name"] = args.name
    for key in ("instructors", "participants", "datasets", "profiles"):
        v = getattr(args, key)
        if v:
            body[key] = v.split(",")
    if args.content:
        body["content"] = {"git": args.content, "ref": args.ref} if "://" in args.content or args.content.endswith(
            ".git") else {"path": args.content}
    if args.display_name:
        body["display_name"] = args.display_name
    return _show(args, _call(args, "POST", "/courses", body), lambda c: print(f"created course {c['name']}"))


def cmd_course_sync(args) -> int:
    def table(d):
        for user, summary in sorted(d.get("merged", {}).items()):
            print(f"{user:<24} {summary}")
    return _show(args, _call(args, "POST", f"/courses/{args.name}/sync"), table)


def prestart_line(p: dict | None) -> str | None:
    """One line on a reservation's pre-start (``GET api/reservations``' ``prestart``), or None before it begins."""
    if not p:
        return None
    parts = [f"pre-start ({p['phase']}): {len(p['running'])}/{p['seats']} running"]
    if p["starting"]:
        parts.append(f"{len(p['starting'])} starting")
    if p["already_running"]:
        parts.append(f"{len(p['already_running'])} already running")
    if p["failed"]:
        parts.append(f"{len(p['failed'])} failed: " + "; ".join(
            f"{f['user']} ({f['attempts']} attempt{'s' if f['attempts'] != 1 else ''}): {f['message']}"
            for f in p["failed"]))
    if p["over_seats"]:
        parts.append(f"over seats, not pre-started: {', '.join(p['over_seats'])}")
    if p["stopped"]:
        parts.append(f"stopped (left the course): {', '.join(p['stopped'])}")
    return ", ".join(parts)


def cmd_reserve_list(args) -> int:
    def table(rs):
        for r in rs:
            print(f"{r['id']:<12} {r['course']:<20} {r['seats']:>3} x {r['profile']:<14} {r['start'][:16]} -> "
                  f"{r['end'][:16]}")
            line = prestart_line(r.get("prestart"))
            if line:
                print(f"{'':<12} {line}")
    return _show(args, _call(args, "GET", "/reservations"), table)


def cmd_reserve_create(args) -> int:
    start = datetime.fromisoformat(args.start)
    if start.tzinfo is None:
        start = start.astimezone()
    end = datetime.fromisoformat(args.end) if args.end else start + timedelta(hours=args.hours)
    if end.tzinfo is None:
        end = end.astimezone()
    body = {"course": args.course, "seats": args.seats, "start": start.isoformat(), "end": end.isoformat()}
    if args.profile:
        body["profile"] = args.profile
    return _show(args, _call(args, "POST", "/reservations", body),
                 lambda r: print(f"reserved {r['seats']} x {r['profile']} for {r['course']}: {r['id']}"))


def cmd_reserve_delete(args) -> int:
    _call(args, "DELETE", f"/reservations/{args.id}")
    print(f"deleted reservation {args.id}")
    return 0


def register(sub) -> None:
    c = sub.add_parser("course", help="list, show, create and sync courses",
                       description="Courses through the esker-courses service (docs/courses.md).")
    cs = c.add_subparsers(dest="course_command", metavar="ACTION", required=True)
    p = cs.add_parser("list", help="courses you manage or take", description="List courses.")
    _common(p)
    p.set_defaults(func=cmd_course_list)
    p = cs.add_parser("show", help="one course", description="Show one course.")
    p.add_argument("name")
    _common(p)
    p.set_defaults(func=cmd_course_show)
    p = cs.add_parser("create", help="create a course (admins)",
                      description="Create a course at run time (stored in the state dir, merged with esker.yaml's).")
    p.add_argument("name", nargs="?", help="course name (slug)")
    p.add_argument("-f", "--file", help="YAML file with the course (the fields of esker.yaml's courses: items)")
    p.add_argument("--group", help="JupyterHub group of the participants (default: the name)")
    p.add_argument("--display-name")
    p.add_argument("--instructors", help="comma-separated user names")
    p.add_argument("--participants", help="comma-separated user names")
    p.add_argument("--datasets", help="comma-separated names from storage.datasets")
    p.add_argument("--profiles", help="comma-separated profile slugs")
    p.add_argument("--content", help="folder under notebooks/, an absolute path, or a git URL")
    p.add_argument("--ref", default="HEAD", help="git ref (with a git URL)")
    _common(p)
    p.set_defaults(func=cmd_course_create)
    p = cs.add_parser("sync", help="update the course content in every participant's home",
                      description="Fetch the content (git) and merge it into each participant's ~/<course>/, "
                      "keeping their edits.")
    p.add_argument("name")
    _common(p)
    p.set_defaults(func=cmd_course_sync)

    r = sub.add_parser("reserve", help="reserve seats for a course",
                       description="Seat reservations: admission control against the hub's capacity.")
    rs = r.add_subparsers(dest="reserve_command", metavar="ACTION", required=True)
    p = rs.add_parser("list", help="reservations", description="List reservations.")
    _common(p)
    p.set_defaults(func=cmd_reserve_list)
    p = rs.add_parser("create", help="reserve seats", description="Reserve seats of a profile for a course; "
                      "refused (with what is short) when the hub cannot hold them.")
    p.add_argument("course")
    p.add_argument("--profile", help="profile slug (default: the course's first profile)")
    p.add_argument("--seats", type=int, required=True)
    p.add_argument("--start", required=True, help="ISO date and time, e.g. 2026-11-17T09:00 (local time)")
    p.add_argument("--end", help="ISO date and time (or --hours)")
    p.add_argument("--hours", type=float, default=3, help="length when --end is not given (default 3)")
    _common(p)
    p.set_defaults(func=cmd_reserve_create)
    p = rs.add_parser("delete", help="release a reservation", description="Delete a reservation.")
    p.add_argument("id")
    _common(p)
    p.set_defaults(func=cmd_reserve_delete)
