"""esker.yaml -> JupyterHub traitlets, as small pure functions (the-littlest-jupyterhub's approach).

Each function takes the validated config and the deployment facts (state dir, ports, secrets) and returns
``{ClassName: {trait: value}}``; ``apply(c, mapping)`` writes that onto a traitlets Config. Anything set
here can equally be set in a jupyterhub_config.py by people who prefer that.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from esker import resources
from esker.app.deployment import Deployment, run_dir
from esker.core import config as config_mod
from esker.courses.roles import SERVICE_NAME, course_groups, course_roles, courses_service
from esker.functions.broker import check_at_start as check_broker
from esker.functions.roles import SERVICE_NAME as FUNCTIONS_SERVICE
from esker.functions.roles import PUBLISH_SCOPE, functions_service, named_server_gate, publisher_traits
from esker.objectstore.ceph import service_commands as ceph_services
from esker.state.coursestore import effective_courses

Mapping = dict[str, dict[str, Any]]


def hub_traits(cfg: dict, d: Deployment) -> Mapping:
    hub = cfg["hub"]
    return {
        "JupyterHub": {
            "ip": hub["ip"],
            "port": d.port,
            "hub_ip": "127.0.0.1",
            "hub_port": d.hub_port,
            "base_url": hub["base_url"],
            "db_url": f"sqlite:///{os.path.join(d.state_dir, 'jupyterhub.sqlite')}",
            "cookie_secret_file": os.path.join(d.state_dir, "secrets", "jupyterhub_cookie_secret"),
            "pid_file": os.path.join(run_dir(d.state_dir), "jupyterhub.pid"),
            "concurrent_spawn_limit": hub["concurrent_spawn_limit"],
            "log_level": hub["log_level"],
            # Servers and the proxy outlive a hub restart (upgrades, config changes); `esker run`
            # stops them explicitly when the operator asks for a full stop.
            "cleanup_servers": False,
            "cleanup_proxy": False,
            "spawner_class": "esker-local",
        },
        "ConfigurableHTTPProxy": {
            "api_url": f"http://127.0.0.1:{d.proxy_api_port}",
            "command": d.proxy_command,
            "pid_file": os.path.join(run_dir(d.state_dir), "proxy.pid"),
        },
    }


def spawner_traits(cfg: dict, d: Deployment) -> Mapping:
    return {
        "Spawner": {
            "default_url": "/lab",
            "start_timeout": cfg["hub"]["start_timeout"],
            "http_timeout": 120,
            "ip": "127.0.0.1",
        },
        "EskerLocalSpawner": {"config_file": d.config_file, "state_dir": d.state_dir},
    }


def auth_traits(cfg: dict, d: Deployment) -> Mapping:
    auth = cfg["auth"]
    admins = set(cfg["hub"]["admin_users"])
    common = {"admin_users": admins, "allow_all": auth["allow_all"]}
    if auth["type"] == "shared-password":
        return {
            "JupyterHub": {"authenticator_class": "shared-password"},
            "Authenticator": common,
            "SharedPasswordAuthenticator": {"user_password": d.user_password, "admin_password": d.admin_password},
        }
    if auth["type"] == "dummy":
        return {"JupyterHub": {"authenticator_class": "dummy"}, "Authenticator": common}
    o = auth["oauth"]
    generic = {k: v for k, v in o.items() if k not in ("username_claim", "manage_groups")}
    generic["username_claim"] = o.get("username_claim", "preferred_username")
    if o.get("manage_groups"):
        generic["manage_groups"] = True
    return {
        "JupyterHub": {"authenticator_class": "generic-oauth"},
        "Authenticator": common,
        "GenericOAuthenticator": generic,
    }


def group_traits(cfg: dict, d: Deployment) -> Mapping:
    groups = cfg["users"]["groups"]
    if not groups:
        return {}
    return {"JupyterHub": {"load_groups": {g: {"users": list(m)} for g, m in groups.items()}}}


def service_traits(cfg: dict, d: Deployment) -> Mapping:
    services: list[dict] = []
    roles: list[dict] = []
    st = cfg["storage"]
    if st["enabled"] and not st["endpoint"]:
        services += ceph_services(st, d.state_dir, d.python)
    services.append({
        "name": "idle-culler",
        "command": [d.python, "-m", "jupyterhub_idle_culler", "--timeout=3600", "--cull-every=300",
                    "--cull-named-servers=true"],  # functions' servers too (esker-functions culls sooner)
        "display": False,
    })
    roles.append({
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    })
    if d.admin_token:
        services.append({"name": "esker-admin", "api_token": d.admin_token, "display": False})
        roles.append({"name": "esker-admin", "scopes": ["admin:users", "admin:servers", "admin:groups",
                                                         "read:hub", "read:metrics", "proxy", "tokens"],
                      "services": ["esker-admin"]})
    services += d.extra_services
    return {"JupyterHub": {"services": services, "load_roles": roles}}


def course_traits(cfg: dict, d: Deployment, merged: Mapping, port: int | None = None) -> None:
    """Courses (docs/courses.md): their groups, their instructors' roles and the esker-courses service (on
    ``port``, else one kept in the state dir), added to what the other parts produced (lists and groups are
    extended, not replaced)."""
    # Courses created at run time (the courses service's store) get their instructors' roles at (re)start.
    courses = effective_courses(cfg, d.state_dir)
    hub = merged.setdefault("JupyterHub", {})
    groups = hub.setdefault("load_groups", {})
    for name, spec in course_groups(cfg, courses).items():
        have = groups.setdefault(name, {"users": []})["users"]
        have += [u for u in spec["users"] if u not in have]
    if not groups:
        del hub["load_groups"]
    service, role = courses_service(cfg, d, port)
    hub["services"] = [*hub.get("services", []), service]
    hub["load_roles"] = [*hub.get("load_roles", []), role, *course_roles(cfg, courses)]


def function_traits(cfg: dict, d: Deployment, merged: Mapping, port: int | None = None, proxy_url: str = "") -> None:
    """Functions (docs/functions.md): named servers, only fn-<name> and at most functions.max_per_user (the
    gate runs before the hub creates one), and the esker-functions service with its role."""
    f = cfg["functions"]
    hub = merged.setdefault("JupyterHub", {})
    if not f["enabled"]:
        return
    hub["allow_named_servers"] = True
    hub["named_server_limit_per_user"] = named_server_gate(f["max_per_user"])
    if not proxy_url:
        ip = cfg["hub"]["ip"]
        host = "127.0.0.1" if ip in ("", "0.0.0.0", "::") else ip
        proxy_url = f"http://{host}:{d.port}"
    service, role = functions_service(cfg, d, port, proxy_url)
    hub["services"] = [*hub.get("services", []), service]
    hub["load_roles"] = [*hub.get("load_roles", []), role]
    # Every user may open the functions page (the hub's OAuth for the service asks for this scope); what they
    # see and may call there is decided per function.
    page = f"access:services!service={FUNCTIONS_SERVICE}"
    users = next((r for r in hub["load_roles"] if r.get("name") == "user"), None)
    if users is None:
        hub["load_roles"].append({"name": "user", "scopes": ["self", page]})
    elif page not in users.setdefault("scopes", ["self"]):
        users["scopes"].append(page)
    spawner = merged.setdefault("Spawner", {})
    # `esker fn invoke` in a notebook calls the owner's functions with the server's own token: JupyterHub's
    # `server` role (activity, access to this one server) plus access to the owner's other servers, which the
    # owner holds anyway (the hub grants a token only the subset its user has).
    spawner["server_token_scopes"] = ["users:activity!user", "access:servers!server", "access:servers!user"]
    custom, publishers = publisher_traits(f["publish_groups"])
    if custom:  # publishers' servers' tokens carry the scope (the hub gives a token only what its user holds)
        spawner["server_token_scopes"].append(PUBLISH_SCOPE)
        hub["custom_scopes"] = {**hub.get("custom_scopes", {}), **custom}
        hub["load_roles"] = [*hub["load_roles"], *publishers]
    # The proxy's address, where /services/esker-functions/ is (JUPYTERHUB_API_URL is the hub's own port).
    spawner["environment"] = {**spawner.get("environment", {}), "ESKER_HUB_URL": proxy_url}


def to_traitlets(cfg: dict, d: Deployment) -> Mapping:
    merged: Mapping = {}
    for part in (hub_traits, spawner_traits, auth_traits, group_traits, service_traits):
        for cls, traits in part(cfg, d).items():
            merged.setdefault(cls, {}).update(traits)
    course_traits(cfg, d, merged)
    function_traits(cfg, d, merged)
    return merged


# Seconds a service has between SIGTERM and SIGKILL (esker.system.supervise); Ceph stops three daemons in turn.
SERVICE_GRACE = {"ceph": 14.0}


def services_dir(state_dir: str) -> str:
    """Where each supervised service's pid file is (``<name>.pid``): `esker stop` finds them there."""
    return os.path.join(run_dir(state_dir), "services")


def supervised(mapping: Mapping, d: Deployment) -> Mapping:
    """The embedded hub's managed services, each run under esker.system.supervise: in a process group it leads,
    recorded in ``services/<name>.pid``, stopped with everything it started within its grace (so the hub's
    shutdown never waits on a service, and nothing a service started outlives it). Kubernetes hubs do not need
    it (the pod goes as a whole)."""
    hub = mapping.get("JupyterHub", {})
    services = []
    for service in hub.get("services", []):
        if service.get("command") and service["command"][1:3] != ["-m", "esker.system.supervise"]:
            name = service["name"]
            service = {**service, "command": [
                d.python, "-m", "esker.system.supervise", "--name", name,
                "--pid-file", os.path.join(services_dir(d.state_dir), f"{name}.pid"),
                "--grace", str(SERVICE_GRACE.get(name, 8.0)), "--", *service["command"]]}
        services.append(service)
    if services:
        hub["services"] = services
    return mapping


def apply(c, mapping: Mapping) -> None:
    for cls, traits in mapping.items():
        section = c[cls]
        for name, value in traits.items():
            section[name] = value


# The esker-courses service in z2jh's hub pod: the port it listens on, on the pod's IP, where the proxy (a pod of
# its own) reaches it. The chart's values name the same port (hub.extraEnv ESKER_COURSES_PORT, and the network
# policies that admit the proxy to it); tests/kubernetes/test_chart.py checks they agree.
KUBERNETES_COURSES_PORT = 10101
# What the service needs from the hub pod's environment that JupyterHub does not pass to managed services: the
# API server's address, for the in-cluster configuration of its placeholder pods (the ServiceAccount's token
# and CA are files).
KUBERNETES_SERVICE_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
# The esker-functions service, likewise (hub.extraEnv ESKER_FUNCTIONS_PORT, the same network policies). It and
# the notebooks reach the function servers through z2jh's proxy Service (port 80 -> chp's 8000), not the hub.
KUBERNETES_FUNCTIONS_PORT = 10102
KUBERNETES_PROXY_URL = "http://proxy-public"


def _pod_ip(env: Mapping) -> str:
    # The chart passes status.podIP (downward API); in a pod the hostname also resolves to it (/etc/hosts).
    return env.get("ESKER_HUB_POD_IP") or socket.gethostbyname(socket.gethostname())


def apply_kubernetes(c, environ: Mapping | None = None) -> None:
    """For z2jh's ``hub.extraConfig`` (the chart sets it): add to the Kubernetes hub what the embedded hub gets
    from to_traitlets and z2jh does not know: Esker's auth (``auth:``; the shared passwords from
    ``$ESKER_USER_PASSWORD``/``$ESKER_ADMIN_PASSWORD``), the esker-courses service, its role, the course groups
    and the instructors' roles. Everything else comes from the chart's values.

    The service is a JupyterHub-managed process of the hub pod, as in embedded mode, with its state in
    ``$ESKER_STATE_DIR`` (the hub's persistent volume) and the same public path, ``/services/esker-courses/``.
    JupyterHub hands its ``url`` to the service, which listens there, and to the proxy, which runs in another
    pod: so the url is the hub pod's own IP and ``$ESKER_COURSES_PORT``, not loopback. The same for esker-functions
    and ``$ESKER_FUNCTIONS_PORT``; it reaches the proxy at ``$ESKER_FUNCTIONS_PROXY_URL`` (z2jh's proxy-public)."""
    env = os.environ if environ is None else environ
    config_file = env.get("ESKER_CONFIG") or str(resources.SHIPPED_CONFIG)
    state_dir = env.get("ESKER_STATE_DIR") or "/srv/jupyterhub/esker"  # z2jh's hub volume
    os.makedirs(state_dir, exist_ok=True)
    cfg = config_mod.load(config_file)  # a broken file (a content.path course, say) stops the hub here
    check_broker(cfg.data["functions"], env, logging.getLogger("esker"))  # the chart's Redis: password, answer
    auth_type = cfg.data["auth"]["type"]
    user_password, admin_password = env.get("ESKER_USER_PASSWORD", ""), env.get("ESKER_ADMIN_PASSWORD", "")
    if auth_type == "shared-password" and not user_password:
        raise RuntimeError("auth.type shared-password: ESKER_USER_PASSWORD is empty (the chart passes it from the "
                           "Secret esker-auth); the hub does not start open")
    d = Deployment(state_dir=state_dir, config_file=config_file, port=0, hub_port=0, proxy_api_port=0,
                   proxy_command=[], user_password=user_password, admin_password=admin_password)
    # Esker's auth, not z2jh's default dummy authenticator (the chart refuses dummy without an acknowledgement).
    apply(c, auth_traits(cfg.data, d))
    port = int(env.get("ESKER_COURSES_PORT") or KUBERNETES_COURSES_PORT)
    host = _pod_ip(env)
    hub = c.JupyterHub
    merged: Mapping = {"JupyterHub": {"services": list(hub.get("services", [])),
                                      "load_roles": list(hub.get("load_roles", [])),
                                      "load_groups": dict(hub.get("load_groups", {})),
                                      "custom_scopes": dict(hub.get("custom_scopes", {}))}}
    course_traits(cfg.data, d, merged, port)
    for service in merged["JupyterHub"]["services"]:
        if service.get("name") == SERVICE_NAME:
            service["url"] = f"http://{f'[{host}]' if ':' in host else host}:{port}"
            environment = service.setdefault("environment", {})
            environment["ESKER_COURSES_BACKEND"] = "kubernetes"
            environment.update({k: env[k] for k in KUBERNETES_SERVICE_ENV if env.get(k)})
    fn_port = int(env.get("ESKER_FUNCTIONS_PORT") or KUBERNETES_FUNCTIONS_PORT)
    proxy_url = env.get("ESKER_FUNCTIONS_PROXY_URL") or KUBERNETES_PROXY_URL
    function_traits(cfg.data, d, merged, fn_port, proxy_url)
    for service in merged["JupyterHub"]["services"]:
        if service.get("name") == FUNCTIONS_SERVICE:
            service["url"] = f"http://{f'[{host}]' if ':' in host else host}:{fn_port}"
    # z2jh's jupyterhub_config.py sets c.KubeSpawner.environment from singleuser.extraEnv (always: its default
    # is {}) before extraConfig runs, and KubeSpawner's section outranks Spawner's: so the notebooks' settings
    # go there, merged with the chart's, and win over hub.config's KubeSpawner values.
    spawner = merged.pop("Spawner", {})
    if spawner:
        kube = dict(spawner)
        kube["environment"] = {**dict(c.KubeSpawner.get("environment", {})), **spawner.get("environment", {})}
        merged["KubeSpawner"] = kube
    apply(c, merged)
