"""`esker fn`: publish, list, show, invoke, alias, share, logs and delete functions (docs/functions.md)."""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import http
from .versions import (VersionError, aliases_after_publish, aliases_to, check_name, move_alias, parse_semver,
                       resolve, undo, version_id)

TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "list": "array",
         "dict": "object", "None": "null"}


class CliError(Exception):
    pass


# ---- pure helpers -------------------------------------------------------------------------------------------
def parse_options(pairs: List[str]) -> Dict[str, str]:
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise CliError(f"--option {p!r}: expected KEY=VALUE (a profile option, e.g. --option cpu=2)")
        out[k] = v
    return out


def _ann_schema(node) -> Dict:
    """The JSON schema type of a plain annotation (int, float, str, bool, list[...], dict[...], None); {} else."""
    if node is None:
        return {}
    if isinstance(node, ast.Constant) and node.value is None:
        return {"type": "null"}
    if isinstance(node, ast.Subscript):
        node = node.value
    return {"type": TYPES[node.id]} if isinstance(node, ast.Name) and node.id in TYPES else {}


def schema_of(code: str, entry: str) -> Dict:
    """A JSON schema of the entry's arguments and return value from its plain type hints (read with ast)."""
    fn = next(n for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
              and n.name == entry)
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    defaults = dict(zip([a.arg for a in (fn.args.posonlyargs + fn.args.args)][::-1], fn.args.defaults[::-1]))
    defaults.update({a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None})
    props = {a.arg: _ann_schema(a.annotation) for a in args}
    required = [a.arg for a in args if a.arg not in defaults]
    return {"input": {"type": "object", "properties": props, "required": required,
                      "additionalProperties": fn.args.kwarg is not None},
            "output": _ann_schema(fn.returns)}


def build_manifest(snap, name: str, profile: str, options: Dict, semver: Optional[str], packages: List[str],
                   timeout: Optional[float], concurrency: Optional[int], now: Optional[str] = None) -> Dict:
    import hashlib

    vid = version_id(snap.code, profile, options, packages)
    return {
        "name": name, "vid": vid, "semver": semver, "entry": snap.entry, "profile": profile,
        "options": dict(options), "source": snap.source, "origin": snap.origin,
        "created": now or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "timeout": timeout, "concurrency": concurrency, "schema": schema_of(snap.code, snap.entry),
        "packages_hash": hashlib.sha256("\n".join(sorted(packages)).encode()).hexdigest()[:16],
    }


def split_ref(ref: str, owner: Optional[str]):
    """``name`` or ``owner/name`` -> (owner or None, name)."""
    o, sep, n = ref.rpartition("/")
    return (o if sep else owner), check_name(n)


def table(rows: List[List[str]], head: List[str]) -> str:
    rows = [head] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)


# ---- context --------------------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, args, env=None, store=None, out=None):
        self.args, self.env = args, (os.environ if env is None else env)
        self._store, self.out = store, out or sys.stdout

    @property
    def store(self):
        if self._store is None:
            from .store import FunctionStore

            self._store = FunctionStore()
        return self._store

    def hub(self) -> str:
        return http.hub_url(getattr(self.args, "hub_url", None), self.env)

    def token(self) -> str:
        return http.token(getattr(self.args, "token_file", None), self.env)

    def api(self, method: str, path: str, body=None):
        return http.request(method, self.hub() + http.SERVICE + path, self.token(), body)

    def owner(self) -> str:
        if self.env.get("JUPYTERHUB_USER"):
            return self.env["JUPYTERHUB_USER"]
        _, _, me = http.request("GET", self.hub() + "/hub/api/user", self.token())
        return me["name"]

    def print(self, *a):
        print(*a, file=self.out)


def call_url(hub: str, owner: str, name: str) -> str:
    return f"{hub}{http.SERVICE}call/{owner}/{name}"


# ---- commands -------------------------------------------------------------------------------------------------
def cmd_publish(c: Ctx) -> int:
    from .export import export, packages

    a = c.args
    snap = export(a.path, a.entry)
    name = check_name(a.name or snap.options.get("name") or snap.entry.replace("_", "-"))
    profile = a.profile or c.env.get("ESKER_PROFILE")
    if not profile:
        raise CliError("no profile: pass --profile SLUG (outside a notebook server ESKER_PROFILE is not set)")
    if a.version:
        parse_semver(a.version)
    timeout = a.timeout if a.timeout is not None else snap.options.get("timeout")
    concurrency = a.concurrency if a.concurrency is not None else snap.options.get("concurrency")
    if timeout is not None and timeout <= 0:
        raise CliError(f"--timeout {timeout}: must be a positive number of seconds")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise CliError(f"--concurrency {concurrency}: must be an integer >= 1")
    m = build_manifest(snap, name, profile, parse_options(a.option), a.version, packages(), timeout, concurrency)
    store = c.store
    aliases_after_publish(store.get_aliases(name), m["vid"], a.version)  # a conflicting pin: before any write
    existing = store.get_manifest(name, m["vid"])
    if existing is None:
        store.put_version(name, m, snap.code)
    else:
        m = {**existing, "semver": existing.get("semver") or a.version}
    old, new = store.update_aliases(name, lambda al: aliases_after_publish(al, m["vid"], a.version))
    try:
        _, _, reply = c.api("POST", f"api/functions/{name}", m)
    except http.ServiceError:  # the service refused (e.g. the profile): take back this publish's aliases only
        store.update_aliases(name, lambda al: undo(al, old, new))
        raise
    hub = c.hub()
    url = (reply or {}).get("url") if isinstance(reply, dict) else None
    url = url or call_url(hub, c.owner(), name)
    if a.json:
        c.print(json.dumps({"name": name, "vid": m["vid"], "url": url, "aliases": aliases_to(new, m["vid"])}))
        return 0
    c.print(f"published {name} version {m['vid']}" + (f" ({a.version})" if a.version else "")
            + (" (unchanged: same code and environment)" if existing else ""))
    c.print(f"  aliases: {', '.join(aliases_to(new, m['vid']))}")
    c.print(f"  url:     {url}")
    c.print(f"  call:    curl -X POST -H \"Authorization: token $JUPYTERHUB_API_TOKEN\" "
            f"-H 'Content-Type: application/json' -d '{{}}' {url}")
    return 0


def _service_functions(c: Ctx) -> List[Dict]:
    try:
        _, _, body = c.api("GET", "api/functions")
    except (http.ServiceError, ValueError) as e:
        print(f"warning: the functions service did not answer ({e}); showing the bucket only", file=sys.stderr)
        return []
    return body.get("functions", []) if isinstance(body, dict) else (body or [])


def cmd_list(c: Ctx) -> int:
    names = c.store.list_functions()
    svc = {f.get("name"): f for f in _service_functions(c) if isinstance(f, dict)}
    rows = []
    for n in names:
        al = c.store.get_aliases(n)
        vs = c.store.list_versions(n)
        s = svc.get(n, {})
        rows.append({"name": n, "latest": al.get("latest"), "versions": len(vs), "aliases": al,
                     "state": s.get("state") or s.get("status"), "url": s.get("url")})
    shared = [f for k, f in svc.items() if k not in names or (f.get("owner") and f.get("owner") !=
                                                              c.env.get("JUPYTERHUB_USER"))]
    if c.args.json:
        c.print(json.dumps({"functions": rows, "shared_with_me": shared}, indent=2))
        return 0
    c.print(table([[r["name"], r["latest"] or "-", r["versions"], r["state"] or "-", r["url"] or "-"]
                   for r in rows], ["NAME", "LATEST", "VERSIONS", "STATE", "URL"]) if rows else "no functions yet")
    if shared:
        c.print("\nshared with you:")
        c.print(table([[f"{f.get('owner')}/{f.get('name')}", f.get("url") or "-"] for f in shared],
                      ["FUNCTION", "URL"]))
    return 0


def cmd_show(c: Ctx) -> int:
    name = check_name(c.args.name)
    vs = c.store.list_versions(name)
    if not vs:
        raise CliError(f"no function {name!r} in your bucket (esker fn list shows yours)")
    al = c.store.get_aliases(name)
    if c.args.json:
        c.print(json.dumps({"name": name, "aliases": al, "versions": vs}, indent=2))
        return 0
    c.print(f"{name}: entry {vs[0]['entry']} in profile {vs[0]['profile']}")
    c.print(table([[m["vid"], m.get("created", ""), m.get("semver") or "-", m.get("source", ""),
                    ", ".join(aliases_to(al, m["vid"])) or "-"] for m in vs],
                  ["VERSION", "CREATED", "SEMVER", "SOURCE", "ALIASES"]))
    return 0


def _read_data(d: Optional[str]):
    if d is None:
        return {}
    text = Path(d[1:]).read_text(encoding="utf-8") if d.startswith("@") else d
    try:
        body = json.loads(text)
    except ValueError as e:
        raise CliError(f"-d: not JSON ({e})")
    if not isinstance(body, dict):
        raise CliError("-d: the body must be a JSON object of keyword arguments, e.g. '{\"x\": 1}'")
    return body


def cmd_invoke(c: Ctx) -> int:
    a = c.args
    owner, name = split_ref(a.name, None)
    owner = owner or c.owner()
    body = _read_data(a.data)
    base = f"call/{owner}/{name}/"
    suffix = f"v/{a.version}" if a.version else ""
    if not a.is_async:
        _, headers, res = c.api("POST", base + suffix, body)
        c.print(json.dumps(res))
        return 0
    _, _, task = c.api("POST", base + "async" + (f"/{suffix}" if suffix else ""), body)
    tid = task["task"]
    deadline = time.monotonic() + a.wait
    while True:
        _, _, st = c.api("GET", f"{base}tasks/{tid}")
        if st.get("status") in ("done", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            c.print(json.dumps(st))
            raise CliError(f"task {tid} still {st.get('status')} after {a.wait}s: poll "
                           f"{http.SERVICE}{base}tasks/{tid}")
        time.sleep(a.poll)
    if st.get("status") == "done":
        c.print(json.dumps(st.get("result")))
        return 0
    raise CliError(f"task {tid} {st.get('status')}: {json.dumps(st.get('error'))}")


def cmd_alias(c: Ctx) -> int:
    a = c.args
    name = check_name(a.name)
    vids = [m["vid"] for m in c.store.list_versions(name)]
    al, new = c.store.update_aliases(name, lambda al: move_alias(al, a.alias, resolve(al, vids, a.target)))
    target = new[a.alias]
    if c.store.get_manifest(name, target) is None:  # deleted while we moved the alias onto it
        c.store.update_aliases(name, lambda cur: undo(cur, al, new))
        raise CliError(f"{name}: version {target} was deleted meanwhile; {a.alias} is unchanged")
    c.print(f"{name}: {a.alias} -> {target}" + (f" (was {al[a.alias]})" if a.alias in al else ""))
    return 0


def cmd_share(c: Ctx) -> int:
    a = c.args
    name = check_name(a.name)
    if a.code:
        if a.revoke:
            raise CliError("--revoke with --code: revoke share codes on the hub page")
        body = {"expires_in": a.expires} if a.expires else {}
        _, _, res = c.api("POST", f"api/functions/{name}/share-codes", body)
        c.print(json.dumps(res, indent=2) if isinstance(res, (dict, list)) else res)
        return 0
    body = {"user": a.user} if a.user else {"group": a.group}
    c.api("DELETE" if a.revoke else "POST", f"api/functions/{name}/shares", body)
    who = f"user {a.user}" if a.user else f"group {a.group}"
    c.print(f"{name}: {'revoked from' if a.revoke else 'shared with'} {who}")
    return 0


def cmd_logs(c: Ctx) -> int:
    name = check_name(c.args.name)
    p = Path(c.env.get("HOME", str(Path.home()))) / ".esker" / "functions" / f"{name}.log"
    if not p.is_file():
        raise CliError(f"no log at {p}: the function has not run on this server yet")
    with p.open(encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    c.out.write("".join(lines[-c.args.n:]) if c.args.n > 0 else "")
    return 0


def cmd_delete(c: Ctx) -> int:
    a = c.args
    name = check_name(a.name)
    if a.version:
        al = c.store.get_aliases(name)
        vid = resolve(al, [m["vid"] for m in c.store.list_versions(name)], a.version)
        c.store.delete_version(name, vid)  # VersionInUse names the aliases
        c.print(f"{name}: deleted version {vid}")
        return 0
    if not c.store.list_versions(name) and not c.store.get_aliases(name):
        raise CliError(f"no function {name!r} in your bucket")
    try:
        c.api("DELETE", f"api/functions/{name}")
    except http.ServiceError as e:
        if e.status != 404:
            raise
    c.store.delete_function(name)
    c.print(f"{name}: deleted (server, versions and aliases)")
    return 0


# ---- parser ---------------------------------------------------------------------------------------------------
def _common(p) -> None:
    p.add_argument("--hub-url", help="the hub's public URL (default: $ESKER_HUB_URL, $JUPYTERHUB_PUBLIC_URL, "
                                     "else the origin of $JUPYTERHUB_API_URL)")
    p.add_argument("--token-file", help="read the hub token from this file (default: $ESKER_TOKEN, else "
                                        "$JUPYTERHUB_API_TOKEN); there is no --token: argv is visible to others")


def register(sub) -> None:
    """Add the `fn` command to an argparse subparsers object (the notebook's and the hub's `esker`)."""
    fn = sub.add_parser("fn", help="publish notebook functions as authenticated JSON endpoints",
                        description="Publish a @function from a module or the cells of a notebook tagged "
                                    "'esker-function' as an authenticated JSON endpoint of the hub, and manage "
                                    "its versions, aliases and shares. See docs/functions.md.")
    s = fn.add_subparsers(dest="fn_command", metavar="ACTION", required=True)

    p = s.add_parser("publish", help="publish a new version", description="Snapshot PATH (a .py module, or the "
                     "cells of a .ipynb tagged 'esker-function'), store it as an immutable version in your bucket, "
                     "move the aliases and (re)start its server. The code is read, never run, here.")
    p.add_argument("path", help="a .py module or a .ipynb notebook")
    p.add_argument("--name", help="the function's name (default: @function(name=...), else the entry's name)")
    p.add_argument("--entry", help="the function to serve when the file has several (or no) @function")
    p.add_argument("--profile", help="profile slug to run in (default: $ESKER_PROFILE, this server's)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a profile option, as on the spawn page (repeatable)")
    p.add_argument("--version", help="a pinned semver for this publish, e.g. 1.2.3 (also moves 1.2 and 1 forward)")
    p.add_argument("--timeout", type=float, help="seconds a call may run (default: the decorator's, else the "
                                                 "server's)")
    p.add_argument("--concurrency", type=int, help="calls at once (default: the decorator's, else the server's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _common(p)
    p.set_defaults(fn_func=cmd_publish)

    p = s.add_parser("list", help="your functions and those shared with you",
                     description="List your functions (from your bucket) with their state (from the service).")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    _common(p)
    p.set_defaults(fn_func=cmd_list)

    p = s.add_parser("show", help="one function's versions and aliases",
                     description="Show every version of NAME, newest first, with the aliases naming it.")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    _common(p)
    p.set_defaults(fn_func=cmd_show)

    p = s.add_parser("invoke", help="call a function", description="POST a JSON object of keyword arguments to "
                     "NAME (yours) or OWNER/NAME (shared with you) and print the JSON answer.")
    p.add_argument("name", metavar="[OWNER/]NAME")
    p.add_argument("-d", "--data", help="the JSON body, or @file.json (default: {})")
    p.add_argument("--version", help="an alias, version id or id prefix (default: latest)")
    p.add_argument("--async", dest="is_async", action="store_true", help="submit as a task and poll for the result")
    p.add_argument("--wait", type=float, default=600, help="with --async: seconds to poll before giving up (600)")
    p.add_argument("--poll", type=float, default=0.5, help="with --async: seconds between polls (0.5)")
    _common(p)
    p.set_defaults(fn_func=cmd_invoke)

    p = s.add_parser("alias", help="point an alias at a version (rollback)",
                     description="Move ALIAS ('latest' or a floating 1.2 / 1) of NAME to TARGET (an alias, version "
                                 "id or prefix), e.g. `esker fn alias predict latest 1.2.2`. Pinned 1.2.3 never moves.")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("target")
    p.set_defaults(fn_func=cmd_alias)

    p = s.add_parser("share", help="grant or revoke access", description="Share NAME with a user or a group "
                     "(JupyterHub shares of the function's server), revoke it, or make an expiring share code.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--user", help="a user name")
    g.add_argument("--group", help="a group name")
    g.add_argument("--code", action="store_true", help="create a share code anyone holding it may redeem")
    p.add_argument("name")
    p.add_argument("--revoke", action="store_true", help="remove the user's or group's access")
    p.add_argument("--expires", type=int, metavar="SECONDS", help="with --code: seconds until it expires")
    _common(p)
    p.set_defaults(fn_func=cmd_share)

    p = s.add_parser("logs", help="the function server's log",
                     description="Print the end of $HOME/.esker/functions/NAME.log (the function server's output).")
    p.add_argument("name")
    p.add_argument("-n", type=int, default=50, help="lines to print (50)")
    p.set_defaults(fn_func=cmd_logs)

    p = s.add_parser("delete", help="delete a version or a whole function",
                     description="Delete one version (refused while an alias points to it) or, without --version, "
                                 "the whole function: its server, every version and its aliases.")
    p.add_argument("name")
    p.add_argument("--version", help="an alias, version id or prefix of the version to delete")
    _common(p)
    p.set_defaults(fn_func=cmd_delete)
    fn.set_defaults(func=run)


def run(args, env=None, store=None, out=None) -> int:
    from .export import ExportError

    try:
        return int(args.fn_func(Ctx(args, env, store, out)) or 0)
    except (CliError, ExportError, VersionError, LookupError, ValueError, OSError, http.ServiceError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"esker fn {args.fn_command}: {msg}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esker", description="Esker inside a notebook server. The hub's own "
                                     "`esker` command (for operators) has more subcommands.")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv=None, env=None, store=None, out=None) -> int:
    args = build_parser().parse_args(argv)
    return run(args, env, store, out)


if __name__ == "__main__":
    sys.exit(main())
