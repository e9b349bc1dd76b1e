"""The ``esker-functions`` JupyterHub-managed service process: routes (``make_app``), the idle and stats pass,
``main``. Served by the hub's proxy at /services/esker-functions/ (docs/functions.md)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from datetime import datetime
from urllib.parse import quote, urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback

from esker.core import config as config_mod
from esker.core.catalog import Catalog
from esker.core.functions import SERVER_PREFIX
from esker.courses.hubsync import HubApi
from esker.functions import handlers as h
from esker.functions import stats
from esker.functions.activator import Activator
from esker.functions.roles import SNAPSHOT, STORE
from esker.functions.store import FunctionStore
from esker.runtime import default_state_dir

log = logging.getLogger("esker.functions")
NAME = r"([a-z][a-z0-9-]{0,30})"


class State:
    def __init__(self, cfg, state_dir: str, api, auth, proxy_url: str, base_url: str, public: str):
        f = cfg["functions"]
        self.cfg, self.state_dir, self.api, self.auth = cfg, state_dir, api, auth
        self.store = FunctionStore(os.path.join(state_dir, STORE))
        self.activator = Activator(api, self.store, float(f["start_wait"]))
        self.proxy_url, self.base_url, self.public = proxy_url, base_url, public
        self.call_timeout = float(os.environ.get("ESKER_FUNCTIONS_CALL_TIMEOUT", "300"))
        self.http = AsyncHTTPClient()
        self._catalog = Catalog.from_config(cfg)

    def catalog(self) -> Catalog:
        return self._catalog

    def call_url(self, owner: str, name: str) -> str:
        return f"{self.public}call/{quote(owner, safe='')}/{name}"


def make_app(st: State, prefix: str) -> web.Application:
    p = prefix.rstrip("/")
    return web.Application([
        (rf"{p}/?", h.PageHandler),
        (rf"{p}/oauth_callback", HubOAuthCallbackHandler),
        (rf"{p}/call/([^/]+)/{NAME}(/.*)?", h.CallHandler),
        (rf"{p}/api/functions/?", h.FunctionsHandler),
        (rf"{p}/api/functions/{NAME}/?", h.FunctionHandler),
        (rf"{p}/api/functions/{NAME}/shares", h.SharesHandler),
        (rf"{p}/api/functions/{NAME}/share-codes", h.ShareCodesHandler),
    ], state=st, hub_auth=st.auth, cookie_secret=os.urandom(32), default_handler_class=h.NotFoundHandler)


async def idle_and_stats_once(st: State, now: float | None = None) -> list[str]:
    """Stop fn servers idle past functions.idle_timeout (the hub's last activity, or the activator's last call,
    whichever is later) unless a call or task is in flight there; pull each running one's stats into the
    metrics snapshot. Returns the stopped."""
    now = now or time.time()
    idle = st.cfg["functions"]["idle_timeout"]
    stopped, pulled = [], {}
    async for user in st.api.paginated("/users?state=ready"):
        for server, model in (user.get("servers") or {}).items():
            if not server.startswith(SERVER_PREFIX) or not model.get("ready"):
                continue
            owner, name = user["name"], server[len(SERVER_PREFIX):]
            url = f"{st.proxy_url.rstrip('/')}{st.base_url.rstrip('/')}/user/{quote(owner, safe='')}/{server}/stats"
            r = await st.http.fetch(HTTPRequest(url, headers={"Authorization": f"token {st.api.token}"},
                                                request_timeout=10), raise_error=False)
            got = None
            if r.code == 200:
                try:
                    got = pulled[f"{owner}/{name}"] = json.loads(r.body)
                except ValueError:
                    pass
            last = model.get("last_activity")
            seen = datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() if last else now
            seen = max(seen, st.activator.last_call.get((owner, name), 0))
            if idle and now - seen > idle and not stats.busy(got):
                log.info("stopping %s/%s: idle %ds", owner, server, now - seen)
                await st.api.request("DELETE", f"/users/{quote(owner, safe='')}/servers/{server}")
                stopped.append(f"{owner}/{name}")
                pulled.pop(f"{owner}/{name}", None)
    stats.write(os.path.join(st.state_dir, SNAPSHOT), stats.snapshot(pulled, st.activator.cold_starts))
    return stopped


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s esker-functions] %(message)s")
    cfg = config_mod.load(os.environ.get("ESKER_CONFIG") or None)
    state_dir = os.environ.get("ESKER_STATE_DIR") or default_state_dir()
    token, api_url = os.environ["JUPYTERHUB_API_TOKEN"], os.environ["JUPYTERHUB_API_URL"]
    auth = HubOAuth(api_token=token, api_url=api_url, cache_max_age=5)  # short: a revoked share ends soon
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/esker-functions/")
    base_url = os.environ.get("JUPYTERHUB_BASE_URL", "/")
    proxy_url = os.environ.get("ESKER_FUNCTIONS_PROXY_URL", "http://127.0.0.1:8000")
    st = State(cfg, state_dir, HubApi(api_url, token), auth, proxy_url, base_url, f"{proxy_url.rstrip('/')}{prefix}")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:0"))
    make_app(st, prefix).listen(url.port, address=url.hostname or "127.0.0.1", xheaders=True)

    async def tick():
        try:
            await idle_and_stats_once(st)
        except Exception:
            log.exception("idle/stats pass failed (the next pass tries again)")

    PeriodicCallback(tick, cfg["functions"]["cull_every"] * 1000).start()
    loop = IOLoop.current()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: loop.add_callback_from_signal(loop.stop))
    log.info("esker-functions on %s%s", url.geturl(), prefix)
    loop.start()


if __name__ == "__main__":
    main()
