"""The function server's ASGI app (starlette): the routes of docs/functions.md under the server's prefix.

The server process never imports the function's code: workers do (workers.py), and report its schema."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import time
import urllib.request
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import schema as schema_mod
from .auth import Auth, Caller, Denied
from .source import VID, NotFound, SourceError, Versions
from .versions import UnknownVersion, resolve
from .stats import VersionStats
from .tasks import FINISHED, RESTARTED, SqliteTasks, Tasks, TaskStoreError
from .workers import CallError, Handle, Pool

log = logging.getLogger("esker.functions")
ALIAS_MAX_AGE = 2.0  # seconds a cached aliases.json is trusted: a rollback takes effect within this


def now_iso(t: Optional[float] = None) -> str:
    return datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.timezone.utc) \
        .isoformat(timespec="seconds").replace("+00:00", "Z")


def error(status: int, type_: str, message: str, headers=None, **extra) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, **extra}}, status, headers=headers)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


class Function:
    """One function's versions, worker pools, counters and tasks."""

    def __init__(self, name: str, versions: Versions, cache_dir: Path, *, concurrency_default=4,
                 timeout_default=60.0, queue_limit=64, result_ttl=3600.0, tasks_path: Optional[Path] = None,
                 tasks: Optional[Tasks] = None):
        self.name, self.versions = name, versions
        self.cache_dir = private_dir(cache_dir)
        self.concurrency_default, self.timeout_default = concurrency_default, timeout_default
        self.queue_limit = queue_limit
        self.started = now_iso()
        self.aliases: dict = {}
        self.vids: list[str] = []
        self._read_at = float("-inf")
        self.manifests: dict[str, dict] = {}
        self.pools: dict[str, Pool] = {}
        self.stats: dict[str, VersionStats] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        if tasks is None and tasks_path is not None:
            private_dir(tasks_path.parent)
        # the broker's (serve.prepare, when the hub names one) or the SQLite file's
        self.tasks = tasks or SqliteTasks(str(tasks_path or self.cache_dir / "tasks.sqlite"), result_ttl)
        self.running: dict[str, tuple[Handle, asyncio.Task]] = {}
        self.closing = False

    def read_sync(self) -> None:
        self.aliases, self.vids = self.versions.aliases(), self.versions.vids()
        self._read_at = time.monotonic()

    async def refresh(self, force: bool = False) -> None:
        if force or time.monotonic() - self._read_at > ALIAS_MAX_AGE:
            await asyncio.to_thread(self.read_sync)

    async def resolve(self, ref: Optional[str]) -> str:
        ref = ref or "latest"
        if VID.match(ref) and ref in self.manifests:  # a full vid is immutable: no need to re-read
            return ref
        await self.refresh()
        try:
            vid = resolve(self.aliases, self.vids, ref)
        except UnknownVersion as e:
            raise CallError(404, "NotFound", f"{self.name}: {e}") from None
        if not VID.match(vid):  # an aliases.json edited by hand
            raise CallError(404, "NotFound", f"{self.name}: alias {ref!r} names no version id ({vid!r})")
        return vid

    async def pool(self, vid: str) -> Pool:
        if vid in self.pools:
            return self.pools[vid]
        async with self._locks.setdefault(vid, asyncio.Lock()):
            if vid not in self.pools:
                try:
                    manifest = await asyncio.to_thread(self.versions.manifest, vid)
                    code = await asyncio.to_thread(self.versions.code, vid)
                except NotFound as e:
                    raise CallError(404, "NotFound", f"version {vid} is not in the bucket ({e})") from None
                except SourceError as e:
                    raise CallError(502, "SourceError", str(e)) from None
                d = private_dir(self.cache_dir / vid)
                path = d / "code.py"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(code)
                module = f"esker_fn_{self.name.replace('-', '_')}_{vid}"
                self.manifests[vid] = manifest
                self.stats.setdefault(vid, VersionStats())
                self.pools[vid] = Pool(str(path), manifest["entry"], module,
                                       concurrency=manifest.get("concurrency") or self.concurrency_default,
                                       timeout=manifest.get("timeout") or self.timeout_default,
                                       queue_limit=self.queue_limit)
        return self.pools[vid]

    def busy(self) -> bool:
        """A call or a task is waiting or running."""
        return bool(self.running) or any(s.in_flight for s in self.stats.values())

    async def close(self) -> None:
        self.closing = True
        jobs = [task for _, task in self.running.values()]
        for task in jobs:
            task.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        for p in self.pools.values():
            await p.close()
        self.tasks.close()


class Activity:
    """While the function is busy, report activity to the hub every ``every`` s (as jupyter-server does), so
    neither the hub-wide idle culler nor the functions service's idle pass stops a server in mid-call: a
    long task makes no proxy traffic."""

    def __init__(self, url: str, token: str, server: str, every: float = 30.0):
        self.url, self.token, self.server, self.every = url, token, server, every

    def post(self) -> None:
        t = now_iso()
        body = json.dumps({"servers": {self.server: {"last_activity": t}}, "last_activity": t}).encode()
        req = urllib.request.Request(self.url, body, method="POST", headers={
            "Authorization": f"token {self.token}", "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).close()

    async def run(self, busy) -> None:
        while True:
            await asyncio.sleep(self.every)
            if busy():
                try:
                    await asyncio.to_thread(self.post)
                except Exception as e:  # the hub restarting: the next round tries again
                    log.warning("could not report activity to the hub: %s", e)


class CallLog:
    """One line per call, to stderr and to `$HOME/.esker/functions/<name>.log` (0600): caller, version,
    route, status, milliseconds. Never tokens, never bodies."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        if path is not None:
            private_dir(path.parent)

    def write(self, caller: str, vid: str, route: str, status: int, ms: float) -> None:
        line = f"{now_iso()} {caller} {vid or '-'} {route} {status} {ms:.1f}ms"
        log.info(line)
        if self.path is not None:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "a") as f:
                    f.write(line + "\n")
            except OSError as e:
                log.warning("cannot append to %s: %s", self.path, e.strerror)


async def read_args(request: Request, limit: int) -> dict:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise CallError(413, "TooLarge", f"the body is over {limit} bytes (ESKER_FUNCTION_MAX_BODY)")
    if not body.strip():
        return {}
    try:
        args = json.loads(body)
    except ValueError as e:
        raise CallError(400, "BadRequest", f"the body is not JSON: {e}") from None
    if not isinstance(args, dict):
        raise CallError(422, "ValidationError", "the body must be a JSON object of keyword arguments",
                        fields=[{"loc": [], "msg": f"expected an object, got {type(args).__name__}"}])
    return args


def build_app(fn: Function, auth: Auth, prefix: str, calllog: CallLog, max_body: int = 10 * 2**20,
              activity: Optional[Activity] = None) -> Starlette:
    """``prefix``: JUPYTERHUB_SERVICE_PREFIX (ends with /)."""

    def guarded(route: str, who: str = "access"):
        """Authenticate every request first; ``who``: access (the server's scope), owner, or stats."""
        def wrap(handler):
            async def endpoint(request: Request):
                t0 = time.monotonic()
                try:
                    caller, access = await auth.identify(request.headers.get("authorization"))
                except Denied as e:
                    return error(e.status, "Unauthorized" if e.status == 401 else "HubError", str(e),
                                 headers={"WWW-Authenticate": "token"} if e.status == 401 else None)
                allowed = {"access": access, "owner": access and auth.is_owner(caller),
                           "stats": auth.may_see_stats(caller) and (access or caller.kind == "service")}[who]
                if not allowed:
                    why = "has no access to this function" if not access else f"may not use {route}"
                    calllog.write(caller.key, "", route, 403, (time.monotonic() - t0) * 1000)
                    return error(403, "Forbidden", f"{caller.kind} {caller.name!r} {why}")
                try:
                    return await handler(request, caller, t0)
                except CallError as e:
                    calllog.write(caller.key, "", route, e.status, (time.monotonic() - t0) * 1000)
                    return error(e.status, e.error["type"], e.error["message"],
                                 **{k: v for k, v in e.error.items() if k not in ("type", "message")})
                except TaskStoreError as e:  # the broker restarting: the caller may try again shortly
                    log.warning("%s: %s", route, e)
                    calllog.write(caller.key, "", route, 503, (time.monotonic() - t0) * 1000)
                    return error(503, "BrokerUnavailable", f"{e}; try again shortly", headers={"Retry-After": "5"})
                except Exception:  # a bug of ours: logged here, the caller gets no traceback
                    log.exception("%s %s failed", request.method, route)
                    return error(500, "ServerError", f"the function server failed on {route}; see its log")
            return endpoint
        return wrap

    @guarded("api")
    async def ready(request, caller, t0):
        await fn.refresh()
        return JSONResponse({"function": fn.name, "versions": fn.vids, "aliases": fn.aliases})

    async def run_call(request, caller, t0, ref):
        args = await read_args(request, max_body)
        vid = await fn.resolve(ref)
        pool = await fn.pool(vid)
        st = fn.stats[vid]
        st.in_flight += 1
        status, result, err = 200, None, None
        try:
            result = await pool.call(args)
        except CallError as e:
            status, err = e.status, e
        finally:
            st.in_flight -= 1
        seconds = time.monotonic() - t0
        st.observe(seconds, status)
        calllog.write(caller.key, vid, "call", status, seconds * 1000)
        headers = {"X-Esker-Version": vid, "X-Esker-Duration-Ms": f"{seconds * 1000:.1f}"}
        if err is not None:
            extra = {k: v for k, v in err.error.items() if k not in ("type", "message")}
            return error(status, err.error["type"], err.error["message"], headers=headers, **extra)
        return JSONResponse(result, headers=headers)

    @guarded("call")
    async def call(request, caller, t0):
        return await run_call(request, caller, t0, request.path_params.get("ref"))

    async def record(tid: str, status: str, **outcome):
        """Store a task's outcome; a broker that is briefly away (a restart) gets retries for about 30 s."""
        last = None
        for delay in (0, 0.5, 1, 2, 4, 8, 15):
            await asyncio.sleep(delay)
            try:
                return fn.tasks.finish(tid, status, **outcome)
            except TaskStoreError as e:
                last = e
        log.error("task %s: its outcome (%s) could not be stored: %s", tid, status, last)

    async def run_task(tid: str, who: str, vid: str, pool: Pool, args: dict, handle: Handle):
        st = fn.stats[vid]
        t0 = time.monotonic()
        status = 200
        cancelled = {"type": "Cancelled", "message": "cancelled by a DELETE"}
        try:
            st.in_flight += 1
            result = await pool.call(args, handle, admitted=True)
            outcome = ("done", {"result": result})
        except CallError as e:
            status = e.status
            outcome = ("cancelled", {"error": cancelled}) if handle.cancelled else \
                ("failed", {"error": {**e.error, "status": e.status}})
        except asyncio.CancelledError:
            status = 499
            # the server is stopping: the same answer a restart gives an unfinished task
            outcome = ("failed", {"error": RESTARTED}) if fn.closing else ("cancelled", {"error": cancelled})
        try:
            await record(tid, outcome[0], **outcome[1])
        finally:
            st.in_flight -= 1
            fn.running.pop(tid, None)
            st.observe(time.monotonic() - t0, status)
            calllog.write(who, vid, "task", status, (time.monotonic() - t0) * 1000)

    @guarded("async")
    async def submit(request, caller, t0):
        args = await read_args(request, max_body)
        vid = await fn.resolve(request.path_params.get("ref"))
        pool = await fn.pool(vid)
        if pool.full():
            raise CallError(429, "TooManyRequests", f"{pool.waiting} calls are already waiting for this version")
        tid = fn.tasks.create(caller.key, vid)
        handle = Handle(on_start=lambda: fn.tasks.running(tid))
        fn.running[tid] = (handle, asyncio.get_running_loop().create_task(
            run_task(tid, caller.key, vid, pool, args, handle)))
        calllog.write(caller.key, vid, "async", 202, (time.monotonic() - t0) * 1000)
        return JSONResponse({"task": tid, "status": "queued", "url": f"{prefix}tasks/{tid}"}, 202,
                            headers={"X-Esker-Version": vid, "Location": f"{prefix}tasks/{tid}"})

    def visible(caller: Caller, tid: str) -> dict:
        t = fn.tasks.get(tid)
        if t is None or not (t["caller"] == caller.key or auth.is_owner(caller)):
            raise CallError(404, "NotFound", "no such task (or it expired, or it is not yours)")
        return t

    def task_json(t: dict) -> dict:
        out = {"task": t["task"], "status": t["status"], "version": t["version"], "created": now_iso(t["created"]),
               "finished": now_iso(t["finished"]) if t["finished"] else None}
        if t["status"] == "done":
            out["result"] = t["result"]
        elif t["error"]:
            out["error"] = t["error"]
        return out

    @guarded("tasks")
    async def task(request, caller, t0):
        tid = request.path_params["tid"]
        t = visible(caller, tid)
        if request.method == "GET":
            return JSONResponse(task_json(t))
        if t["status"] in FINISHED:  # DELETE of a finished task forgets it (and its result)
            fn.tasks.delete(tid)
            return JSONResponse({**task_json(t), "deleted": True})
        handle, job = fn.running.get(tid, (None, None))
        if handle is not None:
            handle.cancel()  # kills the worker if it is running
            if handle.worker is None:
                job.cancel()  # still waiting for a worker
        fn.tasks.finish(tid, "cancelled", error={"type": "Cancelled", "message": "cancelled by a DELETE"})
        return JSONResponse(task_json(fn.tasks.get(tid)))

    @guarded("openapi.json")
    async def openapi(request, caller, t0):
        ref = request.query_params.get("version")
        vid = await fn.resolve(ref)
        pool = await fn.pool(vid)
        schemas = await pool.describe()
        label = fn.manifests[vid].get("semver") or ""
        return JSONResponse(schema_mod.openapi(fn.name, vid, prefix, json.loads(json.dumps(schemas)), label))

    @guarded("stats", who="stats")
    async def stats(request, caller, t0):
        return JSONResponse({"function": fn.name, "started": fn.started,
                             "versions": {vid: s.as_json() for vid, s in fn.stats.items()}})

    @guarded("reload", who="owner")
    async def reload(request, caller, t0):
        await fn.refresh(force=True)
        return JSONResponse({"function": fn.name, "versions": fn.vids, "aliases": fn.aliases})

    async def not_found(request, exc):
        return error(exc.status_code, "NotFound" if exc.status_code == 404 else "MethodNotAllowed",
                     f"{request.method} {request.url.path}: {exc.detail}")

    p = prefix
    routes = [
        Route(f"{p}api", ready, methods=["GET"]),
        Route(p, call, methods=["POST"]),
        Route(f"{p}v/{{ref}}", call, methods=["POST"]),
        Route(f"{p}async", submit, methods=["POST"]),
        Route(f"{p}async/v/{{ref}}", submit, methods=["POST"]),
        Route(f"{p}tasks/{{tid}}", task, methods=["GET", "DELETE"]),
        Route(f"{p}openapi.json", openapi, methods=["GET"]),
        Route(f"{p}stats", stats, methods=["GET"]),
        Route(f"{p}reload", reload, methods=["POST"]),
    ]
    if p != "/":
        routes.append(Route(p.rstrip("/"), call, methods=["POST"]))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        reporter = asyncio.create_task(activity.run(fn.busy)) if activity else None
        yield
        if reporter:
            reporter.cancel()
        await fn.close()

    return Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)
