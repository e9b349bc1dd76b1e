"""The function server: `python -m esker_client.functions.serve` (the named server `fn-<name>`'s command).

Environment (set by the hub and Esker's spawner, as for jupyterhub-singleuser):
  ESKER_FUNCTION                 the function's name (required)
  JUPYTERHUB_SERVICE_URL         where to listen (http://127.0.0.1:PORT/user/<owner>/fn-<name>/)
  JUPYTERHUB_SERVICE_PREFIX      the URL prefix of every route
  JUPYTERHUB_USER, JUPYTERHUB_SERVER_NAME, JUPYTERHUB_API_URL, JUPYTERHUB_API_TOKEN,
  JUPYTERHUB_OAUTH_ACCESS_SCOPES the owner, the server, and what HubAuth checks callers against
  JUPYTERHUB_ACTIVITY_URL        where the server reports activity while a call or task runs
  ESKER_BUCKET, AWS_*            the owner's bucket, where versions are published
Options (environment):
  ESKER_FUNCTION_SOURCE=dir:PATH read versions from a directory with the bucket's layout (development, tests)
  ESKER_FUNCTION_AUTH_CACHE      seconds a token's check is cached (5): a revoked share stops working after it
  ESKER_FUNCTION_QUEUE           callers that may wait per version beyond `concurrency` (64); more get 429
  ESKER_FUNCTION_RESULT_TTL      seconds an async task's result is kept (3600)
  ESKER_FUNCTION_MAX_BODY        largest request body in bytes (10 MiB); larger get 413
  ESKER_FUNCTION_ACTIVITY_EVERY  seconds between activity reports while busy (30; below the idle timeouts)
Task broker (set by the hub when functions.broker names one, as on Kubernetes; else SQLite in the home):
  ESKER_FUNCTION_BROKER_URL      redis://HOST:PORT[/DB] (rediss:// for TLS), without credentials
  ESKER_FUNCTION_BROKER_USER, ESKER_FUNCTION_BROKER_PASSWORD
                                 this function's own ACL user, made by the hub for this start
  ESKER_FUNCTION_BROKER_PREFIX   the only keys that user may touch
Code lives in a 0700 directory under $SCRATCH_DIR (else $HOME/.cache); the call log and the task database,
which outlive the server, are $HOME/.esker/functions/<name>.log and <name>.tasks.sqlite (0600) or the
broker's keys. A startup problem (the broker refusing this user included) exits with status 2 and one line on
stderr."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

from .tasks import broker_settings

NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class StartupError(Exception):
    pass


def _number(env, key: str, default: float, kind=float):
    raw = env.get(key, "")
    if raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise StartupError(f"{key}={raw!r} is not a number") from None
    if value < 0:
        raise StartupError(f"{key}={raw!r} must not be negative")
    return value


def settings(env=os.environ) -> dict:
    """Everything the server needs from the environment, checked; StartupError naming what is wrong."""
    name = env.get("ESKER_FUNCTION", "")
    if not name:
        raise StartupError("ESKER_FUNCTION is not set (the name of the function to serve)")
    if not NAME.match(name):
        raise StartupError(f"ESKER_FUNCTION={name!r} is not a function name (^[a-z][a-z0-9-]{{0,30}}$)")
    url = urlparse(env.get("JUPYTERHUB_SERVICE_URL", ""))
    if not url.port:
        raise StartupError("JUPYTERHUB_SERVICE_URL is not set or has no port (http://127.0.0.1:PORT/...)")
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or url.path or "/"
    if not prefix.startswith("/"):
        raise StartupError(f"JUPYTERHUB_SERVICE_PREFIX={prefix!r} must start with /")
    owner = env.get("JUPYTERHUB_USER", "")
    if not owner:
        raise StartupError("JUPYTERHUB_USER is not set (the function's owner)")
    activity_every = _number(env, "ESKER_FUNCTION_ACTIVITY_EVERY", 30.0)
    if activity_every == 0:
        raise StartupError("ESKER_FUNCTION_ACTIVITY_EVERY=0: must be a positive number of seconds")
    try:
        broker = broker_settings(env)
    except ValueError as e:
        raise StartupError(str(e)) from None
    base = env.get("SCRATCH_DIR") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    home = env.get("HOME") or os.path.expanduser("~")
    return {
        "name": name, "owner": owner, "server_name": env.get("JUPYTERHUB_SERVER_NAME") or f"fn-{name}",
        "host": url.hostname or "127.0.0.1", "port": url.port, "prefix": prefix.rstrip("/") + "/",
        "cache_dir": Path(base) / "esker-functions" / name,
        "log_path": Path(home) / ".esker" / "functions" / f"{name}.log",
        # tasks outlive the server (a cull, a restart): scratch is released at every stop, home is kept
        "tasks_path": Path(home) / ".esker" / "functions" / f"{name}.tasks.sqlite",
        "broker": broker,
        "activity_url": env.get("JUPYTERHUB_ACTIVITY_URL", ""),
        "api_token": env.get("JUPYTERHUB_API_TOKEN", ""),
        "activity_every": activity_every,
        "queue": _number(env, "ESKER_FUNCTION_QUEUE", 64, int),
        "ttl": _number(env, "ESKER_FUNCTION_RESULT_TTL", 3600.0),
        "max_body": _number(env, "ESKER_FUNCTION_MAX_BODY", 10 * 2**20, int),
        "auth_cache": _number(env, "ESKER_FUNCTION_AUTH_CACHE", 5.0),
    }


def prepare(env=os.environ):
    """(settings, the Function, the Auth): reads aliases.json once, so a function with nothing published
    (or an unreadable bucket) fails here, before listening."""
    from .app import Function, private_dir
    from .auth import Auth
    from .source import SourceError, Versions, from_env
    from .tasks import RedisTasks, SqliteTasks, TaskStoreError, connect

    s = settings(env)
    try:
        versions = Versions(from_env(env), s["name"])
        aliases, vids = versions.aliases(), versions.vids()
    except SourceError as e:
        raise StartupError(str(e)) from None
    if not vids and not aliases:
        raise StartupError(f"{s['name']} has no published versions in {versions.source.where}/{versions.base}/ "
                           "(esker fn publish)")
    if "latest" not in aliases:
        raise StartupError(f"{versions.source.where}/{versions.base}/aliases.json has no 'latest'")
    try:
        if s["broker"]:
            b = s["broker"]
            tasks = RedisTasks(connect(b), b["prefix"], s["ttl"])
        else:
            private_dir(s["tasks_path"].parent)
            tasks = SqliteTasks(str(s["tasks_path"]), s["ttl"])
    except TaskStoreError as e:
        raise StartupError(str(e)) from None
    fn = Function(s["name"], versions, s["cache_dir"], queue_limit=s["queue"], result_ttl=s["ttl"], tasks=tasks)
    fn.aliases, fn.vids = aliases, vids
    return s, fn, Auth(s["owner"], s["server_name"], env)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m esker_client.functions.serve", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=os.environ.get("ESKER_FUNCTION_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    # Other libraries' chatter (alembic, via jupyterhub's imports) stays at warnings; ours at --log-level.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    logging.getLogger("esker.functions").setLevel(args.log_level.upper())
    try:
        s, fn, auth = prepare()
    except StartupError as e:
        print(f"esker function server: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from .app import Activity, CallLog, build_app
    activity = Activity(s["activity_url"], s["api_token"], s["server_name"], s["activity_every"]) if s["activity_url"] else None
    app = build_app(fn, auth, s["prefix"], CallLog(s["log_path"]), max_body=s["max_body"], activity=activity)
    logging.getLogger("esker.functions").info("serving %s (%d versions) at %s:%d%s", s["name"], len(fn.vids),
                                              s["host"], s["port"], s["prefix"])
    # access_log off: our own line per call has the caller and version, uvicorn's would have the query string
    uvicorn.run(app, host=s["host"], port=s["port"], log_level=args.log_level.lower(), access_log=False,
                lifespan="on", timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
