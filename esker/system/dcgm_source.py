"""GPU use per pod on Kubernetes, read from NVIDIA's DCGM exporter (gpus.metrics_url), cached.

:class:`DcgmSource` fetches the exporter's text at most once per ``interval`` seconds, whoever asks (the metrics
collector at each scrape, the GPU policy's loop), and parses it with esker.core.dcgm. A failed fetch (the exporter
down, a timeout, an HTTP error) is logged once per outage, not at every try; the last good answer stands for up to
three intervals after it was fetched, then there is none (``{}``: use unknown, so the policy stops nothing on it)
until a fetch succeeds again, which is logged too.

Blocking: a fetch takes up to ``timeout`` seconds, in the calling thread; call it from a thread (an executor), not
from the hub's event loop. At most one fetch runs at a time: a caller that finds one under way gets the data held
now without waiting.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from typing import Callable

from esker.core.dcgm import UNUSED, parse
from esker.core.gpus import DeviceUsage

log = logging.getLogger(__name__)

STALE_INTERVALS = 3  # the last good data stands this many intervals after its fetch
MAX_BYTES = 32 * 1024 * 1024  # an exporter's page is tens of KB per node; more is not an exporter

Fetch = Callable[[str, float], str]


def http_fetch(url: str, timeout: float) -> str:
    """GET ``url``; the body as text. Raises on a connection error, a timeout or a non-2xx status."""
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4", "User-Agent": "esker-hub"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the operator's URL (http/https)
        body = resp.read(MAX_BYTES + 1)
        if len(body) > MAX_BYTES:
            raise ValueError(f"more than {MAX_BYTES} bytes")
        return body.decode(resp.headers.get_content_charset() or "utf-8", errors="replace")


class DcgmSource:
    """The DCGM exporter at ``url``, read at most once per ``interval`` seconds (module docstring).
    ``fetch(url, timeout) -> text`` replaces the HTTP GET; ``clock`` (monotonic seconds) is for tests."""

    def __init__(self, url: str, interval: float, timeout: float = 2.0, fetch: Fetch | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.url = url
        self.interval = float(interval)
        self.timeout = float(timeout)
        self._fetch = fetch or http_fetch
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._fetching = threading.Lock()  # held by the one thread fetching
        self._data: dict[tuple[str, str], list[DeviceUsage]] = {}
        self._good_at: float | None = None  # when the data was fetched
        self._tried_at: float | None = None
        self._error: str | None = None  # the current outage's first error; None while the exporter answers
        self.fetches = 0  # attempts, successful or not

    # ----------------------------------------------------------------------------------------- reading
    def all(self) -> dict[tuple[str, str], list[DeviceUsage]]:
        """DeviceUsage per (namespace, pod), GPUs no pod holds under ("", ""); {} when there is no usable data."""
        self._refresh_if_due()
        with self._lock:
            if self._good_at is None or self._clock() - self._good_at > STALE_INTERVALS * self.interval:
                return {}
            return {k: list(v) for k, v in self._data.items()}

    def usage_for(self, namespace: str, pod: str) -> list[DeviceUsage]:
        """The GPUs the pod holds, as the exporter saw them last; [] when it holds none or nothing is known."""
        if not pod:
            return []  # ("", "") holds the GPUs nobody's pod has: never a server's
        return self.all().get((namespace, pod), [])

    def unused(self) -> list[DeviceUsage]:
        """GPUs the exporter sees and no pod holds."""
        return self.all().get(UNUSED, [])

    @property
    def error(self) -> str | None:
        """The error of the outage under way (None while the exporter answers, or before the first fetch)."""
        with self._lock:
            return self._error

    # ----------------------------------------------------------------------------------------- fetching
    def _due(self) -> bool:
        return self._tried_at is None or self._clock() - self._tried_at >= self.interval

    def _refresh_if_due(self) -> None:
        if not self.url:
            return
        with self._lock:
            if not self._due():
                return
        if not self._fetching.acquire(blocking=False):
            return  # another thread is fetching: answer what is held now
        try:
            with self._lock:
                if not self._due():  # fetched while this thread waited for the lock
                    return
                self._tried_at = self._clock()
                self.fetches += 1
            try:
                bad: list[int] = []
                data = parse(self._fetch(self.url, self.timeout), bad)
            except Exception as e:  # noqa: BLE001 - any failure is an outage of the exporter
                self._failed(e)
                return
            with self._lock:
                self._data, self._good_at = data, self._clock()
                recovered, self._error = self._error, None
            if recovered:
                log.info("GPU use: the DCGM exporter at %s answers again", self.url)
            if bad:
                log.debug("GPU use: %d line(s) of %s did not parse (first: line %d)", len(bad), self.url, bad[0])
        finally:
            self._fetching.release()

    def _failed(self, e: Exception) -> None:
        message = f"{type(e).__name__}: {e}"
        with self._lock:
            first = self._error is None
            if first:
                self._error = message
        if first:
            log.warning("GPU use: cannot read the DCGM exporter at %s (%s); the last data stands for %d s, then "
                        "GPU use is unknown until it answers", self.url, message,
                        int(STALE_INTERVALS * self.interval))
