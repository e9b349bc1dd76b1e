"""EskerKubeSpawner: the Kubernetes backend. It resolves configuration and names, and delegates to
KubeSpawner; every Kubernetes piece comes from the pure builders in :mod:`esker.spawner.k8s_objects`.

Spawn options are Esker's, not KubeSpawner's: ``profile_list`` is derived from the catalog for the user's
groups (it only draws the form), and :meth:`EskerKubeSpawner.load_user_options` replaces KubeSpawner's
profile handling entirely. A request is validated with :func:`esker.core.plan.select` and refused with
its 4xx status before anything is created: first in JupyterHub's ``apply_user_options`` hook (before
``start``), and again at the top of ``start`` in case a deployment replaced that hook. KubeSpawner's own
``_load_profile`` (``kubespawner_override``, ``unlisted_choice``) never runs, so a forged profile, option,
``--unlisted-choice`` value or GPU count has nothing to slip through.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from tornado import web
from traitlets import Unicode, default

from esker import resources
from esker.core import config as esker_config
from esker.courses.model import courses_for, courses_from_config
from esker.objectstore.service import StorageService
from esker.state.coursestore import effective_courses
from esker.core.catalog import Catalog, UserInfo
from esker.core.plan import LaunchPlan, OptionError, Selection, build_plan, select
from esker.spawner import k8s_objects as ko

prepull_images = ko.prepull_images

# KubeSpawner traits a plan sets. Their configured values are kept as the base each plan is applied to,
# so starting again with other choices does not accumulate GPUs, volumes or variables.
_APPLIED = (
    "image", "cpu_limit", "cpu_guarantee", "mem_limit", "mem_guarantee", "environment",
    "extra_resource_limits", "node_selector", "tolerations", "volumes", "volume_mounts", "extra_labels",
    "service_account", "automount_service_account_token", "init_containers",
)

_API = {  # kind -> (client class, create method, delete method)
    "ServiceAccount": ("CoreV1Api", "create_namespaced_service_account", "delete_namespaced_service_account"),
    "Service": ("CoreV1Api", "create_namespaced_service", "delete_namespaced_service"),
    "Role": ("RbacAuthorizationV1Api", "create_namespaced_role", "delete_namespaced_role"),
    "RoleBinding": ("RbacAuthorizationV1Api", "create_namespaced_role_binding", "delete_namespaced_role_binding"),
}

_config_cache: dict[tuple[str, int], esker_config.EskerConfig] = {}
_storage_cache: dict[tuple[str, str], Any] = {}


def load_config(path: str | None) -> esker_config.EskerConfig:
    """esker.core.config.load(), re-read only when the file changes (the hub builds a spawner per user)."""
    p = Path(path or resources.default_config())
    try:
        key = (str(p), p.stat().st_mtime_ns)
    except OSError:
        return esker_config.load(p)  # raises ConfigError naming the file
    if key not in _config_cache:
        _config_cache.clear()
        _config_cache[key] = esker_config.load(p)
    return _config_cache[key]


def _profile_list(spawner: "EskerKubeSpawner") -> list[dict]:
    return spawner.catalog.profile_list(spawner.esker_user)


def _apply_user_options(spawner: "EskerKubeSpawner", user_options: Any) -> None:
    spawner.esker_select(user_options)


def _with(base, items: list, prefix: str):
    """Add items to a KubeSpawner list-or-dict trait value (dicts are keyed, and sorted by key)."""
    if isinstance(base, dict):
        return {**base, **{f"{prefix}-{i}": item for i, item in enumerate(items)}}
    return [*base, *items]


async def delete_executors(api, names: ko.Names) -> None:
    """Delete a server's Spark executor pods. Spark's ownerReferences already let Kubernetes collect
    them after the notebook pod goes; this frees their resources now."""
    await api.delete_collection_namespaced_pod(names.namespace, label_selector=ko.executor_selector(names))


class EskerKubeSpawner(KubeSpawner):
    config_file = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Esker configuration file (esker.yaml). Default: $ESKER_CONFIG, else the shipped esker.yaml.",
    )

    # Courses on Kubernetes (docs/kubernetes.md); each also has an environment variable (z2jh hub.extraEnv).
    course_home = Unicode(
        help="Where the home volume is mounted (z2jh singleuser.storage.homeMountPath): course content goes "
        "to <course_home>/<course>/. The course init container mounts the pod's volume mounts at this path. "
        "$ESKER_COURSE_HOME, default /home/jovyan.",
    ).tag(config=True)

    course_datasets_claim = Unicode(
        help="PersistentVolumeClaim (ReadWriteMany/ReadOnlyMany) with one folder per course dataset, mounted "
        "read-only for participants and read-write for instructors. Empty: course datasets are not mounted. "
        "$ESKER_COURSE_DATASETS_CLAIM, default esker-datasets.",
    ).tag(config=True)

    course_state_dir = Unicode(
        help="Esker state directory whose courses.sqlite holds courses created or changed at run time (the "
        "esker-courses service's) and whose secrets/ hold the encrypted S3 keys. $ESKER_STATE_DIR, "
        "default /srv/jupyterhub/esker (the hub's persistent volume in z2jh).",
    ).tag(config=True)

    @default("course_home")
    def _default_course_home(self):
        return os.environ.get("ESKER_COURSE_HOME", "/home/jovyan")

    @default("course_datasets_claim")
    def _default_course_datasets_claim(self):
        return os.environ.get("ESKER_COURSE_DATASETS_CLAIM", "esker-datasets")

    @default("course_state_dir")
    def _default_course_state_dir(self):
        return os.environ.get("ESKER_STATE_DIR", "/srv/jupyterhub/esker")

    @default("profile_list")
    def _default_profile_list(self):
        return _profile_list

    @default("namespace")
    def _default_esker_namespace(self):
        # Esker's kubernetes.namespace (the chart renders it as the release's namespace).
        return self.esker_config["kubernetes"]["namespace"]

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return _apply_user_options

    @property
    def esker_config(self) -> esker_config.EskerConfig:
        return load_config(self.config_file)

    @property
    def catalog(self) -> Catalog:
        cfg = self.esker_config
        if getattr(self, "_catalog_for", None) is not cfg:
            self._catalog, self._catalog_for = Catalog.from_config(cfg), cfg
        return self._catalog

    @property
    def esker_user(self) -> UserInfo:
        groups = getattr(self.user, "groups", None) or ()
        return UserInfo(
            name=self.user.name,
            groups=frozenset(getattr(g, "name", g) for g in groups),
            admin=bool(getattr(self.user, "admin", False)),
        )

    def esker_names(self) -> ko.Names:
        return ko.Names(
            namespace=self.namespace, pod=self.pod_name, user_slug=self._expand_user_properties("{safe_username}")
        )

    def esker_select(self, user_options: Any) -> Selection:
        """Validate a request; refuse it with an HTTP error (the catalog's 400 or 403)."""
        if user_options is not None and not isinstance(user_options, Mapping):
            raise web.HTTPError(400, "user_options must be an object")
        try:
            return select(self.catalog, self.esker_user, user_options)
        except OptionError as e:
            raise web.HTTPError(e.status, str(e)) from None

    def esker_grants(self, sel: Selection) -> Mapping[str, Mapping[str, str]]:
        """What services prepared for this server (``{"storage": {...}}``), set by esker_prepare_grants.
        Called more than once per start: returns the same grants."""
        return getattr(self, "_esker_grants", {})

    @property
    def esker_storage(self):
        """The S3 provisioning service (one per hub process), or None when object storage is off."""
        cfg = self.esker_config
        if not cfg["storage"]["enabled"]:
            return None
        key = (cfg.source, self.course_state_dir)
        if key not in _storage_cache:
            _storage_cache[key] = StorageService.from_config(cfg, self.course_state_dir, mode="kubernetes")
        return _storage_cache[key]

    async def esker_prepare_grants(self, sel: Selection) -> None:
        """Per-user S3 identity and bucket, the same service as embedded mode (RGW Admin Ops API)."""
        self._esker_grants = {}
        required = sel.profile.storage == "required"
        try:
            storage = self.esker_storage if sel.profile.storage != "none" else None
            if storage is None:
                if required:
                    raise RuntimeError("object storage is not configured on this hub")
                return
            grant = await storage.prepare(self.user.name, groups=self.esker_user.groups, admin=self.esker_user.admin)
        except Exception as e:
            if required:
                raise web.HTTPError(503, f"Object storage is unavailable, and {sel.profile.display_name} "
                                    f"needs it: {e}") from None
            self.log.warning("Starting %s without object storage: %s", self._log_name, e)
            return
        self._esker_grants = {"storage": grant}

    def esker_plan(self, sel: Selection) -> LaunchPlan:
        cfg = self.esker_config.data
        names = self.esker_names()
        placement = ko.kubernetes_placement(sel, cfg, self.esker_grants(sel))
        return build_plan(sel, placement, ko.kubernetes_site(cfg, names, sel.image))

    def esker_courses(self) -> list:
        """The courses this user takes or teaches: esker.yaml's, with the service's runtime changes."""
        courses = effective_courses(self.esker_config, self.course_state_dir) if self.course_state_dir \
            else courses_from_config(self.esker_config)
        return courses_for(self.esker_user, courses)

    def esker_course_pod(self, plan: LaunchPlan, base: Mapping[str, Any]) -> dict:
        """Init containers, volumes and mounts for the user's courses (content merge, datasets)."""
        courses = self.esker_courses()
        out = {"init_containers": [], "volumes": [], "volume_mounts": []}
        if not courses:
            return out
        user = self.esker_user
        writable = {d for c in courses if c.is_instructor(user.name) or user.admin for d in c.datasets}
        volume, mounts = ko.course_datasets(courses, self.course_datasets_claim, writable)
        if volume:
            out["volumes"], out["volume_mounts"] = [volume], mounts
        mounts_of = base["volume_mounts"].values() if isinstance(base["volume_mounts"], dict) else base["volume_mounts"]
        home = [m for m in mounts_of if str(m.get("mountPath", "")).rstrip("/") == self.course_home.rstrip("/")]
        uid = self.uid if isinstance(self.uid, int) else 1000
        gid = self.gid if isinstance(self.gid, int) else 100
        for c in courses:
            if (c.content or {}).get("path"):
                self.log.warning("Course %s: content.path is a folder on the hub and is not delivered on "
                                 "Kubernetes; use content.git", c.name)
            if not home:
                self.log.warning("Course %s: no volume is mounted at %s (course_home); content not delivered",
                                 c.name, self.course_home)
                continue
            init = ko.course_init_container(c, plan.image, self.course_home, home, uid, gid, bool(volume))
            if init:
                out["init_containers"].append(init)
        return out

    async def load_user_options(self):
        """Validate ``user_options`` and apply the launch plan (replaces KubeSpawner's profile handling)."""
        plan = self.esker_plan(self.esker_select(self.user_options))
        if not hasattr(self, "_esker_base"):
            self._esker_base = {k: copy.deepcopy(getattr(self, k)) for k in _APPLIED}
        base, cfg, names = self._esker_base, self.esker_config.data, self.esker_names()
        volume, mount = ko.scratch_volume(plan, cfg, names)
        gpu = ko.gpu_scheduling(plan, cfg)
        extra = {k: v for k, v in ko.resources(plan, cfg)["limits"].items() if k not in ("cpu", "memory")}

        self.image = plan.image
        self.cpu_limit = self.cpu_guarantee = plan.cpu_limit
        self.mem_limit = self.mem_guarantee = plan.mem_limit
        self.environment = {**base["environment"], **ko.kubespawner_environment(plan)}
        self.extra_resource_limits = {**base["extra_resource_limits"], **extra}
        self.node_selector = {**base["node_selector"], **gpu["node_selector"]}
        self.tolerations = _with(base["tolerations"], gpu["tolerations"], "esker-gpu")
        course = self.esker_course_pod(plan, base)
        self.volumes = _with(_with(base["volumes"], [volume], ko.SCRATCH_VOLUME), course["volumes"],
                             ko.DATASETS_VOLUME)
        self.volume_mounts = _with(_with(base["volume_mounts"], [mount], ko.SCRATCH_VOLUME),
                                   course["volume_mounts"], ko.DATASETS_VOLUME)
        self.init_containers = _with(base["init_containers"], course["init_containers"], "esker-course")
        self.extra_labels = {**base["extra_labels"], **ko.server_labels(names)}
        if any(o["kind"] == "ServiceAccount" for o in ko.spark_objects(plan, cfg, names)):
            self.service_account = names.service_account
            self.automount_service_account_token = True
        else:
            self.service_account = base["service_account"]
            self.automount_service_account_token = base["automount_service_account_token"]
        self.esker_launch_plan = plan

    def esker_objects(self) -> list[dict]:
        """Objects besides the pod for the loaded plan (driver Service, Spark RBAC), with KubeSpawner's
        common labels."""
        labels = self._build_common_labels(self._expand_all(self.extra_labels))
        return ko.spark_objects(self.esker_launch_plan, self.esker_config.data, self.esker_names(), labels)

    async def esker_manifests(self) -> list[dict]:
        """Everything a start would send to the API, as dicts, without sending it (``esker preview``)."""
        await self.load_user_options()
        to_dict = self.api.api_client.sanitize_for_serialization
        pod = to_dict(await self.get_pod_manifest())
        pod["metadata"]["namespace"] = self.namespace
        out = [pod, *ko.ephemeral_pvcs(pod)]
        if self.storage_pvc_ensure:
            pvc = to_dict(self.get_pvc_manifest())
            pvc["metadata"]["namespace"] = self.namespace
            out.append(pvc)
        return out + self.esker_objects()

    async def _start(self):
        # Refuse a forged or stale request before anything exists; KubeSpawner's _start loads again
        # (idempotent: the plan is re-applied to the same base).
        await self.esker_prepare_grants(self.esker_select(self.user_options))
        await self.load_user_options()
        if self.enable_user_namespaces:
            await self._ensure_namespace()
        for obj in self.esker_objects():
            client, create, _ = _API[obj["kind"]]
            try:
                await getattr(shared_client(client), create)(self.namespace, obj)
            except ApiException as e:
                if e.status != 409:  # left by an earlier start: same name, same content
                    raise
        return await super()._start()

    async def stop(self, now=False):
        names = self.esker_names()
        spark = ko.spark_mode(self.esker_config.data)
        if spark == "kubernetes":
            try:
                await delete_executors(self.api, names)
            except ApiException as e:
                self.log.warning("Could not delete Spark executors of %s: %s", names.pod, e.reason)
        await super().stop(now=now)
        if spark:
            for kind in ("RoleBinding", "Role", "ServiceAccount", "Service"):
                client, _, delete = _API[kind]
                name = names.driver_service if kind == "Service" else names.service_account
                try:
                    await getattr(shared_client(client), delete)(name, self.namespace)
                except ApiException as e:
                    if e.status != 404:
                        self.log.warning("Could not delete %s %s: %s", kind, name, e.reason)
