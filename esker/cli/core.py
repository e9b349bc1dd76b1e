"""`esker check`, `esker run`, `esker prepare`: the commands an operator starts with."""

from __future__ import annotations

import argparse
import sys

from esker.core import config


def cmd_check(args) -> int:
    try:
        cfg = config.load(args.file)
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    slugs = ", ".join(p["slug"] for p in cfg["profiles"])
    print(f"{cfg.source}: OK ({len(cfg['profiles'])} profiles: {slugs})")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "check",
        help="validate a configuration file",
        description="Validate esker.yaml against the schema; print every bad field with the reason. "
        "Exits 1 when the file is invalid.",
    )
    p.add_argument("file", nargs="?", help="config file (default: $ESKER_CONFIG or the shipped esker.yaml)")
    p.set_defaults(func=cmd_check)
    register_run(sub)
    register_stop(sub)


def cmd_prepare(args) -> int:
    import asyncio

    from esker.runtime import get_runtime
    from esker.system.envs import build_all

    try:
        rt = get_runtime(args.config or "", args.state_dir or "")
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    names = rt.catalog.environments() if not args.env else args.env
    asyncio.run(build_all(rt.builder, names))
    for n in names:
        print(f"{n}: {rt.builder.get(n).path}")
    return 0


def cmd_run(args) -> int:
    import os
    from pathlib import Path

    from esker.runtime import default_state_dir

    if args.config:
        os.environ["ESKER_CONFIG"] = str(Path(args.config).resolve())
    if args.state_dir:
        os.environ["ESKER_STATE_DIR"] = str(Path(args.state_dir).resolve())
    try:
        cfg = config.load(os.environ.get("ESKER_CONFIG"))
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    state_dir = default_state_dir()
    os.environ["ESKER_STATE_DIR"] = state_dir
    token = os.environ.get("ESKER_ADMIN_TOKEN", "")
    if token and len(token) < 16:
        print("ESKER_ADMIN_TOKEN: too short to be safe (at least 16 characters; try `openssl rand -hex 24`)",
              file=sys.stderr)
        return 1
    if args.prepare != "none":
        prep = argparse.Namespace(config=os.environ.get("ESKER_CONFIG"), state_dir=state_dir,
                                  env=None if args.prepare == "all" else [args.prepare])
        if cmd_prepare(prep):
            return 1
    from esker.app import deployment

    port = int(os.environ.get("ESKER_PORT") or cfg["hub"]["port"])
    url = f"http://{cfg['hub']['ip']}:{port}{cfg['hub']['base_url']}"
    bar = "=" * 72
    lines = [bar, f"Esker is starting at {url}"]
    if cfg["auth"]["type"] == "shared-password":
        pw = deployment.secret(state_dir, "shared-password", 12)
        lines += [f"  Log in with any user name and the shared password: {pw}",
                  f"  Admin ({', '.join(cfg['hub']['admin_users'])}) password: "
                  f"{os.path.join(state_dir, 'secrets', 'admin-password')}"]
    if os.geteuid() != 0:
        lines += ["  WARNING: not running as root, so every user's server runs as YOUR account:",
                  "  DEVELOPER MODE, no isolation between users. Run as root for a real hub."]
    lines += [f"  State: {state_dir}   Config: {cfg.source}", bar]
    print("\n".join(lines), flush=True)
    hub_config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "jupyterhub_config.py")
    cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub"), "-f", hub_config, *args.jupyterhub_args]
    os.chdir(state_dir)
    os.execv(cmd[0], cmd)
    return 0


def register_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="start the hub (embedded mode)",
        description="Prepare the profiles' environments, then run JupyterHub with the Esker config. "
        "Environment: ESKER_PORT, ESKER_STATE_DIR, ESKER_CONFIG, ESKER_ADMIN_TOKEN.",
    )
    p.add_argument("--config", help="config file (default: $ESKER_CONFIG or the shipped esker.yaml)")
    p.add_argument("--state-dir", help="state directory (default: $ESKER_STATE_DIR, /var/lib/esker as root)")
    p.add_argument("--prepare", default="all", metavar="ENV|all|none",
                   help="environments to build before starting (default: all; others build on first spawn)")
    p.add_argument("jupyterhub_args", nargs="*", help="extra JupyterHub arguments, after --")
    p.set_defaults(func=cmd_run)
    q = sub.add_parser(
        "prepare",
        help="build the profiles' local environments",
        description="Build (or check) the local environment of every profile from images/<env>/requirements.lock.",
    )
    q.add_argument("--config", help="config file")
    q.add_argument("--state-dir", help="state directory")
    q.add_argument("env", nargs="*", help="environments to build (default: all in the catalog)")
    q.set_defaults(func=cmd_prepare)


def cmd_stop(args) -> int:
    """Stop the hub and its services, then (with --all) the servers and the proxy it leaves running across
    restarts; verify, and say "stopped" only when nothing is left (esker.app.shutdown)."""
    import os

    from esker.app import shutdown
    from esker.runtime import default_state_dir

    state = args.state_dir or default_state_dir()
    hub_port = proxy_api_port = None
    if os.environ.get("ESKER_CONFIG"):  # ports the config fixes (others are in the state dir's ports.json)
        try:
            hub = config.load(os.environ["ESKER_CONFIG"])["hub"]
            hub_port, proxy_api_port = hub.get("hub_port") or None, hub.get("proxy_api_port") or None
        except (config.ConfigError, KeyError):
            pass
    out = shutdown.stop(state, everything=args.all, hub_timeout=args.timeout, grace=args.grace,
                        hub_port=hub_port, proxy_api_port=proxy_api_port)
    for line in out.killed:
        print(f"SIGKILL: {line}")
    if not out.ok:
        for line in out.left:
            print(f"NOT stopped: {line}", file=sys.stderr)
        print(f"esker stop: {len(out.left)} thing(s) still running (state {state})", file=sys.stderr)
        return 1
    for line in out.stopped:
        print(f"stopped {line}")
    if not out.stopped:
        print(f"nothing of the hub in {state} was running")
    if args.all:
        print("nothing is left running and no port is held")
    else:
        print("the hub and its services are stopped; servers and the proxy keep running (they survive hub "
              "restarts): `esker stop --all` stops them")
    return 0


def register_stop(sub) -> None:
    p = sub.add_parser(
        "stop",
        help="stop the hub (and with --all its servers and proxy)",
        description="Stop the embedded hub found in the state directory and its services (Spark, Ceph, the "
        "courses service, the idle culler), waiting for each and escalating to SIGKILL; exits 1 and names what is "
        "still running when anything is. Notebook servers and the proxy outlive a hub restart by design; --all "
        "stops them too.",
    )
    p.add_argument("--state-dir", help="state directory (default: $ESKER_STATE_DIR, /var/lib/esker as root)")
    p.add_argument("--all", action="store_true", help="also stop every notebook server and the proxy")
    p.add_argument("--timeout", type=float, default=90.0,
                   help="seconds the hub has to shut down after SIGTERM before SIGKILL (default 90)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds every other process has after SIGTERM before SIGKILL (default 10)")
    p.set_defaults(func=cmd_stop)
