"""The spawner's readiness wait (esker.spawner.readiness) against real sockets: a server that starts listening
late is seen, an error answer keeps waiting, a process that exits ends the wait at once, and a
budget that runs out returns False."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from esker.spawner.readiness import ExitedEarly, wait_answering
from esker.system.ports import free_port


def serve(port: int, status: int, after: float) -> HTTPServer:
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *a):
            pass

    box = {}

    def run():
        time.sleep(after)
        box["srv"] = HTTPServer(("127.0.0.1", port), H)
        box["srv"].serve_forever(poll_interval=0.05)

    threading.Thread(target=run, daemon=True).start()
    return box


def stop(box):
    for _ in range(100):
        if "srv" in box:
            box["srv"].shutdown()
            box["srv"].server_close()
            return
        time.sleep(0.05)


def test_a_late_listener_counts_once_it_answers_even_a_redirect():
    port = free_port()
    box = serve(port, 302, after=0.6)
    try:
        assert asyncio.run(wait_answering(f"http://127.0.0.1:{port}/user/a/api", 10)) is True
    finally:
        stop(box)


def test_error_answers_are_not_ready_and_the_budget_ends_the_wait():
    port = free_port()
    box = serve(port, 503, after=0)
    try:
        assert asyncio.run(wait_answering(f"http://127.0.0.1:{port}/api", 0.5)) is False
    finally:
        stop(box)


def test_an_exited_process_ends_the_wait_with_its_status():
    port = free_port()  # nobody listens

    async def exited():
        return 3

    with pytest.raises(ExitedEarly, match="status 3"):
        asyncio.run(wait_answering(f"http://127.0.0.1:{port}/api", 30, exited))
