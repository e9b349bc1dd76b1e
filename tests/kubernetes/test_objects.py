"""The pure Kubernetes builders, checked as data."""

from __future__ import annotations

import copy

import pytest
import yaml

from esker.core.config import validate
from esker.resources import SHIPPED_CONFIG as DEFAULT_CONFIG
from esker.spawner import k8s_objects as ko
from esker.core.catalog import Catalog, UserInfo
from esker.core.plan import build_plan, select

pytestmark = pytest.mark.kubernetes

NAMES = ko.Names(namespace="esker", pod="jupyter-alice", user_slug="alice")
GPU_USER = UserInfo("alice", frozenset({"gpu-users"}))


def config(**sections):
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data.setdefault("gpus", {}).setdefault("types", {})["h100"] = {
        "display_name": "H100",
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "esker.io/h100", "operator": "Exists", "effect": "NoSchedule"}],
    }
    tf = next(p for p in data["profiles"] if p["slug"] == "tensorflow")
    tf["gpu_type"] = "a100"
    tf["options"]["gpus"]["choices"]["h100"] = {
        "display_name": "1 H100", "groups": ["gpu-users"], "override": {"gpus": 1, "gpu_type": "h100"}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return validate(data).data


def plan_for(cfg, slug, user=GPU_USER, names=NAMES, **opts):
    sel = select(Catalog.from_config(cfg), user, {"profile": slug, **opts})
    return build_plan(sel, ko.kubernetes_placement(sel, cfg), ko.kubernetes_site(cfg, names, sel.image))


def test_container_env_is_the_plan_env_sorted():
    plan = plan_for(config(), "tensorflow", gpus="2")
    env = ko.container_env(plan)
    assert [e["name"] for e in env] == sorted(plan.env)
    assert {e["name"]: e["value"] for e in env} == dict(plan.env)
    assert all(set(e) == {"name", "value"} for e in env)


def test_env_escaping_round_trips_through_kubespawner_templates_and_kubernetes():
    from dataclasses import replace
    from types import MappingProxyType

    plan = plan_for(config(), "minimal")
    plan = replace(plan, env=MappingProxyType({**plan.env, "X": "a{username}$(HOME)b"}))
    assert {e["name"]: e["value"] for e in ko.container_env(plan)}["X"] == "a{username}$$(HOME)b"
    assert ko.kubespawner_environment(plan)["X"].format(username="bob") == "a{username}$$(HOME)b"


def test_resources_cpu_memory_and_gpu_resource_name():
    cfg = config(gpus={"resource_name": "amd.com/gpu"})
    plan = plan_for(cfg, "tensorflow", gpus="2")
    assert ko.resources(plan, cfg) == {
        "requests": {"cpu": "2", "memory": str(8 * 1024**3)},
        "limits": {"cpu": "2", "memory": str(8 * 1024**3), "amd.com/gpu": "2"},
    }
    cpu_only = plan_for(cfg, "tensorflow", gpus="0")
    assert "amd.com/gpu" not in ko.resources(cpu_only, cfg)["limits"]
    assert ko._cpu(0.5) == "500m" and ko._cpu(1.25) == "1250m"


def test_gpu_type_gives_its_own_selector_and_only_its_tolerations():
    cfg = config()
    a100 = ko.gpu_scheduling(plan_for(cfg, "tensorflow", gpus="1"), cfg)
    assert a100 == {
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    h100 = ko.gpu_scheduling(plan_for(cfg, "tensorflow", gpus="h100"), cfg)
    assert h100["node_selector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert h100["tolerations"] == [{"key": "esker.io/h100", "operator": "Exists", "effect": "NoSchedule"}]
    # A CPU-only choice of a typed GPU profile stays off GPU nodes.
    assert ko.gpu_scheduling(plan_for(cfg, "tensorflow", gpus="0"), cfg) == {"node_selector": {}, "tolerations": []}


def test_scratch_is_a_generic_ephemeral_volume_on_the_storage_class():
    cfg = config(scratch={"kubernetes": {"storage_class": "topolvm-nvme", "mount_path": "/scratch"}})
    plan = plan_for(cfg, "spark")
    volume, mount = ko.scratch_volume(plan, cfg, NAMES)
    assert mount == {"name": "esker-scratch", "mountPath": "/scratch"}
    spec = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert spec["storageClassName"] == "topolvm-nvme"
    assert spec["resources"]["requests"]["storage"] == str(20 * 1024**3)
    assert "hostPath" not in volume
    assert plan.env["SCRATCH_DIR"] == "/scratch" and plan.env["TMPDIR"] == "/scratch/tmp"


def test_scratch_hostpath_mode_is_one_directory_per_user():
    cfg = config(scratch={"kubernetes": {"storage_class": None, "host_path_root": "/mnt/nvme/", "mount_path": "/tmp/s"}})
    names = ko.Names("esker", "jupyter-bob-smith---1234abcd", "bob-smith---1234abcd")
    volume, mount = ko.scratch_volume(plan_for(cfg, "minimal", names=names), cfg, names)
    assert volume == {"name": "esker-scratch",
                      "hostPath": {"path": "/mnt/nvme/bob-smith---1234abcd", "type": "DirectoryOrCreate"}}
    assert mount["mountPath"] == "/tmp/s"


def test_ephemeral_pvc_is_what_kubernetes_derives():
    cfg = config(scratch={"kubernetes": {"storage_class": "local-nvme"}})
    volume, _ = ko.scratch_volume(plan_for(cfg, "minimal"), cfg, NAMES)
    pod = {"metadata": {"name": "jupyter-alice", "namespace": "esker"}, "spec": {"volumes": [volume, {"name": "x", "emptyDir": {}}]}}
    (pvc,) = ko.ephemeral_pvcs(pod)
    assert pvc["metadata"]["name"] == "jupyter-alice-esker-scratch"
    assert pvc["metadata"]["ownerReferences"][0]["name"] == "jupyter-alice"
    assert pvc["spec"]["storageClassName"] == "local-nvme"


def test_standalone_spark_on_kubernetes_uses_the_chart_master_and_a_driver_service():
    cfg = config()
    plan = plan_for(cfg, "spark")
    assert plan.env["SPARK_MASTER"] == "spark://esker-spark-master:7077"
    args = plan.env["PYSPARK_SUBMIT_ARGS"]
    assert "spark.driver.host=jupyter-alice-spark.esker.svc" in args
    assert f"spark.driver.port={ko.SPARK_DRIVER_PORT}" in args
    assert "spark.kubernetes" not in args
    assert [o["kind"] for o in ko.spark_objects(plan, cfg, NAMES)] == ["Service"]
    # Profiles without Spark get nothing.
    assert ko.spark_objects(plan_for(cfg, "minimal"), cfg, NAMES) == []


def test_kubernetes_spark_mode_conf():
    cfg = config(kubernetes={"spark_mode": "kubernetes"}, spark={"cores_per_user": 4})
    plan = plan_for(cfg, "spark")
    assert plan.env["SPARK_MASTER"] == "k8s://https://kubernetes.default.svc"
    conf = ko.kubernetes_site(cfg, NAMES, "img:1").spark.extra_conf
    assert conf["spark.kubernetes.container.image"] == "img:1"
    assert conf["spark.kubernetes.driver.pod.name"] == "jupyter-alice"
    assert conf["spark.kubernetes.namespace"] == "esker"
    assert conf["spark.kubernetes.executor.label.esker.io/server"] == "jupyter-alice"
    assert conf["spark.kubernetes.executor.label.esker.io/user"] == "alice"
    assert conf["spark.dynamicAllocation.maxExecutors"] == "4"
    args = plan.env["PYSPARK_SUBMIT_ARGS"]
    assert "spark.kubernetes.container.image=quay.io/esker/spark-notebook:2026.11" in args
    assert "spark.driver.host=jupyter-alice-spark.esker.svc" in args


def test_spark_rbac_objects_are_namespaced_and_bound_to_the_users_account():
    cfg = config(kubernetes={"spark_mode": "kubernetes"})
    objs = ko.spark_objects(plan_for(cfg, "spark"), cfg, NAMES, {"app": "jupyterhub"})
    sa, role, binding, svc = objs
    assert [o["kind"] for o in objs] == ["ServiceAccount", "Role", "RoleBinding", "Service"]
    assert {o["metadata"]["namespace"] for o in objs} == {"esker"}
    assert all(o["metadata"]["labels"][ko.SERVER_LABEL] == "jupyter-alice" for o in objs)
    assert all(o["metadata"]["labels"]["app"] == "jupyterhub" for o in objs)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "esker"}]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {ko.SERVER_LABEL: "jupyter-alice"}
    assert {p["port"] for p in svc["spec"]["ports"]} >= {ko.SPARK_DRIVER_PORT, ko.SPARK_BLOCK_MANAGER_PORT}


def test_names_fit_kubernetes_limits():
    long = ko.Names("esker", "jupyter-" + "a" * 55, "a" * 48)
    assert len(long.driver_service) <= 63 and len(long.executor_prefix) <= 47
    assert long.driver_service != ko.Names("esker", "jupyter-" + "a" * 54 + "b", "x").driver_service
    assert ko.executor_selector(NAMES) == "spark-role=executor,esker.io/server=jupyter-alice"


def test_prepuller_extra_images_follow_the_catalog():
    cfg = config()
    data = copy.deepcopy(cfg)
    data["profiles"][1]["options"]["gpus"]["choices"]["2"]["override"]["image"] = "registry:5000/x/tf:nightly"
    images = ko.prepuller_extra_images(Catalog.from_config(data))
    assert images["esker-spark-notebook"] == {"name": "quay.io/esker/spark-notebook", "tag": "2026.11"}
    assert images["esker-tf"] == {"name": "registry:5000/x/tf", "tag": "nightly"}
    assert len(images) == 5
    data["profiles"][0]["image"] = "quay.io/x/y@sha256:abc"
    with pytest.raises(ValueError, match="digest"):
        ko.prepuller_extra_images(Catalog.from_config(data))
