"""The Spark UIs of this server's own Spark cluster, in JupyterLab through jupyter-server-proxy.

The server's own master, worker and the driver of a session all run web UIs on loopback, each behind Spark 4's
``JWSFilter`` with the server's UI key (in ``$SPARK_CONF_DIR/spark-defaults.conf``, 0600, the user's): without a
token signed with it, a request gets 403. jupyter-server-proxy (in the spark image) loads the entry points this
module provides (``jupyter_serverproxy_servers`` in esker-client's pyproject) when the single-user server
starts, so the UIs open behind the hub's login, for the server's owner only, at

- ``<server>/spark-ui/``: the driver UI of the running session (the launcher's "Spark UI"),
- ``<server>/spark-master/``: the server's master (the launcher's "Spark cluster"),
- ``<server>/spark-worker/``: its worker, where executors' stdout and stderr are (linked from the other two).

The ports come from ``ESKER_SPARK_UI_PORTS`` (``driver:P,master:P,worker:P``, injected for a server with its own
cluster). For every proxied request the proxy signs a fresh short-lived token (``Authorization: Bearer``), read
from the key file each time (no token is stored anywhere, none is on a command line), and only once it has
checked that what listens on the port is a process of this server's account: another account that took the
port while no session ran gets neither the request nor a token. Spark builds its links from the
``X-Forwarded-Context`` header jupyter-server-proxy sends; the absolute ``http://127.0.0.1:<port>`` links
between the UIs (the master's worker and application links, executor log links) and Spark's redirects are
rewritten onto the proxied paths.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
from typing import Dict, Mapping, Optional, Set, Tuple

from ._env import environ

PORTS_VAR = "ESKER_SPARK_UI_PORTS"
KEY_SETTING = "spark.org.apache.spark.ui.JWSFilter.param.secretKey"
# A token is made for one proxied request; Spark's filter is set to require an expiry (requireExpiration).
TOKEN_LIFETIME = 60
# (entry point / URL name, role in ESKER_SPARK_UI_PORTS, launcher title or None for no launcher entry)
SERVERS = (("spark-ui", "driver", "Spark UI"), ("spark-master", "master", "Spark cluster"),
           ("spark-worker", "worker", None))
ICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spark.svg")


def ui_ports(env: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """{"driver": port, "master": port, "worker": port} from ``ESKER_SPARK_UI_PORTS``; {} without it."""
    out: Dict[str, int] = {}
    for item in environ(env).get(PORTS_VAR, "").split(","):
        role, _, port = item.strip().partition(":")
        if role and port.isdigit():
            out[role] = int(port)
    return out


def ui_key(env: Optional[Mapping[str, str]] = None) -> str:
    """The server's UI key, from ``$SPARK_CONF_DIR/spark-defaults.conf`` (empty when there is none)."""
    conf_dir = environ(env).get("SPARK_CONF_DIR")
    if not conf_dir:
        return ""
    try:
        with open(os.path.join(conf_dir, "spark-defaults.conf"), encoding="utf-8") as f:
            for line in f:
                k, _, v = line.strip().replace("\t", " ").partition(" ")
                if k == KEY_SETTING:
                    return v.strip()
    except OSError:
        pass
    return ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def bearer_token(key: str, lifetime: int = TOKEN_LIFETIME, now: Optional[float] = None) -> str:
    """A JWS (HS256) that Spark's JWSFilter accepts for ``key`` (base64url), expiring in ``lifetime`` s."""
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    exp = int((time.time() if now is None else now) + lifetime)
    body = _b64(json.dumps({"sub": "esker-spark-ui", "exp": exp}).encode())
    sig = _b64(hmac.new(raw, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


# Local addresses the proxy's connection to localhost can reach (127.0.0.1 or ::1): loopback and the wildcard, in
# their IPv4, IPv6 and v4-mapped IPv6 forms.
_REACHING = {"0100007F", "00000000", "00000000000000000000000000000000", "0000000000000000FFFF00000100007F",
             "00000000000000000000000001000000"}


def listener_uids(port: int, proc_net: str = "/proc/net") -> Set[int]:
    """The accounts (uids) with a listening TCP socket on ``port`` that a connection to 127.0.0.1 reaches."""
    uids: Set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc_net, name), encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != "0A":  # 0A: LISTEN
                continue
            addr, _, hexport = fields[1].partition(":")
            if int(hexport, 16) == port and addr.upper() in _REACHING:
                uids.add(int(fields[7]))
    return uids


class NotServing(Exception):
    """Nothing of this server's listens on the UI's port: (HTTP status, message for the user)."""


def check_listener(port: int, role: str, uid: Optional[int] = None, proc_net: str = "/proc/net") -> None:
    uids = listener_uids(port, proc_net)
    me = os.getuid() if uid is None else uid
    if not uids:
        if role == "driver":
            raise NotServing(503, "No Spark session is running in this server (its UI listens on port "
                             f"{port} while one runs): start one, e.g. SparkSession.builder.getOrCreate(), "
                             "and reload this page.")
        raise NotServing(503, f"This server's Spark {role} is not running (nothing listens on port {port}).")
    if uids != {me}:
        raise NotServing(502, f"Port {port} is held by another account, not by this server's Spark {role}: "
                         "nothing was sent to it. Restart your Spark session (or the server) to get the UI back.")


def request_headers(port: int, role: str, env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """What the proxy adds to each request to the UI on ``port``: a fresh bearer token, and no compression
    (the body's links are rewritten). Raises tornado's HTTPError when the port is not this server's Spark."""
    try:
        check_listener(port, role)
    except NotServing as e:
        from tornado import web

        raise web.HTTPError(e.args[0], reason="Spark UI unavailable", log_message=e.args[1]) from None
    # Spark builds its redirects from the Host header: its own address, so that they can be told from others.
    headers = {"Accept-Encoding": "identity", "Host": f"127.0.0.1:{port}"}
    key = ui_key(env)
    if key:
        headers["Authorization"] = f"Bearer {bearer_token(key)}"
    return headers


def proxy_prefixes(env: Optional[Mapping[str, str]] = None) -> Dict[int, Tuple[str, str]]:
    """port -> (URL name, absolute path of its proxy, ending in /) for each of this server's Spark UIs."""
    base = environ(env).get("JUPYTERHUB_SERVICE_PREFIX", "/")
    base = base if base.endswith("/") else base + "/"
    ports = ui_ports(env)
    return {ports[role]: (name, f"{base}{name}/") for name, role, _ in SERVERS if role in ports}


_ORIGIN = re.compile(rb"https?://(?:127\.0\.0\.1|localhost):(\d+)/?")
_TEXT = ("text/", "application/json", "application/javascript")


def rewrite(response, port: int, env: Optional[Mapping[str, str]] = None, request=None) -> None:
    """jupyter-server-proxy's ``rewrite_response``: links to this server's Spark UIs, proxied paths instead.
    ``request``: the browser's request (a redirect to its own host is one to this UI too)."""
    prefixes = proxy_prefixes(env)
    location = response.headers.get("Location")
    if location and request is not None:
        own = f"{request.protocol}://{request.host}"
        if location == own or location.startswith(own + "/"):
            location = f"http://127.0.0.1:{port}" + location[len(own):]

    def sub(m: "re.Match[bytes]") -> bytes:
        p = int(m.group(1))
        return prefixes[p][1].encode() if p in prefixes else m.group(0)

    if location:
        m = _ORIGIN.match(location.encode())
        if m and int(m.group(1)) == port:
            # The same UI: a path, which jupyter-server-proxy puts under this UI's proxy prefix itself.
            response.headers["Location"] = "/" + location[m.end():]
        elif m and int(m.group(1)) in prefixes:
            response.headers["Location"] = _ORIGIN.sub(sub, location.encode(), count=1).decode()
    ctype = response.headers.get("Content-Type", "")
    if response.body and ctype.startswith(_TEXT) and not response.headers.get("Content-Encoding"):
        response.body = _ORIGIN.sub(sub, response.body)


def _server(name: str, role: str, title: Optional[str]) -> dict:
    ports = ui_ports()
    if role not in ports:
        raise LookupError(f"this server has no Spark {role} UI ({PORTS_VAR} names none)")
    port = ports[role]
    launcher = {"enabled": title is not None, "title": title or name, "category": "Other"}
    if title and os.path.isfile(ICON):
        launcher["icon_path"] = ICON
    return {
        "command": [],  # already running: proxied, never started by the proxy
        "port": port,
        "absolute_url": False,
        "new_browser_tab": True,
        "launcher_entry": launcher,
        "request_headers_override": lambda: request_headers(port, role),
        "rewrite_response": lambda response, request: rewrite(response, port, request=request),
    }


# The entry points (jupyter_serverproxy_servers): each returns one server's configuration.
def driver_ui() -> dict:
    return _server(*SERVERS[0])


def master_ui() -> dict:
    return _server(*SERVERS[1])


def worker_ui() -> dict:
    return _server(*SERVERS[2])
