"""`esker preview`: what a spawn would produce, without spawning.

``--backend kubernetes`` prints the exact manifests EskerKubeSpawner would send (KubeSpawner's own
``get_pod_manifest()``, the PVC Kubernetes derives from the scratch volume, and any Spark Service and RBAC
objects), offline: no cluster is contacted. ``--backend embedded`` prints the launch plan. A request the
catalog refuses exits 2 with the reason, as the hub would answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from esker.core import config

# A kubeconfig that names a server nothing listens on: KubeSpawner loads one at construction, and the
# preview never makes a request.
_DUMMY_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: preview, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: preview, user: {token: preview}}]
contexts: [{name: preview, context: {cluster: preview, user: preview}}]
current-context: preview
"""


@dataclass
class _Group:
    name: str


@dataclass
class PreviewUser:
    """The parts of a JupyterHub user a spawner reads."""

    name: str
    groups: list = field(default_factory=list)
    admin: bool = False
    id: int = 1

    @property
    def url(self) -> str:
        return f"/user/{self.name}/"

    @property
    def escaped_name(self) -> str:
        return self.name


@contextlib.contextmanager
def offline_kubeconfig():
    """Point KUBECONFIG at a throwaway file for the duration (KubeSpawner loads it once per process).

    kubernetes_asyncio reads $KUBECONFIG when it is imported, so its default is set too."""
    from kubernetes_asyncio.config import kube_config

    old = os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    with tempfile.TemporaryDirectory(prefix="esker-preview-") as d:
        path = Path(d) / "kubeconfig"
        path.write_text(_DUMMY_KUBECONFIG)
        os.environ["KUBECONFIG"] = kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
        try:
            yield str(path)
        finally:
            if old[0] is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old[0]
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old[1]


def make_spawner(user: str, groups=(), admin: bool = False, config_file: str | None = None,
                 user_options: dict | None = None, **traits):
    """An EskerKubeSpawner for ``user``, as the hub would build it. Call inside a running event loop,
    with KUBECONFIG set (see :func:`offline_kubeconfig`)."""
    from jupyterhub.objects import Hub

    from esker.spawner.kubernetes import EskerKubeSpawner

    hub = Hub(ip="hub", port=8081, base_url="/hub/")
    hub.public_host = ""
    u = PreviewUser(name=user, groups=[_Group(g) for g in groups], admin=admin)
    if config_file:
        traits["config_file"] = str(config_file)
    spawner = EskerKubeSpawner(user=u, hub=hub, **traits)
    spawner.user_options = dict(user_options or {})
    return spawner


async def kubernetes_manifests(user: str, groups=(), admin=False, config_file=None, user_options=None) -> list[dict]:
    sp = make_spawner(user, groups, admin, config_file, user_options)
    await sp.esker_offline_grants()  # a Spark server's own cluster keys: freshly made, as a start makes them
    return await sp.esker_manifests()


def embedded_plan(cfg: config.EskerConfig, user: str, groups=(), admin=False, user_options=None) -> dict:
    """The launch plan in embedded mode, built as the local spawner builds it (the hub's Spark site, scratch
    under scratch.root for the user's system account); GPUs are shown as the first N device ids."""
    from esker.core.catalog import Catalog, UserInfo
    from esker.core.plan import build_plan, select, with_grants
    from esker.courses.content import course_grant
    from esker.runtime import default_state_dir
    from esker.spawner.embedded import account_name, embedded_placement, embedded_site
    from esker.state.coursestore import effective_courses

    state_dir = default_state_dir()
    sel = select(Catalog.from_config(cfg), UserInfo(user, frozenset(groups), admin), user_options)
    account = account_name(cfg, user)
    home = os.path.join(cfg["users"]["home_root"], account)
    placement = embedded_placement(sel, cfg, state_dir, account=account, home=home)
    grant = course_grant(effective_courses(cfg, state_dir), sel.user)
    grants = {"courses": grant} if grant else {}
    if sel.profile.spark and cfg["spark"]["enabled"] and not cfg["spark"]["master_url"]:
        from esker.spark.cluster import new_credentials

        # The server's own cluster: its port is picked at start, its keys are fresh (and only in a 0600 file).
        grants["spark"] = {"master": "spark://127.0.0.1:<port picked at start>", **new_credentials()}
    plan = build_plan(sel, with_grants(placement, **grants), embedded_site(cfg.data))
    return {
        "user": plan.user, "profile": plan.profile, "choices": dict(plan.choices), "environment": plan.environment,
        "limits": {"cpu": plan.cpu_limit, "memory": plan.mem_limit, "gpus": plan.gpus, "gpu_type": plan.gpu_type,
                   "scratch": plan.scratch_size},
        "scratch_dir": plan.scratch_dir, "scratch_keep": plan.scratch_keep,
        "env": {k: plan.env[k] for k in sorted(plan.env)},
    }


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def cmd_preview(args) -> int:
    from esker.core.plan import OptionError

    try:
        cfg = config.load(args.config)
        user_options = {"profile": args.profile, **_options(args.option)}
    except (config.ConfigError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    if args.backend == "embedded":
        try:
            doc = embedded_plan(cfg, args.user, args.group, args.admin, user_options)
        except OptionError as e:
            print(f"refused ({e.status}): {e}", file=sys.stderr)
            return 2
        yaml.safe_dump(doc, sys.stdout, sort_keys=False)
        return 0

    from tornado.web import HTTPError

    async def run():
        return await kubernetes_manifests(args.user, args.group, args.admin, cfg.source, user_options)

    with offline_kubeconfig():
        try:
            docs = asyncio.run(run())
        except HTTPError as e:
            print(f"refused ({e.status_code}): {e.log_message}", file=sys.stderr)
            return 2
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "preview",
        help="print what a spawn would produce, without spawning",
        description="Print the Kubernetes manifests (pod, scratch PVC, Spark Service and RBAC) that "
        "EskerKubeSpawner would create for a user, profile and options, using KubeSpawner's own pod "
        "builder offline; or, with --backend embedded, the launch plan (environment and limits). "
        "A request the catalog refuses (unknown profile or choice, a group the user is not in) exits 2 "
        "with the reason.",
    )
    p.add_argument("--backend", choices=["kubernetes", "embedded"], default="kubernetes",
                   help="which backend to preview (default: kubernetes)")
    p.add_argument("--user", required=True, metavar="NAME", help="hub user name")
    p.add_argument("--group", action="append", default=[], metavar="G",
                   help="a JupyterHub group the user is in (repeatable)")
    p.add_argument("--admin", action="store_true", help="preview as an admin (admins may use every profile)")
    p.add_argument("--profile", required=True, metavar="SLUG", help="profile slug, as on the spawn page")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a profile option choice, e.g. gpus=1 (repeatable)")
    p.add_argument("--config", metavar="FILE", help="config file (default: $ESKER_CONFIG or the shipped esker.yaml)")
    p.set_defaults(func=cmd_preview)
