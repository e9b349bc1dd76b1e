"""What the esker-courses service's request handlers and periodic jobs share: the configuration, the course
store, the hub's REST API with the service's token, the token identifier (``HubAuth``) and the pre-warming
knobs. One ``ServiceState`` per service process, made in ``esker.courses.service.main``."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from esker.core.catalog import Catalog
from esker.courses.hubsync import HubApi, reconcile_access
from esker.courses.model import Course, courses_from_config
from esker.courses.reservations import machine_capacity
from esker.state.coursestore import CourseStore
from esker.system.gpus import configured_gpus


class ServiceState:
    def __init__(self, cfg, state_dir: str, api: HubApi, auth, builder=None, spark_check=None, kube=None,
                 backend: str | None = None, lookahead: timedelta | None = None):
        self.cfg = cfg
        self.state_dir = state_dir
        self.catalog = Catalog.from_config(cfg)
        self.store = CourseStore.for_state_dir(state_dir)
        try:
            ngpu = len(configured_gpus(cfg["gpus"]["devices"], cfg["gpus"]["types"])[0])
        except Exception:
            ngpu = 0
        self.capacity = machine_capacity(cfg, state_dir, ngpu)
        self.api = api
        self.auth = auth
        # Pre-warming. embedded: build environments, check Spark; kubernetes: placeholder pods (kube: a
        # kubernetes_asyncio CoreV1Api, made on first use in the hub pod). builder and spark_check are made on
        # first use too (esker.courses.jobs).
        self.backend = backend or os.environ.get("ESKER_COURSES_BACKEND", "embedded")
        self.lookahead = lookahead if lookahead is not None else timedelta(
            seconds=float(os.environ.get("ESKER_COURSES_PREWARM_LOOKAHEAD", "1800")))
        self.builder = builder
        self.spark_check = spark_check
        self.kube = kube
        self.placeholders_made: set[str] = set()
        # Pre-start (esker.courses.prestart): a failed start is retried after base * 2**(n-1) seconds, at most cap.
        base = float(os.environ.get("ESKER_COURSES_PRESTART_BACKOFF", "60"))
        self.prestart_backoff = (base, 10 * base)
        self.access_lock = asyncio.Lock()  # one access pass at a time (handlers and the periodic pass)

    def courses(self) -> dict[str, Course]:
        return {c.name: c for c in self.store.effective_courses(courses_from_config(self.cfg))}

    async def sync_access(self, full: bool = False) -> dict:
        """Instructors' shares of their participants' servers in step with the courses (hubsync)."""
        async with self.access_lock:
            return await reconcile_access(self.api, self.store, self.courses().values(), full)


State = ServiceState  # the name the tests and older callers use
