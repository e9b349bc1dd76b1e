"""The ``esker-courses`` JupyterHub-managed service: a REST API for courses and reservations, the per-course
idle culler, pre-warming and pre-starting participants' servers. Served by the hub's proxy at /services/esker-courses/ (docs/courses.md).

This module is the process: the routes (``make_app``) and ``main``. The handlers are in
``esker.courses.handlers``, the API's OpenAPI description in ``esker.courses.openapi`` (served at
``<prefix>/openapi.json``), the periodic jobs in ``esker.courses.jobs``, the hub API client and the instructors'
access in ``esker.courses.hubsync``, and what they share in ``esker.courses.context``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from urllib.parse import urlparse

from jupyterhub.services.auth import HubAuth
from tornado import web
from tornado.ioloop import IOLoop, PeriodicCallback

from esker.core import config as config_mod
from esker.courses.context import ServiceState, State  # noqa: F401 (State: re-exported for callers)
from esker.courses.handlers import (
    CapacityHandler,
    CourseHandler,
    CoursesHandler,
    JoinHandler,
    NotFoundHandler,
    OpenApiHandler,
    PageHandler,
    ReservationHandler,
    ReservationsHandler,
    SyncHandler,
)
from esker.courses.hubsync import HubApi, sync_members
from esker.courses.jobs import cull_once, prestart_once, prewarm_once  # noqa: F401 (re-exported for callers)
from esker.runtime import default_state_dir

log = logging.getLogger("esker.courses")


def make_app(st: ServiceState, prefix: str) -> web.Application:
    """The routes under ``prefix``; each is described in esker.courses.openapi (tests/unit checks both agree)."""
    p = prefix.rstrip("/")
    return web.Application([
        (rf"{p}/?", PageHandler),
        (rf"{p}/openapi\.(json|yaml)", OpenApiHandler, {"prefix": prefix}),
        (rf"{p}/api/courses/?", CoursesHandler),
        (rf"{p}/api/courses/([a-z0-9-]+)/?", CourseHandler),
        (rf"{p}/api/courses/([a-z0-9-]+)/join", JoinHandler),
        (rf"{p}/api/courses/([a-z0-9-]+)/sync", SyncHandler),
        (rf"{p}/api/reservations/?", ReservationsHandler),
        (rf"{p}/api/reservations/([a-z0-9]+)", ReservationHandler),
        (rf"{p}/api/capacity", CapacityHandler),
    ], state=st, default_handler_class=NotFoundHandler)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s esker-courses] %(message)s")
    cfg = config_mod.load(os.environ.get("ESKER_CONFIG") or None)
    state_dir = os.environ.get("ESKER_STATE_DIR") or default_state_dir()
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    api_url = os.environ["JUPYTERHUB_API_URL"]
    auth = HubAuth(api_token=token, api_url=api_url, cache_max_age=30)
    st = ServiceState(cfg, state_dir, HubApi(api_url, token), auth)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/esker-courses/")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:0"))
    app = make_app(st, prefix)
    app.listen(url.port, address=url.hostname or "127.0.0.1", xheaders=True)
    every = float(os.environ.get("ESKER_COURSES_CULL_EVERY", "60"))

    async def cull():
        try:
            await cull_once(st)
        except Exception:
            log.exception("culling failed")

    warming = asyncio.Lock()

    async def prewarm():
        if warming.locked():
            return  # the start-up pass is still building
        async with warming:
            try:
                await prewarm_once(st)
            except Exception:
                log.exception("pre-warming failed")

    starting = asyncio.Lock()

    async def prestart():
        if starting.locked():
            return
        async with starting:
            try:
                await prestart_once(st)
            except Exception:
                log.exception("pre-start pass failed (the next pass tries again)")

    passes = 0
    full_every = max(1, int(os.environ.get("ESKER_COURSES_ACCESS_FULL_EVERY", "10")))

    async def access():
        """Instructors' shares in step with the groups (which admins may change in the hub directly); every
        tenth pass (ESKER_COURSES_ACCESS_FULL_EVERY) also checks the hub's shares and grants what is missing (a
        share goes with its server when a user is deleted)."""
        nonlocal passes
        passes += 1
        try:
            await st.sync_access(full=passes % full_every == 0)
        except Exception:
            log.exception("instructors' access pass failed")

    async def setup():
        for c in st.courses().values():  # runtime courses' groups (config ones come from load_groups)
            if c.source == "runtime":
                try:
                    await sync_members(st.api, c.group, list(c.participants))
                except Exception as e:
                    log.warning("group %s: %s", c.group, e)
        try:
            await st.sync_access(full=True)
        except Exception:
            log.exception("instructors' access at start failed (the next pass tries again)")

    PeriodicCallback(cull, every * 1000).start()
    PeriodicCallback(access, float(os.environ.get("ESKER_COURSES_ACCESS_EVERY", "60")) * 1000).start()
    # A separate loop: building an environment takes minutes and must not hold up culling. Tornado awaits a
    # coroutine callback before scheduling the next run, so passes never overlap.
    warm_every = float(os.environ.get("ESKER_COURSES_PREWARM_EVERY", "60"))
    PeriodicCallback(prewarm, warm_every * 1000).start()
    # Pre-start: the participants' servers before a reservation's window (cheap when none is due: no hub call).
    PeriodicCallback(prestart, float(os.environ.get("ESKER_COURSES_PRESTART_EVERY", "30")) * 1000).start()
    IOLoop.current().add_callback(setup)
    IOLoop.current().add_callback(prewarm)
    IOLoop.current().add_callback(prestart)
    log.info("esker-courses on %s%s", url.geturl(), prefix)
    loop = IOLoop.current()

    def stop(signum, _frame):
        # The hub stops its managed services with SIGINT, then SIGTERM: leave at once, without waiting for a
        # pre-warming build's thread (a daemon's work; the next start picks it up).
        log.info("esker-courses stopping (signal %d)", signum)
        loop.add_callback_from_signal(loop.stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    loop.start()
    os._exit(0)


if __name__ == "__main__":
    main()
