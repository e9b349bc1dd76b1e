"""Launch plan -> Kubernetes pieces. Pure functions returning plain dicts (camelCase, as the API takes them).

Nothing here talks to a cluster or reads a file: :mod:`esker.spawner.kubernetes` resolves names and
configuration through KubeSpawner and hands them in, and the tests check the results as data (and with
``kubernetes-validate --strict``).

The environment a pod gets is exactly ``plan.env``: :func:`container_env` is that, sorted, and
:func:`kubespawner_environment` is the same values escaped for KubeSpawner's ``environment`` trait (which
expands ``{username}``-style templates) and for Kubernetes (which expands ``$(VAR)``), so what the process
sees is byte for byte what :func:`esker.core.plan.build_plan` computed.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import shlex
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from esker.core.catalog import Catalog
from esker.core.contributors import spark_conf_dir
from esker.core.functions import FUNCTION_SERVER
from esker.core.plan import LaunchPlan, Placement, Selection, Site, SparkSite
from esker.units import parse_size, spark_size

LABEL_PREFIX = "esker.io"
SERVER_LABEL = f"{LABEL_PREFIX}/server"  # the notebook pod's name: unique per server, a valid label value
USER_LABEL = f"{LABEL_PREFIX}/user"
FUNCTION_LABEL = f"{LABEL_PREFIX}/function"  # a function's server: the chart lets these reach the task broker
SCRATCH_VOLUME = "esker-scratch"

# Spark on Kubernetes: the API server as seen from inside the cluster, and the fixed ports the driver (the
# notebook pod) listens on for executors. Fixed so the headless Service and the chart's NetworkPolicy can
# name them; the chart's values must agree (a test checks).
K8S_SPARK_MASTER = "k8s://https://kubernetes.default.svc"
SPARK_DRIVER_PORT = 7078
SPARK_BLOCK_MANAGER_PORT = 7079
SPARK_UI_PORT = 4040
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# spark_mode standalone: each Spark server's pod runs its own master and worker (spark_sidecars), on the pod's
# loopback. The pod's network namespace is its own, so these ports are nobody else's and reach nobody else.
SPARK_MASTER_PORT = 7077
SPARK_MASTER_UI_PORT = 8080
SPARK_WORKER_UI_PORT = 8081
OWN_SPARK_MASTER = f"spark://127.0.0.1:{SPARK_MASTER_PORT}"


# -- names --------------------------------------------------------------------------------------------


def _fit(name: str, limit: int) -> str:
    """``name`` if it fits in ``limit`` characters, else a truncated prefix plus a short hash (stable)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class Names:
    """Kubernetes names of one server, as KubeSpawner resolved them (``pod`` is its ``pod_name``)."""

    namespace: str
    pod: str
    user_slug: str  # KubeSpawner's safe slug of the user name: a valid label value and path segment

    @property
    def driver_service(self) -> str:
        return _fit(f"{self.pod}-spark", 63)

    @property
    def service_account(self) -> str:
        return _fit(f"{self.pod}-spark", 253)

    @property
    def executor_prefix(self) -> str:
        # Spark names executors <prefix>-exec-<n>; it requires the prefix to be at most 47 characters.
        return _fit(self.pod, 47)

    @property
    def env_secret(self) -> str:
        # The server's Secret (server_secret): its S3 keys and private files.
        return _fit(f"{self.pod}-env", 253)

    @property
    def driver_host(self) -> str:
        # Resolves from any pod through the default search path, whatever the cluster domain is.
        return f"{self.driver_service}.{self.namespace}.svc"


def server_labels(names: Names) -> dict[str, str]:
    """Labels Esker adds to the notebook pod and to everything it creates for that server."""
    return {SERVER_LABEL: names.pod, USER_LABEL: names.user_slug}


def function_labels(function: str | None) -> dict[str, str]:
    """The function server's pod is labelled with its function (NetworkPolicy esker-functions-broker)."""
    return {FUNCTION_LABEL: function} if function else {}


# -- the container ------------------------------------------------------------------------------------


def _k8s_escape(value: str) -> str:
    # Kubernetes expands $(VAR) in env values; $$( is its escape for a literal $(.
    return value.replace("$(", "$$(")


# The plan's variables that are secrets: on Kubernetes they live in the server's Secret (server_secret) and the
# pod names them by secretKeyRef, never by value (a pod spec is readable by whoever may get pods).
SECRET_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ESKER_FUNCTION_BROKER_PASSWORD"})
PRIVATE_FILE_ENV = "ESKER_PRIVATE_FILE_"  # + index: plan.files for the scratch init container


def secret_ref(names: Names, key: str) -> dict:
    return {"valueFrom": {"secretKeyRef": {"name": names.env_secret, "key": key}}}


def server_secret_data(plan: LaunchPlan) -> dict[str, str]:
    """What the server's Secret holds: the secret variables of ``plan.env`` and the content of ``plan.files``
    (``ESKER_PRIVATE_FILE_<i>``, in sorted path order), as plain strings."""
    data = {k: plan.env[k] for k in sorted(SECRET_ENV) if k in plan.env}
    for i, (_, text) in enumerate(sorted(plan.files.items())):
        data[f"{PRIVATE_FILE_ENV}{i}"] = text
    return data


def server_secret(plan: LaunchPlan, names: Names, labels: Mapping[str, str] | None = None) -> dict | None:
    """The per-server Secret the pod's secret variables refer to (created before the pod, deleted at stop and
    after a failed start); None when the plan has no secret."""
    data = server_secret_data(plan)
    if not data:
        return None
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": names.env_secret, "namespace": names.namespace,
                     "labels": {**(labels or {}), **server_labels(names)}},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def container_env(plan: LaunchPlan, names: Names | None = None) -> list[dict]:
    """``plan.env``, sorted by name, as V1EnvVar-shaped dicts. With ``names`` (what the spawner passes), the
    SECRET_ENV variables are ``valueFrom.secretKeyRef`` of the server's Secret instead of values."""
    return [{"name": k, **secret_ref(names, k)} if names is not None and k in SECRET_ENV
            else {"name": k, "value": _k8s_escape(plan.env[k])} for k in sorted(plan.env)]


def server_cmd(function: str | None, default: Any) -> Any:
    """The pod's command: a function's named server runs the function server of the image's environment
    (docs/functions.md), any other server the configured one (z2jh's ``singleuser.cmd``)."""
    return ["python", "-m", FUNCTION_SERVER] if function else default


def kubespawner_environment(plan: LaunchPlan, names: Names | None = None) -> dict[str, Any]:
    """``plan.env`` for KubeSpawner's ``environment`` trait, which formats values as templates
    (``{username}``): braces are doubled so the template renders back to the exact value. Secret references
    (with ``names``) are dicts, which KubeSpawner passes as EnvVar specs."""
    return {e["name"]: e["value"].replace("{", "{{").replace("}", "}}") if "value" in e
            else {"valueFrom": e["valueFrom"]} for e in container_env(plan, names)}


def _cpu(cores: float) -> str:
    return str(int(cores)) if float(cores).is_integer() else f"{round(cores * 1000)}m"


def resources(plan: LaunchPlan, cfg: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Requests and limits. Requests equal limits (what Kubernetes defaults them to when only limits are
    given, written out); GPUs are an extended resource, which Kubernetes only takes as a limit."""
    limits = {"cpu": _cpu(plan.cpu_limit), "memory": str(plan.mem_limit)}
    if plan.gpus:
        limits[cfg["gpus"]["resource_name"]] = str(plan.gpus)
    requests = {"cpu": limits["cpu"], "memory": limits["memory"]}
    return {"requests": requests, "limits": limits}


def notebook_share(plan: LaunchPlan, cfg: Mapping[str, Any]) -> tuple[float, int]:
    """CPU and memory of the notebook container: the profile's, less what the pod's Spark sidecars take
    (:func:`spark_sidecar_resources`), so the pod as a whole holds exactly what the profile promises."""
    cpu, memory = plan.cpu_limit, plan.mem_limit
    sidecars = spark_sidecar_resources(plan, cfg)
    if not sidecars:
        return cpu, memory
    cpu -= sum(c for c, _ in sidecars.values())
    memory -= sum(m for _, m in sidecars.values())
    spark = cfg["spark"]
    driver = parse_size(spark["driver_memory"])
    need_cpu, need_memory = NOTEBOOK_MIN_CPU, driver + _jvm_overhead(driver) + NOTEBOOK_MIN_MEMORY
    if cpu < need_cpu - 1e-9 or memory < need_memory:
        raise ValueError(
            f"profile {plan.profile}: cpu_limit {plan.cpu_limit:g} and mem_limit {plan.mem_limit} cannot hold the "
            f"server's own Spark master and worker ({_fmt_share(sidecars)}: spark.cores_per_user "
            f"{spark['cores_per_user']}, spark.executor_memory {spark['executor_memory']}) and leave the notebook "
            f"{need_cpu:g} CPU and {need_memory // 2**20}Mi (spark.driver_memory {spark['driver_memory']}); "
            "raise the profile's limits or lower Spark's")
    return round(cpu, 3), memory


def _fmt_share(sidecars: Mapping[str, tuple[float, int]]) -> str:
    return ", ".join(f"{n} {c:g} CPU {m // 2**20}Mi" for n, (c, m) in sidecars.items())


def gpu_scheduling(plan: LaunchPlan, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Node selector and tolerations for the plan's GPU type; nothing for a server without GPUs, so a
    CPU-only choice of a GPU profile does not occupy a GPU node."""
    if not plan.gpus or not plan.gpu_type:
        return {"node_selector": {}, "tolerations": []}
    gpu_type = cfg["gpus"]["types"][plan.gpu_type]
    return {
        "node_selector": dict(gpu_type.get("node_selector", {})),
        "tolerations": [dict(t) for t in gpu_type.get("tolerations", [])],
    }


def scratch_volume(plan: LaunchPlan, cfg: Mapping[str, Any], names: Names) -> tuple[dict, dict]:
    """The per-user scratch volume and its mount.

    With ``scratch.kubernetes.storage_class`` set: a generic ephemeral volume, so Kubernetes creates a PVC
    of ``plan.scratch_size`` on that (node-local, NVMe) class with the pod and deletes it with the pod.
    With ``storage_class: null``: a hostPath directory per user under ``host_path_root``; it has no quota
    and outlives the pod (``scratch_keep: false`` is not enforced in this mode).
    Either way the pod also needs :func:`scratch_init_container`, which makes the volume the user's.
    """
    k = cfg["scratch"]["kubernetes"]
    if k["storage_class"]:
        volume = {
            "name": SCRATCH_VOLUME,
            "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": server_labels(names)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": k["storage_class"],
                        "resources": {"requests": {"storage": str(plan.scratch_size)}},
                    },
                }
            },
        }
    else:
        root = k["host_path_root"].rstrip("/")
        volume = {
            "name": SCRATCH_VOLUME,
            "hostPath": {"path": f"{root}/{names.user_slug}", "type": "DirectoryOrCreate"},
        }
    return volume, {"name": SCRATCH_VOLUME, "mountPath": k["mount_path"]}


# Inside the scratch volume, as embedded mode's esker.system.scratch.prepare makes them: TMPDIR and spark.local.dir.
SCRATCH_SUBDIRS = ("tmp", "spark")

# $1: the mount path, $2: uid:gid (hostPath only). No braces and no "$(": KubeSpawner formats init containers as
# templates and Kubernetes expands $(VAR) in commands.
_SUBDIRS = " ".join(SCRATCH_SUBDIRS)
_SCRATCH_HOSTPATH_SCRIPT = f'set -eu; cd "$1"; mkdir -p {_SUBDIRS}; chown -h "$2" . {_SUBDIRS}; chmod 0700 . {_SUBDIRS}'
_SCRATCH_VOLUME_SCRIPT = (
    f'set -eu; cd "$1"; if ! mkdir -p {_SUBDIRS}; then echo "esker-scratch: cannot create {_SUBDIRS} in $1 '
    'as the notebook user: the pod needs an fsGroup (z2jh singleuser.fsGid) for its volume" >&2; exit 1; fi; '
    f'chmod 0700 {_SUBDIRS}'
)


def _private_files_script(plan: LaunchPlan, mount_path: str, owner: bool,
                          names: Names | None = None) -> tuple[str, list[dict]]:
    """Shell steps (after ``cd`` into the volume) writing ``plan.files`` 0600, and the env they read them from:
    the content travels in the init container's environment like the notebook's own, never in its argv."""
    steps, env = [], []
    root = mount_path.rstrip("/") or "/"
    for i, (path, text) in enumerate(sorted(plan.files.items())):
        rel = posixpath.relpath(path, root)
        if rel.startswith(".."):
            raise ValueError(f"{path} is not under the scratch mount {root}")
        folder, var = posixpath.dirname(rel) or ".", f"{PRIVATE_FILE_ENV}{i}"
        q, qd = shlex.quote(rel), shlex.quote(folder)
        steps.append(f"mkdir -p {qd}; chmod 0700 {qd}; rm -f {q}; printf %s \"${var}\" > {q}; chmod 0600 {q}")
        if owner:
            steps.append(f'chown -h "$2" {qd} {q}')
        env.append({"name": var, **secret_ref(names, var)} if names is not None
                   else {"name": var, "value": _template_escape(text)})
    return ("; umask 077; " + "; ".join(steps)) if steps else "", env


def scratch_init_container(plan: LaunchPlan, cfg: Mapping[str, Any], uid: int, gid: int,
                           names: Names | None = None) -> dict:
    """An init container that makes the scratch volume the notebook user's (``uid``/``gid``, the pod's) before
    the notebook starts: ``tmp/`` (``TMPDIR``) and ``spark/`` (``spark.local.dir``) exist, mode 0700.

    hostPath (``storage_class: null``): the kubelet creates ``{host_path_root}/{user}`` as root, mode 0755
    (``DirectoryOrCreate``), and a pod's ``fsGroup`` does not apply to hostPath volumes, so the notebook user
    could not write to it. This container runs as root, with only CHOWN, DAC_OVERRIDE and FOWNER, and gives the
    folder and the two subfolders to ``uid:gid``, mode 0700, as the embedded mode does (not recursively: what
    is inside is the user's already). Only the user's own folder is mounted, so nothing else on the node is
    within its reach; ``chown -h`` never follows a link the user left there.

    Ephemeral volume (a storage class): the pod's ``fsGroup`` (z2jh's ``singleuser.fsGid``) already makes the
    volume writable by the user, so the container runs as the user and creates the two subfolders; without an
    fsGroup it fails, saying so, and the pod does not start.
    """
    k = cfg["scratch"]["kubernetes"]
    mount = {"name": SCRATCH_VOLUME, "mountPath": k["mount_path"]}
    if k["storage_class"]:
        script, args = _SCRATCH_VOLUME_SCRIPT, [k["mount_path"]]
        security = {"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": uid != 0,
                    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    else:
        script, args = _SCRATCH_HOSTPATH_SCRIPT, [k["mount_path"], f"{uid}:{gid}"]
        security = {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER"]}}
    files, env = _private_files_script(plan, k["mount_path"], owner=not k["storage_class"], names=names)
    script += files
    container = {
        "name": SCRATCH_VOLUME,
        "image": plan.image,  # already on the node (the pre-puller), and it has a shell
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script, SCRATCH_VOLUME, *(_template_escape(a) for a in args)],
        "securityContext": security,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
        "volumeMounts": [mount],
    }
    if env:
        container["env"] = env
    return container


def ephemeral_pvcs(pod: Mapping[str, Any]) -> list[dict]:
    """The PVCs Kubernetes will create for a pod's generic ephemeral volumes (named ``<pod>-<volume>``,
    owned by the pod), for previews and validation."""
    out = []
    meta = pod["metadata"]
    for vol in pod["spec"].get("volumes") or []:
        template = vol.get("ephemeral", {}).get("volumeClaimTemplate")
        if not template:
            continue
        out.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    **template.get("metadata", {}),
                    "name": f"{meta['name']}-{vol['name']}",
                    "namespace": meta.get("namespace"),
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta.get("uid") or "<pod uid>",
                         "controller": True, "blockOwnerDeletion": True}
                    ],
                },
                "spec": template["spec"],
            }
        )
    return out


def kubernetes_placement(
    sel: Selection, cfg: Mapping[str, Any], grants: Mapping[str, Mapping[str, str]] | None = None,
    home: str = "",
) -> Placement:
    """Where a selection lands on Kubernetes: scratch at the mount path, GPUs numbered from 0 (the device
    plugin exposes only the assigned devices inside the container), and the home volume's mount path."""
    return Placement(
        scratch_dir=cfg["scratch"]["kubernetes"]["mount_path"].rstrip("/") or "/",
        gpu_devices=tuple(str(i) for i in range(sel.gpus)),
        home=home,
        grants=MappingProxyType(dict(grants or {})),
    )


# -- Spark ---------------------------------------------------------------------------------------------


def spark_mode(cfg: Mapping[str, Any]) -> str | None:
    """``kubernetes`` (executors are pods), ``standalone`` (a standalone master), or None."""
    return cfg["kubernetes"]["spark_mode"] if cfg["spark"]["enabled"] else None


def own_spark_cluster(cfg: Mapping[str, Any]) -> bool:
    """spark_mode standalone without an external ``spark.master_url``: each Spark server's pod runs its own
    master and worker (:func:`spark_sidecars`), with its own secret (the ``spark`` grant)."""
    return spark_mode(cfg) == "standalone" and not cfg["spark"]["master_url"]


def has_own_spark_cluster(plan: LaunchPlan, cfg: Mapping[str, Any]) -> bool:
    return own_spark_cluster(cfg) and "SPARK_MASTER" in plan.env


def spark_k8s_conf(names: Names, image: str, cfg: Mapping[str, Any]) -> dict[str, str]:
    """Spark defaults for a driver in the notebook pod (client mode) whose executors are pods."""
    prefix = "spark.kubernetes.executor.label."
    return {
        "spark.kubernetes.namespace": names.namespace,
        "spark.kubernetes.container.image": image,
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent",
        # Executors get an ownerReference to this pod, so deleting the server garbage-collects them.
        "spark.kubernetes.driver.pod.name": names.pod,
        "spark.kubernetes.executor.podNamePrefix": names.executor_prefix,
        prefix + SERVER_LABEL: names.pod,
        prefix + USER_LABEL: names.user_slug,
        "spark.kubernetes.authenticate.caCertFile": f"{SA_DIR}/ca.crt",
        "spark.kubernetes.authenticate.oauthTokenFile": f"{SA_DIR}/token",
        # spark.cores.max means nothing to the Kubernetes scheduler backend: cap executors instead, and
        # give them back when a notebook sits idle.
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.maxExecutors": str(cfg["spark"]["cores_per_user"]),
        "spark.dynamicAllocation.executorIdleTimeout": "120s",
    }


def kubernetes_site(cfg: Mapping[str, Any], names: Names, image: str) -> Site:
    """The plan's Site for a server on Kubernetes. Built per server: the driver's address is its own."""
    mode = spark_mode(cfg)
    if mode is None:
        return Site(mode="kubernetes")
    spark = cfg["spark"]
    conf = {"spark.driver.port": str(SPARK_DRIVER_PORT), "spark.driver.blockManager.port": str(SPARK_BLOCK_MANAGER_PORT)}
    driver_host = names.driver_host
    if mode == "kubernetes":
        master = K8S_SPARK_MASTER
        conf.update(spark_k8s_conf(names, image, cfg))
    elif own_spark_cluster(cfg):
        # The executors are the pod's own worker's: the driver listens on the pod's loopback only. (The
        # grant names the same master; this is what a plan built without it, such as a preview, shows.)
        master, driver_host = OWN_SPARK_MASTER, "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    else:
        master = spark["master_url"]  # an external cluster: its executors reach the driver's Service
    return Site(
        mode="kubernetes",
        spark=SparkSite(
            master_url=master,
            cores_per_user=spark["cores_per_user"],
            executor_memory=spark["executor_memory"],
            driver_memory=spark["driver_memory"],
            driver_host=driver_host,
            extra_conf=MappingProxyType(conf),
        ),
    )


def _meta(name: str, names: Names, labels: Mapping[str, str]) -> dict:
    return {"name": name, "namespace": names.namespace, "labels": {**labels, **server_labels(names)}}


def spark_driver_service(names: Names, labels: Mapping[str, str] = {}) -> dict:
    """Headless Service giving the driver (the notebook pod) a DNS name executors can reach."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.driver_service, names, labels),
        "spec": {
            "clusterIP": "None",
            "selector": {SERVER_LABEL: names.pod},
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": "spark-driver", "port": SPARK_DRIVER_PORT, "targetPort": SPARK_DRIVER_PORT, "protocol": "TCP"},
                {"name": "spark-blockmgr", "port": SPARK_BLOCK_MANAGER_PORT, "targetPort": SPARK_BLOCK_MANAGER_PORT,
                 "protocol": "TCP"},
                {"name": "spark-ui", "port": SPARK_UI_PORT, "targetPort": SPARK_UI_PORT, "protocol": "TCP"},
            ],
        },
    }


# What a Spark driver does with the API in client mode: create, watch and delete its executor pods, the
# ConfigMap holding their configuration, and (only with OnDemand volumes) their PVCs.
#
# The limit, plainly: RBAC cannot scope a rule to a label, and create/list/watch cannot be scoped to
# resource names. So this per-user Role lets a user's session list, read and delete *every* pod, ConfigMap
# and PVC in the namespace, including other users' notebook pods (whose specs carry their environment)
# and the hub. Per-user accounts give per-user audit and revocation, not isolation. For mutually untrusted
# users run KubeSpawner with `enable_user_namespaces` (one namespace per user), or leave spark_mode at
# standalone, which gives user pods no API access at all. docs/kubernetes.md says the same.
SPARK_DRIVER_RULES = (
    {"apiGroups": [""], "resources": ["pods"],
     "verbs": ["get", "list", "watch", "create", "delete", "deletecollection"]},
    {"apiGroups": [""], "resources": ["services", "configmaps", "persistentvolumeclaims"],
     "verbs": ["get", "list", "watch", "create", "delete", "deletecollection"]},
)


def spark_service_account(names: Names, labels: Mapping[str, str] = {}) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(names.service_account, names, labels),
    }


def spark_role(names: Names, labels: Mapping[str, str] = {}) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(names.service_account, names, labels),
        "rules": [dict(r) for r in SPARK_DRIVER_RULES],
    }


def spark_role_binding(names: Names, labels: Mapping[str, str] = {}) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(names.service_account, names, labels),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.service_account},
        "subjects": [{"kind": "ServiceAccount", "name": names.service_account, "namespace": names.namespace}],
    }


def spark_objects(plan: LaunchPlan, cfg: Mapping[str, Any], names: Names, labels: Mapping[str, str] = {}) -> list[dict]:
    """What a server needs besides its pod, in creation order: the driver Service when executors run outside
    the pod (an external master, or ``spark_mode: kubernetes``), and in ``spark_mode: kubernetes`` the
    ServiceAccount, Role and RoleBinding its session uses. A server with its own cluster needs none."""
    if not ("SPARK_MASTER" in plan.env and spark_mode(cfg)) or own_spark_cluster(cfg):
        return []
    objs = []
    if spark_mode(cfg) == "kubernetes":
        objs += [spark_service_account(names, labels), spark_role(names, labels), spark_role_binding(names, labels)]
    return objs + [spark_driver_service(names, labels)]


def executor_selector(names: Names) -> str:
    """Label selector for this server's executor pods (``spark-role`` is set by Spark itself)."""
    return f"spark-role=executor,{SERVER_LABEL}={names.pod}"


# -- a server's own Spark cluster (spark_mode standalone) ----------------------------------------------
#
# Spark standalone has one spark.authenticate secret per cluster: on a cluster shared by many users, whoever may
# submit holds the key to everyone's drivers, executors and block managers, and every executor runs as the
# worker's account. So each Spark server's pod runs a master and one worker of its own, as the notebook user,
# inside the pod's limits, with the secret and UI key of the server's ``spark`` grant (in the pod's Secret, from
# which the scratch init container writes $SPARK_CONF_DIR/spark-defaults.conf, which all three JVMs read).

SPARK_MASTER_CONTAINER = "spark-master"
SPARK_WORKER_CONTAINER = "spark-worker"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# Small daemon JVMs: about 180 MB RSS each with these (pyspark 4.3, Java 17).
DAEMON_HEAP = "128m"
DAEMON_JAVA_OPTS = ("-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k -XX:ReservedCodeCacheSize=32m "
                    "-XX:MaxMetaspaceSize=96m")
DAEMON_MEMORY = 256 * 2**20  # a daemon's container: heap, metaspace, code cache, threads
# The master only schedules; its JVM's start (about 2 CPU-seconds) is what a small share slows (docs/kubernetes.md).
MASTER_CPU = 0.25
# What the notebook container must keep besides the driver's JVM (Jupyter, the kernel).
NOTEBOOK_MIN_CPU = 0.25
NOTEBOOK_MIN_MEMORY = 256 * 2**20


def _jvm_overhead(heap: int) -> int:
    # Spark's own default for a JVM's memory beyond its heap (spark.executor.memoryOverhead): 10%, 384 MiB at least.
    return max(384 * 2**20, heap // 10)


def spark_sidecar_resources(plan: LaunchPlan, cfg: Mapping[str, Any]) -> dict[str, tuple[float, int]]:
    """container -> (CPU, memory bytes) of the server's own master and worker; {} without them. The worker's
    container also holds its executor (``spark.executor_memory`` of heap, its overhead and Python workers), so
    the user's Spark work is bounded by that container's limits, and its CPU by ``spark.cores_per_user``."""
    if not has_own_spark_cluster(plan, cfg):
        return {}
    spark = cfg["spark"]
    executor = parse_size(spark["executor_memory"])
    return {
        SPARK_MASTER_CONTAINER: (MASTER_CPU, DAEMON_MEMORY),
        SPARK_WORKER_CONTAINER: (float(spark["cores_per_user"]), DAEMON_MEMORY + executor + _jvm_overhead(executor)),
    }


def _port_open(port: int) -> dict:
    # An exec probe, in the pod's network namespace: the daemons listen on its loopback, which the kubelet's
    # tcpSocket probe (to the pod IP) cannot see.
    return {"exec": {"command": ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]}}


def spark_sidecars(plan: LaunchPlan, cfg: Mapping[str, Any], uid: int, gid: int) -> list[dict]:
    """The server's own Spark master and worker as native sidecars (init containers with ``restartPolicy:
    Always``), after the scratch init container (which writes their spark-defaults.conf): the master, whose
    startupProbe holds back the next container until its port is open; then the worker, registered with it at
    once; then the notebook. Same image and user as the notebook, loopback only, work, log and local dirs on
    the scratch volume. [] for a server without its own cluster."""
    share = spark_sidecar_resources(plan, cfg)
    if not share:
        return []
    spark = cfg["spark"]
    mount = {"name": SCRATCH_VOLUME, "mountPath": cfg["scratch"]["kubernetes"]["mount_path"]}
    spark_dir = f"{plan.scratch_dir}/spark"
    env = {
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_CONF_DIR": plan.env.get("SPARK_CONF_DIR") or spark_conf_dir(Placement(scratch_dir=plan.scratch_dir)),
        "SPARK_LOG_DIR": f"{spark_dir}/logs",
        "SPARK_WORKER_DIR": f"{spark_dir}/work",
        "SPARK_LOCAL_DIRS": f"{spark_dir}/local",
        "SPARK_DAEMON_MEMORY": DAEMON_HEAP,
        "SPARK_DAEMON_JAVA_OPTS": DAEMON_JAVA_OPTS,
        "TMPDIR": plan.env.get("TMPDIR") or f"{plan.scratch_dir}/tmp",  # the executors' Python workers
    }

    def daemon(name: str, args: list[str], extra: Mapping[str, str] = {}) -> dict:
        cpu, memory = share[name]
        amount = {"cpu": _cpu(cpu), "memory": str(memory)}
        return {
            "name": name,
            "image": plan.image,
            "imagePullPolicy": "IfNotPresent",
            "restartPolicy": "Always",
            # tini reaps what the worker's executors leave (their Python workers); spark-class execs the JVM.
            "command": ["tini", "-g", "--", "spark-class", *(_template_escape(a) for a in args)],
            "env": [{"name": k, "value": _template_escape(v)} for k, v in sorted({**env, **extra}.items())],
            "workingDir": _template_escape(spark_dir),
            "securityContext": {"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": uid != 0,
                                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "resources": {"requests": dict(amount), "limits": dict(amount)},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [mount],
        }

    master = daemon(SPARK_MASTER_CONTAINER, [MASTER_CLASS, "--host", "127.0.0.1", "--port", str(SPARK_MASTER_PORT),
                                             "--webui-port", str(SPARK_MASTER_UI_PORT)],
                    # No REST submission server (port 6066): it takes no spark.authenticate secret.
                    {"SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"})
    # Started only once this passes, so the worker registers at its first try (a refused one waits 5-15 s).
    master["startupProbe"] = {**_port_open(SPARK_MASTER_PORT), "periodSeconds": 1, "failureThreshold": 120,
                              "timeoutSeconds": 2}
    worker = daemon(SPARK_WORKER_CONTAINER, [
        WORKER_CLASS, "--host", "127.0.0.1", "--cores", str(spark["cores_per_user"]),
        "--memory", spark_size(spark["executor_memory"]), "--webui-port", str(SPARK_WORKER_UI_PORT),
        OWN_SPARK_MASTER])
    return [master, worker]


# -- courses -------------------------------------------------------------------------------------------

# Course datasets on Kubernetes: one PersistentVolumeClaim (ReadWriteMany or ReadOnlyMany: CephFS, NFS) with a
# folder per dataset; each of the user's datasets is mounted (subPath) under DATASETS_ROOT, read-only for
# participants and read-write for instructors, and linked as ~/<course>/data/<dataset> as in embedded mode.
DATASETS_ROOT = "/srv/esker-datasets"
DATASETS_VOLUME = "esker-datasets"
COURSE_MERGE = ["python", "-m", "esker_client.course_merge", "merge"]


def _template_escape(value: str) -> str:
    # KubeSpawner formats init containers as templates ({username}); Kubernetes expands $(VAR) in commands.
    return _k8s_escape(value).replace("{", "{{").replace("}", "}}")


def course_init_container(course, image: str, home: str, home_mounts: list, uid: int, gid: int,
                          datasets: bool = True) -> dict | None:
    """An init container that brings ``course`` into ``<home>/<course>/`` before the notebook starts, with the
    embedded mode's rules (``esker_client.course_merge``, installed in every image), as the notebook user, on
    the home volume (``home_mounts``: the pod's mounts of it, as KubeSpawner templates). Content comes from
    ``content.git`` (shallow clone in the init container; an unreachable remote leaves the files as they
    are and the server starts). ``content.path`` is a folder on the hub machine, which pods cannot see: it is
    not delivered on Kubernetes. ``datasets``: link each dataset as ``data/<name>``. None when there is nothing
    to do."""
    dest = f"{home.rstrip('/')}/{course.name}"
    content = course.content or {}
    links = [f"data/{d}={DATASETS_ROOT}/{d}" for d in course.datasets] if datasets else []
    if content.get("git"):
        args = [content.get("subdir") or ".", dest, "--git", content["git"], "--ref", content.get("ref") or "HEAD"]
    elif links:
        args = ["", dest]
    else:
        return None
    for link in links:
        args += ["--link", link]
    return {
        "name": _fit(f"course-{course.name}", 63),
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [*COURSE_MERGE, *(_template_escape(a) for a in args), "--keep-going"],
        "env": [{"name": "HOME", "value": _template_escape(home)}],
        "workingDir": "/tmp",
        "securityContext": {"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "volumeMounts": [dict(m) for m in home_mounts],
    }


def course_datasets(courses, claim: str, writable: set[str] | frozenset = frozenset()) -> tuple[dict | None, list]:
    """The datasets volume (the PVC ``claim``) and one mount per dataset of ``courses`` at
    ``DATASETS_ROOT/<name>`` (subPath ``<name>``): read-only, but for the datasets in ``writable`` (the courses
    the user teaches). (None, []) when there are none or no claim is configured."""
    names = sorted({d for c in courses for d in c.datasets})
    if not claim or not names:
        return None, []
    mounts = [{"name": DATASETS_VOLUME, "mountPath": f"{DATASETS_ROOT}/{d}", "subPath": d,
               "readOnly": d not in writable} for d in names]
    volume = {"name": DATASETS_VOLUME,
              "persistentVolumeClaim": {"claimName": claim, "readOnly": not any(d in writable for d in names)}}
    return volume, mounts


# -- the chart -----------------------------------------------------------------------------------------


def prepull_images(catalog: Catalog) -> list[str]:
    """Every image a server can start (Spark executors use the profile's image too)."""
    return catalog.images()


def _split_image(image: str) -> tuple[str, str]:
    name, _, digest = image.partition("@")
    if digest:
        return name, f"@{digest}"  # not expressible as z2jh name/tag; caught by prepuller_extra_images
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = name.rsplit(":", 1)
        return repo, tag
    return name, "latest"


def prepuller_extra_images(catalog: Catalog) -> dict[str, dict[str, str]]:
    """The z2jh ``prePuller.extraImages`` value for the catalog: the chart's pre-puller cannot see a
    profile list built in Python, so the images are listed here, derived, never typed."""
    out: dict[str, dict[str, str]] = {}
    for image in prepull_images(catalog):
        repo, tag = _split_image(image)
        if tag.startswith("@"):
            raise ValueError(f"{image}: z2jh's prePuller takes name:tag, not a digest")
        key = _fit("esker-" + repo.rsplit("/", 1)[-1].lower(), 63)
        while key in out:
            key = _fit(key + "-x", 63)
        out[key] = {"name": repo, "tag": tag}
    return out
