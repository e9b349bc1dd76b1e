"""JupyterHub-style failure-mode spawners (after jupyterhub.tests.mocking): Esker's local backend with one
way to fail each, so the spawn-error paths run on a real hub without root (developer mode, no accounts).

One hub serves every mode: the user name's first word picks it (``slow-1`` is slow). Each mode fails after
Esker has taken what the plan needs (a GPU, scratch), which is what a failed spawn must give back.
"""

from __future__ import annotations

import asyncio
import sys

from esker.spawner.local import EskerLocalSpawner


class FailureModeSpawner(EskerLocalSpawner):
    """slow: longer than Spawner.start_timeout; neverready: runs but never answers HTTP
    (Spawner.http_timeout); badexit: exits at once with status 3; broken: placement raises after the GPU
    is assigned. Anyone else starts normally."""

    @property
    def failure_mode(self) -> str:
        return self.user.name.split("-", 1)[0]

    async def esker_prepare(self, sel):
        await super().esker_prepare(sel)
        mode = self.failure_mode
        if mode == "slow":
            self.esker_event(85, "slow on purpose")
            await asyncio.sleep(3600)
        elif mode == "neverready":
            self.cmd = [sys.executable, "-c", "import time; time.sleep(3600)"]
        elif mode == "badexit":
            self.cmd = [sys.executable, "-c", "import sys; sys.exit(3)"]
        elif mode == "broken":
            raise RuntimeError("scratch filesystem is read-only (on purpose)")

    def get_args(self):
        return [] if self.failure_mode in ("neverready", "badexit") else super().get_args()
