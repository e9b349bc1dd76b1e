"""The esker-functions routes (docs/functions.md). Errors are ``{"error": {"type", "message"}}``."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

from tornado import web

from esker.core.functions import server_name
from esker.core.plan import OptionError
from esker.functions import access
from esker.functions.activator import StartFailed, forward_request, safe_rest

TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
         502: "bad_gateway", 503: "unavailable"}


class Base(web.RequestHandler):
    @property
    def st(self):
        return self.settings["state"]

    def write_error(self, status_code, **kw):
        exc = kw.get("exc_info", (None, None))[1]
        msg = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"type": TYPES.get(status_code, "error"), "message": msg}}))

    def json(self, data, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    async def caller(self) -> dict:
        """The token's model (header tokens only: no cookies, so no cross-site requests); 401 without one."""
        token = self.st.auth.get_token(self, in_cookie=False)
        model = await self.st.auth.user_for_token(token, sync=False) if token else None
        if not model:
            self.set_header("WWW-Authenticate", "token")
            raise web.HTTPError(401, "a hub token is required (Authorization: token ...)")
        return model

    def body_json(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):
            raise web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return data


class CallHandler(Base):
    """ANY call/<owner>/<name>[/<rest>]: 401/403 before anything is started."""

    async def _any(self, owner: str, name: str, rest: str | None):
        model = await self.caller()
        try:
            allowed = access.may_call(model, owner, name)
        except OptionError as e:
            raise web.HTTPError(400, str(e)) from None
        if not allowed:
            raise web.HTTPError(403, f"{model.get('name')} may not call {owner}/{name} "
                                f"(needs {access.access_scope(owner, name)}: ask {owner} to share it)")
        rest = (rest or "").lstrip("/")
        if not safe_rest(rest):
            raise web.HTTPError(400, "the path must not contain . or .. segments")
        act = self.st.activator
        act.last_call[(owner, name)] = time.time()
        try:
            cold = await act.ensure_running(owner, name)
        except asyncio.TimeoutError:
            self.set_header("Retry-After", str(max(1, int(act.start_wait / 4))))
            raise web.HTTPError(503, f"{owner}/{name} did not start within {act.start_wait:g} s; it is still "
                                "starting, try again") from None
        except StartFailed as e:
            raise web.HTTPError(e.status, str(e)) from None
        req = forward_request(self.st.proxy_url, self.st.base_url, owner, name, rest, self.request.method,
                              self.request.headers, self.request.body, self.st.call_timeout)
        r = await self.st.http.fetch(req, raise_error=False)
        if r.code == 599:
            raise web.HTTPError(502, f"the function did not answer: {r.error}")
        self.set_status(r.code)
        for k, v in r.headers.get_all():
            if k.lower().startswith("x-esker-") or k.lower() in ("content-type", "retry-after"):
                self.set_header(k, v)
        if cold is not None:
            self.set_header("X-Esker-Cold-Start-Seconds", f"{cold:.3f}")
        self.finish(r.body or b"")

    get = post = put = patch = delete = _any


class FunctionsHandler(Base):
    """GET api/functions: the caller's, and those shared with them."""

    async def get(self):
        model = await self.caller()
        me = model.get("name", "")
        own = [r.as_json() for r in self.st.store.of_owner(me)] if model.get("kind") == "user" else []
        shared = []
        for owner, name in self.st.store.keys():
            if owner != me and access.may_call(model, owner, name):
                shared.append({"owner": owner, "name": name, "url": self.st.call_url(owner, name)})
        for r in own:
            r["url"] = self.st.call_url(me, r["name"])
        self.json({"functions": own, "shared_with_me": shared})


class FunctionHandler(Base):
    async def owner(self, name: str) -> dict:
        model = await self.caller()
        try:
            access.user_of(model)
            server_name(name)
        except OptionError as e:
            raise web.HTTPError(e.status, str(e)) from None
        return model

    async def get(self, name):
        model = await self.owner(name)
        rec = self.st.store.get(model["name"], name)
        if rec is None:
            raise web.HTTPError(404, f"no function {name!r}")
        server = await self.st.activator.server(model["name"], name)
        code, shares = await self.st.api("GET", f"/shares/{quote(model['name'], safe='')}/{server_name(name)}")
        self.json({**rec.as_json(), "url": self.st.call_url(model["name"], name), "server": server,
                   "shares": (shares or {}).get("items", [])})

    async def post(self, name):
        """Register a publish: the spawn's catalog check, record, then restart (or start) the server."""
        model = await self.owner(name)
        manifest = self.body_json()
        try:
            access.check_publisher(model, self.st.cfg["functions"]["publish_groups"])
            options = access.publish_options(self.st.catalog(), access.user_of(model), name, manifest)
        except OptionError as e:
            raise web.HTTPError(e.status, str(e)) from None
        owner = model["name"]
        self.st.store.put(owner, name, options, manifest)
        path = f"/users/{quote(owner, safe='')}/servers/{server_name(name)}"
        if await self.st.activator.server(owner, name):
            await self.st.api.request("DELETE", path)  # the next start runs the new version's options
            for _ in range(240):
                if not await self.st.activator.server(owner, name):
                    break
                await asyncio.sleep(0.25)
        code, data = await self.st.api.request("POST", path, {"user_options": options})
        if code not in (201, 202):
            msg = (data or {}).get("message") if isinstance(data, dict) else None
            raise web.HTTPError(code if 400 <= code < 500 else 503, f"the hub refused to start {name}: "
                                f"{msg or code}")
        self.json({"url": self.st.call_url(owner, name), "server": server_name(name),
                   "version": manifest.get("vid")}, 201)

    async def delete(self, name):
        model = await self.owner(name)
        owner = model["name"]
        path = f"/users/{quote(owner, safe='')}/servers/{server_name(name)}"
        await self.st.api.request("DELETE", path, {"remove": True})
        known = self.st.store.delete(owner, name)
        self.json({"deleted": known})


class SharesHandler(FunctionHandler):
    """POST|DELETE api/functions/<name>/shares with {"user": U} or {"group": G}: the owner only."""

    async def _share(self, name, method):
        model = await self.owner(name)
        body = self.body_json()
        if set(body) not in ({"user"}, {"group"}) or not isinstance(next(iter(body.values())), str):
            raise web.HTTPError(400, 'the body must be {"user": name} or {"group": name}')
        if self.st.store.get(model["name"], name) is None:
            raise web.HTTPError(404, f"no function {name!r}")
        code, data = await self.st.api.request(method, f"/shares/{quote(model['name'], safe='')}/"
                                               f"{server_name(name)}", body)
        if code >= 400:
            raise web.HTTPError(code, (data or {}).get("message") if isinstance(data, dict) else str(code))
        self.json(data or {})

    async def post(self, name):
        await self._share(name, "POST")

    async def delete(self, name):
        await self._share(name, "PATCH")  # the hub revokes one share with PATCH, all with DELETE


class ShareCodesHandler(FunctionHandler):
    async def post(self, name):
        model = await self.owner(name)
        body = self.body_json()
        expires = body.get("expires_in", 86400)
        if set(body) - {"expires_in"} or isinstance(expires, bool) or not isinstance(expires, int):
            raise web.HTTPError(400, "expires_in: expected seconds (an integer, 60 to one year)")
        if self.st.store.get(model["name"], name) is None:
            raise web.HTTPError(404, f"no function {name!r}")
        code, data = await self.st.api.request("POST", f"/share-codes/{quote(model['name'], safe='')}/"
                                               f"{server_name(name)}", {"expires_in": expires})
        if code >= 400:
            raise web.HTTPError(code, (data or {}).get("message") if isinstance(data, dict) else str(code))
        self.json(data or {})


class PageHandler(Base):
    """The page: your functions, versions, URL, a curl to copy, and who they are shared with (HubOAuth)."""

    async def get(self):
        user = await self.st.auth.get_user(self, sync=False)  # a token, or HubOAuth's cookie
        if not user:
            # HubOAuth's login: the hub's authorize URL, back to our oauth_callback, then here
            state = self.st.auth.set_state_cookie(self, next_url=self.request.uri)
            return self.redirect(self.st.auth.login_url + ("&" if "?" in self.st.auth.login_url else "?")
                                 + f"state={state}")
        esc = web.escape.xhtml_escape
        rows = []
        for r in self.st.store.of_owner(user["name"]):
            url = self.st.call_url(r.owner, r.name)
            code, shares = await self.st.api("GET", f"/shares/{quote(r.owner, safe='')}/{server_name(r.name)}")
            who = ", ".join((s.get("user") or {}).get("name") or "group " + (s.get("group") or {}).get("name", "?")
                            for s in (shares or {}).get("items", [])) or "nobody"
            curl = f"curl -X POST -H 'Authorization: token $TOKEN' -H 'Content-Type: application/json' -d '{{}}' {url}"
            versions = ", ".join(v["semver"] or v["version"] for v in r.versions)
            rows.append(f"<tr><td>{esc(r.name)}</td><td>{esc(versions)}</td><td>{esc(url)}</td>"
                        f"<td><code>{esc(curl)}</code></td><td>{esc(who)}</td></tr>")
        self.finish("<!doctype html><title>Esker functions</title><h1>Your functions</h1><table border=1>"
                    "<tr><th>name</th><th>versions</th><th>URL</th><th>curl</th><th>shared with</th></tr>"
                    f"{''.join(rows)}</table>")


class NotFoundHandler(Base):
    def prepare(self):
        raise web.HTTPError(404, f"no such path: {self.request.path}")
