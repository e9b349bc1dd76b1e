"""`esker status`: is everything up? The hub, the proxy, the Spark master and workers, the object storage
gateway, the GPUs and their assignments, and the servers running per profile, at a glance.

Reads the same environment as `esker run` (ESKER_CONFIG, ESKER_STATE_DIR, ESKER_PORT, ESKER_ADMIN_TOKEN),
and the state directory for the ports and the proxy's token that `esker run` picked. Exits 1 when a
component that should be up is down; GPUs and servers are reported, not judged.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from esker.core import config as config_mod

OK, DOWN, SKIP, INFO = "ok", "down", "skipped", "info"


def _get(url: str, timeout: float, headers: dict | None = None) -> tuple[int, bytes]:
    """HTTP GET: (status, body); an HTTP error status is still an answer."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _why(e: Exception) -> str:
    reason = getattr(e, "reason", None)
    return str(reason or e) or type(e).__name__


def _state_ports(state_dir: str) -> dict:
    try:
        return json.loads((Path(state_dir) / "ports.json").read_text())
    except (OSError, ValueError):
        return {}


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def hub_url(cfg, port: int | None = None) -> str:
    hub = cfg["hub"]
    host = hub["ip"] if hub["ip"] not in ("", "0.0.0.0", "::") else "127.0.0.1"
    port = port or int(os.environ.get("ESKER_PORT") or hub["port"])
    return f"http://{host}:{port}{hub['base_url']}".rstrip("/")


def check_hub(cfg, state_dir: str, url: str, timeout: float) -> dict:
    """The hub's own API port (bypassing the proxy): up when /hub/api/ answers 200."""
    hub_port = cfg["hub"]["hub_port"] or _state_ports(state_dir).get("hub")
    base = cfg["hub"]["base_url"].rstrip("/")
    target = f"http://127.0.0.1:{hub_port}{base}/hub/api/" if hub_port else f"{url}/hub/api/"
    try:
        status, body = _get(target, timeout)
    except Exception as e:  # noqa: BLE001
        return {"status": DOWN, "url": target, "detail": f"unreachable ({_why(e)})"}
    if status != 200:
        return {"status": DOWN, "url": target, "detail": f"answered {status}"}
    version = json.loads(body or b"{}").get("version", "?")
    return {"status": OK, "url": target, "version": version, "detail": f"JupyterHub {version}"}


def check_proxy(cfg, state_dir: str, url: str, timeout: float) -> dict:
    """The public side: the hub API through the proxy, and the proxy's own API (route count) when its
    token is readable (root, or the account that runs the hub)."""
    out: dict = {"url": url}
    try:
        status, _ = _get(f"{url}/hub/api/", timeout)
    except Exception as e:  # noqa: BLE001
        return {**out, "status": DOWN, "detail": f"{url} unreachable ({_why(e)})"}
    if status != 200:
        return {**out, "status": DOWN, "detail": f"{url}/hub/api/ answered {status} through the proxy"}
    out.update(status=OK, detail=f"serving {url}")
    api_port = cfg["hub"]["proxy_api_port"] or _state_ports(state_dir).get("proxy_api")
    token_file = Path(state_dir) / "secrets" / "proxy_auth_token"
    token = os.environ.get("CONFIGPROXY_AUTH_TOKEN")
    if not token:
        try:
            token = token_file.read_text().strip()
        except OSError:
            token = None
    if api_port and token:
        try:
            st, body = _get(f"http://127.0.0.1:{api_port}/api/routes", timeout,
                            {"Authorization": f"token {token}"})
            if st == 200:
                out["routes"] = len(json.loads(body))
                out["detail"] += f", {out['routes']} routes"
        except Exception as e:  # noqa: BLE001
            out["detail"] += f" (proxy API: {_why(e)})"
    pid = _pid_alive(Path(state_dir) / "run" / "proxy.pid")
    if pid:
        out["pid"] = pid
    return out


def check_spark(cfg, timeout: float, scratch_root: str = "") -> dict:
    s = cfg["spark"]
    if not s["enabled"]:
        return {"status": SKIP, "detail": "disabled in esker.yaml"}
    if s["master_url"]:  # an external cluster: is its port open?
        parsed = urllib.parse.urlparse(s["master_url"])
        try:
            with socket.create_connection((parsed.hostname, parsed.port or 7077), timeout=timeout):
                pass
            return {"status": OK, "master": s["master_url"], "detail": f"external master {s['master_url']} "
                    "accepts connections"}
        except OSError as e:
            return {"status": DOWN, "master": s["master_url"], "detail": f"external master unreachable ({e})"}
    import pwd

    from esker.spark.cluster import master_status, running_daemons

    # Embedded: each Spark server runs its own master and worker as its user (esker.spark.cluster). Only this
    # hub's (their configuration is in its scratch root); a worker whose master is gone is a cluster down.
    daemons = running_daemons(under=scratch_root)
    masters = {d["conf_dir"] for d in daemons if d["role"] == "master"}
    clusters = []
    for w in daemons:
        if w["role"] == "worker" and w["conf_dir"] not in masters:
            masters.add(w["conf_dir"])
            try:
                user = pwd.getpwuid(w["uid"]).pw_name
            except KeyError:
                user = str(w["uid"])
            clusters.append({"account": user, "state": "DOWN", "workers_alive": 0,
                             "detail": "its master is not running"})
    for m in (d for d in daemons if d["role"] == "master"):
        try:
            user = pwd.getpwuid(m["uid"]).pw_name
        except KeyError:
            user = str(m["uid"])
        entry = {"account": user, "master": f"spark://127.0.0.1:{m['port']}"}
        try:
            st = master_status(m["webui_port"], m["ui_key"], timeout=timeout)
            alive = [w for w in st.get("workers", []) if w.get("state") == "ALIVE"]
            entry.update(state=st.get("status"), workers_alive=len(alive), cores=st.get("cores", 0),
                         cores_used=st.get("coresused", 0), applications_running=len(st.get("activeapps", [])))
        except Exception as e:  # noqa: BLE001
            entry.update(state="DOWN", workers_alive=0, detail=_why(e))
        clusters.append(entry)
    up = [c for c in clusters if c["state"] == "ALIVE" and c["workers_alive"]]
    out = {"status": OK if len(up) == len(clusters) else DOWN, "clusters": clusters,
           "detail": f"{len(clusters)} server(s) with their own Spark cluster, {len(up)} with master and worker up"}
    if len(up) != len(clusters):
        down = ", ".join(c["account"] for c in clusters if c not in up)
        out["detail"] += f" (down: {down})"
    return out


def storage_endpoint(cfg) -> str:
    s = cfg["storage"]
    if s["endpoint"]:
        return s["endpoint"].rstrip("/")
    port = (s.get("embedded") or {}).get("port", 7480)
    return f"http://127.0.0.1:{port}"


def check_storage(cfg, timeout: float, state_dir: str = "") -> dict:
    if not cfg["storage"]["enabled"]:
        return {"status": SKIP, "detail": "object storage disabled in esker.yaml"}
    endpoint = storage_endpoint(cfg)
    try:
        status, _ = _get(endpoint + "/", timeout)
    except Exception as e:  # noqa: BLE001
        out = {"status": DOWN, "endpoint": endpoint, "detail": f"RGW at {endpoint} unreachable ({_why(e)})"}
        if state_dir and not cfg["storage"]["endpoint"]:
            from esker.objectstore.ceph import embedded_starting

            starting = embedded_starting(os.path.join(state_dir, "ceph"))
            if starting:  # down for now, and spawns wait for it
                out.update(starting=starting, detail=out["detail"] + f": {starting}")
        return out
    if status >= 500:
        return {"status": DOWN, "endpoint": endpoint, "detail": f"RGW at {endpoint} answered {status}"}
    return {"status": OK, "endpoint": endpoint, "detail": f"RGW at {endpoint} answers (HTTP {status})"}


def check_gpus(cfg, state_dir: str, read=None) -> dict:
    """The hub's GPUs (NVML, or the operator's list), their types, who holds which (the ledger: user and server),
    and each one's use now where NVML answers; why there are none when there are none."""
    from esker.core.gpus import availability
    from esker.system import gpus as gpu_mod

    kw = {"read": read} if read is not None else {}
    gpus, problem = gpu_mod.configured_gpus(cfg["gpus"]["devices"], cfg["gpus"]["types"], **kw)
    held: dict[str, str] = {}
    ledger_path = Path(state_dir) / "ledger.sqlite"
    if ledger_path.exists():
        from esker.state.ledger import Ledger

        try:
            held = Ledger(ledger_path).held("gpu")
        except Exception as e:  # noqa: BLE001
            return {"status": INFO, "count": len(gpus), "detail": f"{len(gpus)} GPU(s); ledger unreadable ({e})"}
    usage = {}
    if cfg["gpus"]["devices"] == "auto" and gpus:
        try:
            usage = gpu_mod.usage_from_snapshot((read or gpu_mod.read_nvml)())
        except gpu_mod.NvmlUnavailable:
            pass
    devices = []
    for g in gpus:
        owner = held.get(g.id, "")
        user, _, server = owner.partition("/")
        d = {"id": g.id, "type": g.type, "product": g.name, "uuid": g.uuid, "user": user, "server": server}
        u = usage.get(g.id)
        if u is not None:
            d.update(utilization=u.utilization, memory_used=u.memory_used, memory_total=u.memory_total,
                     processes=u.processes)
        devices.append(d)
    assignments = {dev: owner.split("/", 1)[0] for dev, owner in held.items()}
    free = availability(gpus, held)
    if not gpus:
        detail = f"no GPU to hand out: {problem}" if problem else "no GPU"
    else:
        per_type = ", ".join(f"{t}: {a.free} of {a.total} free" for t, a in sorted(
            ((k, v) for k, v in free.items() if k is not None), key=lambda kv: kv[0]))
        detail = f"{len(gpus)} GPU(s), {len(assignments)} assigned" + (f" ({per_type})" if per_type else "")
        for d in devices:
            if d["user"]:
                line = f"{d['id']} -> {d['user']}/{d['server']}" if d["server"] else f"{d['id']} -> {d['user']}"
                if "utilization" in d:
                    line += f" ({d['utilization']:.0f}% busy, {d['memory_used'] / 2**30:.1f} GiB, {d['processes']} process(es))"
                detail += "\n    " + line
    out = {"status": INFO, "count": len(gpus), "devices": devices, "assigned": assignments,
           "free": {("" if k is None else k): {"total": v.total, "free": v.free} for k, v in free.items()},
           "detail": detail}
    if problem:
        out["problem"] = problem
    return out


def check_scratch(cfg, state_dir: str) -> dict:
    """Whether scratch quotas are enforced on this host (what the hub decides at its first spawn, from the
    same facts), and how many scratch filesystems are mounted."""
    from esker.system import scratch

    root = cfg["scratch"]["root"].replace("{state_dir}", state_dir).rstrip("/")
    mounted = [m for m in scratch.mounts() if m.startswith(root + "/")]
    why = scratch.quota_unsupported(root_user=os.geteuid() == 0)
    if mounted or why is None:
        detail = f"quota enforced (a filesystem of scratch_size per server), {len(mounted)} mounted under {root}"
        return {"status": INFO, "quota": True, "mounted": len(mounted), "detail": detail}
    return {"status": INFO, "quota": False, "mounted": 0, "detail": f"scratch has no quota here: {why}"}


def check_servers(url: str, token: str | None, timeout: float) -> dict:
    if not token:
        return {"status": SKIP, "detail": "no admin token (set ESKER_ADMIN_TOKEN or --token) to list servers"}
    try:
        status, body = _get(f"{url}/hub/api/users", timeout, {"Authorization": f"token {token}"})
    except Exception as e:  # noqa: BLE001
        return {"status": DOWN, "detail": f"cannot list users ({_why(e)})"}
    if status != 200:
        return {"status": DOWN, "detail": f"listing users answered {status} (token lacks admin scopes?)"}
    users = json.loads(body)
    per_profile: dict[str, int] = {}
    pending = 0
    no_storage = []  # servers that started without the object storage their profile asks for (gateway down)
    for u in users:
        for name, server in (u.get("servers") or {}).items():
            if server.get("pending") == "spawn" or not server.get("ready"):
                pending += 1
                continue
            profile = (server.get("user_options") or {}).get("profile") or "default"
            per_profile[profile] = per_profile.get(profile, 0) + 1
            missing = (server.get("state") or {}).get("no_storage")  # the spawner's state (admin:server_state)
            if missing:
                no_storage.append({"user": u["name"], "server": name, "profile": profile,
                                   "since": missing.get("since", ""), "reason": missing.get("reason", "")})
    running = sum(per_profile.values())
    detail = f"{len(users)} user(s), {running} server(s) running"
    if per_profile:
        detail += " (" + ", ".join(f"{p}: {n}" for p, n in sorted(per_profile.items())) + ")"
    if pending:
        detail += f", {pending} starting or stopping"
    if no_storage:
        names = ", ".join(f"{s['user']}/{s['server']}" if s["server"] else s["user"] for s in no_storage)
        detail += f"; {len(no_storage)} without object storage (the gateway was down at their start; a restart " \
                  f"gives it): {names}"
    return {"status": INFO, "users": len(users), "running": running, "pending": pending,
            "per_profile": per_profile, "without_storage": no_storage, "detail": detail}


def collect(cfg, state_dir: str, url: str, token: str | None, timeout: float = 3.0) -> dict:
    t0 = time.monotonic()
    comps = {
        "hub": check_hub(cfg, state_dir, url, timeout),
        "proxy": check_proxy(cfg, state_dir, url, timeout),
        "spark": check_spark(cfg, timeout, cfg["scratch"]["root"].replace("{state_dir}", state_dir)),
        "storage": check_storage(cfg, timeout, state_dir),
        "gpus": check_gpus(cfg, state_dir),
        "scratch": check_scratch(cfg, state_dir),
        "servers": check_servers(url, token, timeout),
    }
    down = [name for name, c in comps.items() if c["status"] == DOWN]
    return {"ok": not down, "down": down, "url": url, "state_dir": state_dir, "config": str(cfg.source),
            "checked_in_s": round(time.monotonic() - t0, 3), "components": comps}


def render(report: dict) -> str:
    mark = {OK: "OK  ", DOWN: "DOWN", SKIP: "--  ", INFO: "    "}
    lines = [f"Esker at {report['url']}   (state {report['state_dir']})"]
    for name, c in report["components"].items():
        lines.append(f"  {mark[c['status']]}  {name:<8} {c.get('detail', '')}")
    lines.append("All components up." if report["ok"] else f"DOWN: {', '.join(report['down'])}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    from esker.runtime import default_state_dir

    if args.nvml:
        from esker.system import gpus as gpu_mod

        try:
            print(json.dumps(gpu_mod.read_nvml(), indent=2))
        except gpu_mod.NvmlUnavailable as e:
            print(f"NVML cannot answer: {e}", file=sys.stderr)
            return 1
        return 0

    if args.config:
        os.environ["ESKER_CONFIG"] = str(Path(args.config).resolve())
    try:
        cfg = config_mod.load(os.environ.get("ESKER_CONFIG"))
    except config_mod.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    state_dir = args.state_dir or default_state_dir()
    url = (args.url or hub_url(cfg)).rstrip("/")
    token = args.token or os.environ.get("ESKER_ADMIN_TOKEN")
    report = collect(cfg, state_dir, url, token, timeout=args.timeout)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ok"] else 1


def register(sub) -> None:
    p = sub.add_parser(
        "status",
        help="show whether the hub, proxy, Spark, object storage, GPUs and servers are up",
        description="Check the hub (its API), the proxy (the public URL and its API), the Spark master and "
        "workers (the master's JSON), the Ceph RADOS Gateway when object storage is enabled, the GPUs (type, "
        "who holds which for which server, their use where NVML answers, or why there are none), and the servers running per profile (hub API, needs an admin token). "
        "Environment: ESKER_CONFIG, ESKER_STATE_DIR, ESKER_PORT, ESKER_ADMIN_TOKEN. "
        "Exit status: 0 all up, 1 something is down, 2 the configuration is invalid.",
    )
    p.add_argument("--config", help="config file (default: $ESKER_CONFIG or the shipped esker.yaml)")
    p.add_argument("--state-dir", help="state directory (default: $ESKER_STATE_DIR, /var/lib/esker as root)")
    p.add_argument("--url", help="the hub's public URL (default: from esker.yaml and $ESKER_PORT)")
    p.add_argument("--token", help="admin API token (default: $ESKER_ADMIN_TOKEN)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each component (default 3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--nvml", action="store_true",
                   help="print only what NVML answers for this machine's GPUs (products, UUIDs, use, compute "
                   "processes), as JSON: what the hub reads, and the shape the tests' recorded answers have")
    p.set_defaults(func=cmd_status)
