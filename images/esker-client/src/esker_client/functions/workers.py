"""The worker processes of one version: at most `concurrency` calls at once, a bounded queue of waiting
callers, a timeout that kills the worker, and a new worker for every one that was killed or died."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Optional

# One answer may be large (a prediction for many rows); the default asyncio line limit is 64 KiB.
LINE_LIMIT = 256 * 1024 * 1024
# Variables a worker does not get: the function is called by other users and never needs the server's
# own hub token (the server authenticates callers; the function has no business calling the hub as it).
HIDDEN_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_CLIENT_ID")


class CallError(Exception):
    """A call that did not produce a result: HTTP status and the `{"type", "message"}` error body."""

    def __init__(self, status: int, type_: str, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.error = {"type": type_, "message": message, **extra}


@dataclass(eq=False)  # hashed by identity: pools keep sets of them
class Worker:
    proc: asyncio.subprocess.Process
    schema: dict = field(default_factory=dict)

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:  # its own session: the function's child processes go with it
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Handle:
    """A call in progress; `cancel()` kills its worker (the async tasks' DELETE)."""

    def __init__(self, on_start=None):
        self.worker: Optional[Worker] = None
        self.cancelled = False
        self.on_start = on_start  # called when the call gets its worker (an async task turns "running")

    def cancel(self) -> None:
        self.cancelled = True
        if self.worker is not None:
            self.worker.kill()


class Pool:
    def __init__(self, code_path: str, entry: str, module_name: str, concurrency: int, timeout: float,
                 queue_limit: int, python: str = sys.executable, env: Optional[dict] = None):
        self.code_path, self.entry, self.module_name = code_path, entry, module_name
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.queue_limit = int(queue_limit)
        self.python = python
        self.env = {k: v for k, v in (os.environ if env is None else env).items() if k not in HIDDEN_ENV}
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self.running = 0  # calls holding a slot now (what the tests' concurrency check counts)
        self.waiting = 0
        self.schema: Optional[dict] = None
        self._closed = False

    # --- processes ------------------------------------------------------------------------------------
    async def _start(self) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "esker_client.functions.worker", self.code_path, self.entry, self.module_name,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None, env=self.env,
            start_new_session=True, limit=LINE_LIMIT)
        w = Worker(proc)
        self._all.add(w)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=max(self.timeout, 60.0))
        except asyncio.TimeoutError:
            self._drop(w)
            raise CallError(500, "WorkerError", "the function's code did not finish importing in time") from None
        except BaseException:
            self._drop(w)
            raise
        msg = json.loads(line) if line else {"ready": False, "error": {
            "type": "WorkerError", "message": f"worker exited while importing code.py ({await self._exit(w)})"}}
        if not msg.get("ready"):
            self._drop(w)
            err = msg["error"]
            raise CallError(500, err.get("type", "Error"), f"importing the function failed: {err.get('message')}",
                            traceback=err.get("traceback", []))
        w.schema = msg["schema"]
        self.schema = w.schema
        return w

    async def _exit(self, w: Worker) -> str:
        try:
            code = await asyncio.wait_for(w.proc.wait(), 5)
        except asyncio.TimeoutError:
            return "still running"
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    def _drop(self, w: Worker) -> None:
        w.kill()
        self._all.discard(w)
        if w in self._idle:
            self._idle.remove(w)

    async def _take(self) -> Worker:
        while self._idle:
            w = self._idle.pop()
            if w.proc.returncode is None:
                return w
            self._all.discard(w)
        return await self._start()

    def _give(self, w: Worker) -> None:
        if self._closed or w.proc.returncode is not None:
            self._drop(w)
        else:
            self._idle.append(w)

    def replace_soon(self) -> None:
        """Start a worker in the background, for the one just killed (the next call finds it warm)."""
        async def start():
            try:
                w = await self._start()
            except CallError:
                return
            self._give(w)
        if not self._closed:
            asyncio.get_running_loop().create_task(start())

    # --- calls ------------------------------------------------------------------------------------------
    def full(self) -> bool:
        """True when a new caller would have to wait and the queue is full (429)."""
        return self._slots.locked() and self.waiting >= self.queue_limit

    async def describe(self) -> dict:
        """The schemas a worker reported (starting one if none has yet)."""
        if self.schema is None:
            async with self._slots:
                self._give(await self._take())
        return self.schema

    async def call(self, args: dict, handle: Optional[Handle] = None, admitted: bool = False):
        """Run one call; returns the result or raises CallError. ``admitted``: already counted against the
        queue (an async task accepted earlier), so it waits rather than being refused."""
        if not admitted and self.full():
            raise CallError(429, "TooManyRequests",
                            f"{self.waiting} calls are already waiting for this version; try again later")
        handle = handle or Handle()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            if handle.cancelled:
                raise CallError(499, "Cancelled", "the call was cancelled")
            w = await self._take()
            if handle.cancelled:  # cancelled while its worker was starting
                self._give(w)
                raise CallError(499, "Cancelled", "the call was cancelled")
            handle.worker = w
            if handle.on_start:
                handle.on_start()
            try:
                w.proc.stdin.write(json.dumps({"args": args}).encode() + b"\n")
                await w.proc.stdin.drain()
                line = await asyncio.wait_for(w.proc.stdout.readline(), self.timeout)
            except asyncio.TimeoutError:
                self._drop(w)
                self.replace_soon()
                raise CallError(504, "Timeout", f"the call ran past the function's timeout ({self.timeout:g} s); "
                                                "its worker was stopped") from None
            except (BrokenPipeError, ConnectionResetError):
                line = b""
            except asyncio.CancelledError:  # the caller went away: the worker may be mid-call, stop it
                self._drop(w)
                self.replace_soon()
                raise
            if not line:
                how = await self._exit(w)
                self._drop(w)
                self.replace_soon()
                if handle.cancelled:
                    raise CallError(499, "Cancelled", "the call was cancelled; its worker was stopped")
                raise CallError(500, "WorkerExited", f"worker exited during the call ({how}); it was replaced")
            self._give(w)
            msg = json.loads(line)
            if msg["status"] != 200:
                raise CallError(msg["status"], **{"type_": msg["error"].pop("type"), **msg["error"]})
            return msg["result"]
        finally:
            handle.worker = None
            self.running -= 1
            self._slots.release()

    async def close(self) -> None:
        self._closed = True
        for w in list(self._all):
            self._drop(w)
            try:
                await asyncio.wait_for(w.proc.wait(), 5)
            except asyncio.TimeoutError:
                pass
