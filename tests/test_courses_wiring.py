"""The spawner hooks for courses, as a subclass of EskerLocalSpawner: exactly the lines proposed for
spawner/local.py (docs/courses.md, "Wiring"). The integration tests run the hub with this class until
local.py calls the hooks itself; then they use the stock spawner (see ``wired_in_local``).
"""

from __future__ import annotations

import inspect

from tornado import web
from traitlets import default

from esker.hub.courses import course_environment, prepare_course_content
from esker.hub.reservations import check_seat, running_from_db
from esker.spawner.local import EskerLocalSpawner


def wired_in_local() -> bool:
    return "prepare_course_content" in inspect.getsource(EskerLocalSpawner)


class WiredSpawner(EskerLocalSpawner):
    @default("apply_user_options")
    def _apply_user_options_default(self):
        return WiredSpawner._validate_user_options

    def _validate_user_options(self, user_options):
        super()._validate_user_options(user_options)
        # hook 1 (end of _validate_user_options): seats promised to a course are kept for it
        check_seat(self.runtime, self.user_info(), self.selection,
                   running_by_profile=running_from_db(self.user.db, self.runtime.catalog, exclude=self.user.name))

    def _account(self):
        acct = super()._account()
        self._course_home = acct
        return acct

    async def _prepare_storage(self, sel, placement):
        # hook 2 (in start(), after the account exists): course content, datasets, course variables
        acct = self._course_home
        uid, gid = (None, None) if self.developer_mode else (acct.uid, acct.gid)
        for msg in await prepare_course_content(self.runtime, sel.user, acct.home, uid, gid):
            self._event(72, msg)
        self._course_env = course_environment(self.runtime, sel.user, acct.home)
        return await super()._prepare_storage(sel, placement)

    def get_env(self):
        env = super().get_env()
        env.update(getattr(self, "_course_env", {}))  # hook 3 (get_env)
        return env


def test_shim_imports():
    assert issubclass(WiredSpawner, EskerLocalSpawner)
    assert isinstance(web.HTTPError(503, "x"), Exception)
