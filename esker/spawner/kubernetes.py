"""EskerKubeSpawner: the Kubernetes backend. Policy lives in :class:`esker.spawner.base.EskerSpawner`;
this class resolves names, applies the launch plan to KubeSpawner's traits and creates or deletes the
objects beside the pod. Every Kubernetes piece comes from the pure builders in
:mod:`esker.spawner.k8s_objects`.

Spawn options are Esker's, not KubeSpawner's: the form and its parser are the base's, ``profile_list`` is
derived from the catalog for the user's groups (for tools that read it), and :meth:`load_user_options`
replaces KubeSpawner's profile handling entirely. A request is validated by the base before anything is
created (in ``apply_user_options``, and again at the top of ``start`` in case a deployment replaced that
hook). KubeSpawner's own ``_load_profile`` (``kubespawner_override``, ``unlisted_choice``) never runs, so a
forged profile, option, ``--unlisted-choice`` value or GPU count has nothing to slip through.
"""

from __future__ import annotations

import asyncio
import copy
import os
from typing import Any, Mapping

from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from traitlets import Unicode, default

from esker import metrics
from esker.core.plan import LaunchPlan, Placement, Selection, build_plan, with_grants
from esker.courses.model import Course, courses_for
from esker.spark.cluster import new_credentials
from esker.spawner import k8s_objects as ko
from esker.spawner.base import EskerSpawner
from esker.spawner.services import Courses, FunctionBroker, InPod, ObjectStorage

prepull_images = ko.prepull_images

# KubeSpawner traits a plan sets. Their configured values are kept as the base each plan is applied to,
# so starting again with other choices does not accumulate GPUs, volumes or variables.
_APPLIED = (
    "image", "cpu_limit", "cpu_guarantee", "mem_limit", "mem_guarantee", "environment",
    "extra_resource_limits", "node_selector", "tolerations", "volumes", "volume_mounts", "extra_labels",
    "service_account", "automount_service_account_token", "init_containers", "cmd",
)

_API = {  # kind -> (client class, create method, delete method)
    "Secret": ("CoreV1Api", "create_namespaced_secret", "delete_namespaced_secret"),
    "ServiceAccount": ("CoreV1Api", "create_namespaced_service_account", "delete_namespaced_service_account"),
    "Service": ("CoreV1Api", "create_namespaced_service", "delete_namespaced_service"),
    "Role": ("RbacAuthorizationV1Api", "create_namespaced_role", "delete_namespaced_role"),
    "RoleBinding": ("RbacAuthorizationV1Api", "create_namespaced_role_binding", "delete_namespaced_role_binding"),
}


def _profile_list(spawner: "EskerKubeSpawner") -> list[dict]:
    return spawner.catalog.profile_list(spawner.esker_user)


def _with(base, items: list, prefix: str):
    """Add items to a KubeSpawner list-or-dict trait value (dicts are keyed, and sorted by key)."""
    if isinstance(base, dict):
        return {**base, **{f"{prefix}-{i}": item for i, item in enumerate(items)}}
    return [*base, *items]


async def delete_executors(api, names: ko.Names) -> None:
    """Delete a server's Spark executor pods. Spark's ownerReferences already let Kubernetes collect
    them after the notebook pod goes; this frees their resources now."""
    await api.delete_collection_namespaced_pod(names.namespace, label_selector=ko.executor_selector(names))


def own_cluster_grant() -> dict[str, str]:
    """A server's own Spark cluster (the master and worker sidecars of its pod): fresh keys at every start, made
    as the embedded backend makes them."""
    return {"master": ko.OWN_SPARK_MASTER, **new_credentials(), "ui_port": str(ko.SPARK_UI_PORT),
            "master_ui_port": str(ko.SPARK_MASTER_UI_PORT), "worker_ui_port": str(ko.SPARK_WORKER_UI_PORT)}


class KubeSpark:
    """Spark on Kubernetes. spark_mode standalone: the ``spark`` grant for the pod's own master and worker
    (which go with the pod; the grant reaches them through the server's Secret). Otherwise the driver's Service
    and RBAC are created with the pod (esker_objects); at stop, or after a failed start, the executor pods and
    those objects go."""

    name = "spark"

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        if sel.profile.spark and ko.own_spark_cluster(sp.esker_config.data):
            return with_grants(placement, spark=own_cluster_grant())
        return placement

    async def release(self, sp) -> None:
        mode = ko.spark_mode(sp.esker_config.data)
        if not mode or ko.own_spark_cluster(sp.esker_config.data):
            return  # nothing beside the pod (its sidecars stop with it)
        names = sp.esker_names()
        if mode == "kubernetes":
            try:
                await delete_executors(sp.api, names)
            except ApiException as e:
                sp.log.warning("Could not delete Spark executors of %s: %s", names.pod, e.reason)
        for kind in ("RoleBinding", "Role", "ServiceAccount", "Service"):
            client, _, delete = _API[kind]
            name = names.driver_service if kind == "Service" else names.service_account
            try:
                await getattr(shared_client(client), delete)(name, sp.namespace)
            except ApiException as e:
                if e.status != 404:
                    sp.log.warning("Could not delete %s %s: %s", kind, name, e.reason)


class KubeObjectStorage(ObjectStorage):
    """Object storage on Kubernetes. The server's Secret (``<pod>-env``) goes here, at stop and after a failed
    start: the user's S3 keys and the Spark defaults file (the S3A keys, and a server's own Spark cluster's RPC
    secret and UI key), created with the pod's other objects (esker_objects, before the pod) and named by the
    pod's secretKeyRef. Released first (storage is prepared last), whether or not storage is enabled.
    Identities and buckets outlive a server."""

    async def release(self, sp) -> None:
        await super().release(sp)
        name = sp.esker_names().env_secret
        try:
            await shared_client("CoreV1Api").delete_namespaced_secret(name, sp.namespace)
        except ApiException as e:
            if e.status != 404:
                sp.log.warning("Could not delete Secret %s: %s", name, e.reason)


class EskerKubeSpawner(EskerSpawner, KubeSpawner):
    mode = "kubernetes"

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

    @default("course_home")
    def _default_course_home(self):
        return os.environ.get("ESKER_COURSE_HOME", "/home/jovyan")

    @default("course_datasets_claim")
    def _default_course_datasets_claim(self):
        return os.environ.get("ESKER_COURSE_DATASETS_CLAIM", "esker-datasets")

    @default("profile_list")
    def _default_profile_list(self):
        return _profile_list

    @default("namespace")
    def _default_esker_namespace(self):
        # Esker's kubernetes.namespace (the chart renders it as the release's namespace).
        return self.esker_config["kubernetes"]["namespace"]

    def esker_names(self) -> ko.Names:
        return ko.Names(
            namespace=self.namespace, pod=self.pod_name, user_slug=self._expand_user_properties("{safe_username}")
        )

    def esker_plan(self, sel: Selection) -> LaunchPlan:
        cfg = self.esker_config.data
        names = self.esker_names()
        placement = ko.kubernetes_placement(sel, cfg, self._esker_grants, home=self.course_home)
        return build_plan(sel, placement, ko.kubernetes_site(cfg, names, sel.image))

    def esker_course_pod(self, plan: LaunchPlan, base: Mapping[str, Any], courses: list[Course]) -> dict:
        """Init containers, volumes and mounts for the user's courses (content merge, datasets)."""
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
        sel = self.esker_select(self.user_options)
        plan = self.esker_plan(sel)
        if not hasattr(self, "_esker_base"):
            self._esker_base = {k: copy.deepcopy(getattr(self, k)) for k in _APPLIED}
        base, cfg, names = self._esker_base, self.esker_config.data, self.esker_names()
        volume, mount = ko.scratch_volume(plan, cfg, names)
        if "hostPath" in volume and not self.runtime.extra.get("hostpath_warned"):
            self.runtime.extra["hostpath_warned"] = True  # once per hub
            self.log.warning("scratch has no quota here: scratch.kubernetes.storage_class is null, so scratch is "
                             "a hostPath folder per user; set a node-local storage class to enforce scratch_size")
        uid = self.uid if isinstance(self.uid, int) else 1000
        gid = self.gid if isinstance(self.gid, int) else 100
        scratch_init = ko.scratch_init_container(plan, cfg, uid, gid, names)
        gpu = ko.gpu_scheduling(plan, cfg)
        extra = {k: v for k, v in ko.resources(plan, cfg)["limits"].items() if k not in ("cpu", "memory")}

        spark_sidecars = ko.spark_sidecars(plan, cfg, uid, gid)
        cpu, memory = ko.notebook_share(plan, cfg)  # the profile's, less the sidecars'

        self.image = plan.image
        self.cmd = ko.server_cmd(sel.function, base["cmd"])
        self.cpu_limit = self.cpu_guarantee = cpu
        self.mem_limit = self.mem_guarantee = memory
        self.environment = {**base["environment"], **ko.kubespawner_environment(plan, names)}
        self.extra_resource_limits = {**base["extra_resource_limits"], **extra}
        self.node_selector = {**base["node_selector"], **gpu["node_selector"]}
        self.tolerations = _with(base["tolerations"], gpu["tolerations"], "esker-gpu")
        course = self.esker_course_pod(plan, base, courses_for(sel.user, self.esker_course_list if self.esker_course_list is not None else self.esker_courses()))
        self.volumes = _with(_with(base["volumes"], [volume], ko.SCRATCH_VOLUME), course["volumes"],
                             ko.DATASETS_VOLUME)
        self.volume_mounts = _with(_with(base["volume_mounts"], [mount], ko.SCRATCH_VOLUME),
                                   course["volume_mounts"], ko.DATASETS_VOLUME)
        # Scratch first (it writes the Spark defaults file), then the Spark sidecars (their JVMs start while the
        # course content is merged), then the courses.
        self.init_containers = _with(_with(_with(base["init_containers"], [scratch_init], ko.SCRATCH_VOLUME),
                                           spark_sidecars, "esker-spark"), course["init_containers"], "esker-course")
        self.extra_labels = {**base["extra_labels"], **ko.server_labels(names), **ko.function_labels(sel.function)}
        if any(o["kind"] == "ServiceAccount" for o in ko.spark_objects(plan, cfg, names)):
            self.service_account = names.service_account
            self.automount_service_account_token = True
        else:
            self.service_account = base["service_account"]
            self.automount_service_account_token = base["automount_service_account_token"]
        self.esker_launch_plan = plan

    def esker_objects(self) -> list[dict]:
        """Objects besides the pod for the loaded plan (the server's Secret, driver Service, Spark RBAC), with
        KubeSpawner's common labels."""
        labels = self._build_common_labels(self._expand_all(self.extra_labels))
        plan, names = self.esker_launch_plan, self.esker_names()
        secret = ko.server_secret(plan, names, labels)
        return [*([secret] if secret else []), *ko.spark_objects(plan, self.esker_config.data, names, labels)]

    async def esker_offline_grants(self) -> None:
        """The grants a start makes that need no cluster (a server's own Spark cluster's keys, fresh ones), so
        a preview shows the pod and Secret a start would create."""
        sel = self.esker_select(self.user_options)
        placement = ko.kubernetes_placement(sel, self.esker_config.data, self._esker_grants, home=self.course_home)
        self._esker_grants = (await KubeSpark().prepare(self, sel, placement)).grants

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

    # Prepared in this order, released in the reverse one (esker.spawner.services); the pod carries scratch
    # (a volume and its init container) and GPUs (the device plugin's resource). No bucket mounts: the image's
    # hadoop-aws reads s3a:// itself.
    esker_services = (FunctionBroker(), Courses(), InPod("gpus"), InPod("scratch"), KubeObjectStorage(), InPod("mounts"), KubeSpark())
    _esker_grants: Mapping = {}

    async def esker_prepare(self, sel: Selection) -> None:
        """The services first (their grants), then the plan on KubeSpawner's traits, then the objects beside
        the pod. KubeSpawner's _start loads the options again: idempotent, the plan is re-applied to the same
        base."""
        placement = ko.kubernetes_placement(sel, self.esker_config.data, home=self.course_home)
        self._esker_grants = (await self.esker_prepare_services(sel, placement)).grants
        await self.load_user_options()
        if self.enable_user_namespaces:
            await self._ensure_namespace()
        for obj in self.esker_objects():
            client, create, _ = _API[obj["kind"]]
            try:
                await getattr(shared_client(client), create)(self.namespace, obj)
            except ApiException as e:
                if e.status != 409:  # left by an earlier start: same name
                    raise
                if obj["kind"] == "Secret":  # its content may differ (new keys): this start's wins. Delete and
                    api = shared_client(client)  # create: z2jh's hub Role has no update on Secrets
                    await api.delete_namespaced_secret(obj["metadata"]["name"], self.namespace)
                    await api.create_namespaced_secret(self.namespace, obj)
        self.plan = self.esker_launch_plan

    async def start(self):
        url = await super().start()
        if self.plan is not None and self.plan.gpus:  # the DCGM exporter's series of this pod are its GPUs
            metrics.gpu_pod(self.owner_key, self.namespace, self.pod_name)
            metrics.gpu_assigned(self.owner_key, [str(i) for i in range(self.plan.gpus)])
        return url

    async def esker_gpu_usage(self):
        source = self.runtime.gpu_source()
        if source is None:
            return None
        return (await asyncio.to_thread(source.usage_for, self.namespace, self.pod_name)) or None

    async def esker_release(self) -> None:
        await super().esker_release()
        metrics.gpu_released(self.owner_key)
        self._esker_grants, self.plan = {}, None
