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


HOSTPATH = {"storage_class": None, "host_path_root": "/mnt/esker-scratch", "mount_path": "/scratch"}
EPHEMERAL = {"storage_class": "topolvm-nvme", "mount_path": "/scratch"}


def scratch_pod(cfg, plan, uid=1000, gid=100):
    """A notebook pod with the scratch volume, its init container and (Spark) the sidecars, as the spawner
    assembles it."""
    volume, mount = ko.scratch_volume(plan, cfg, NAMES)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": NAMES.pod, "namespace": NAMES.namespace, "labels": ko.server_labels(NAMES)},
            "spec": {"securityContext": {"runAsUser": uid, "runAsGroup": gid, "fsGroup": gid},
                     "initContainers": [ko.scratch_init_container(plan, cfg, uid, gid),
                                        *ko.spark_sidecars(plan, cfg, uid, gid)],
                     "containers": [{"name": "notebook", "image": plan.image, "env": ko.container_env(plan),
                                     "volumeMounts": [mount]}],
                     "volumes": [volume]}}


@pytest.mark.parametrize("scratch", [HOSTPATH, EPHEMERAL], ids=["hostPath", "ephemeral"])
def test_scratch_init_container_is_valid_and_prepares_what_the_plan_points_at(scratch):
    import kubernetes_validate

    cfg = config(scratch={"kubernetes": scratch})
    plan = plan_for(cfg, "spark")
    pod = scratch_pod(cfg, plan)
    for version in ("1.32.0", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(pod, version, strict=True)
    init, *sidecars = pod["spec"]["initContainers"]
    assert [c["name"] for c in sidecars] == ["spark-master", "spark-worker"]
    (mount,) = pod["spec"]["containers"][0]["volumeMounts"]
    assert init["volumeMounts"] == [mount]  # the same volume, at the same path
    assert init["image"] == plan.image  # pre-pulled on every node
    # TMPDIR and spark.local.dir are the subfolders the container makes.
    made = {f"{mount['mountPath']}/{d}" for d in ko.SCRATCH_SUBDIRS}
    assert plan.env["TMPDIR"] in made
    assert f"spark.local.dir={mount['mountPath']}/spark" in plan.env["PYSPARK_SUBMIT_ARGS"]
    assert mount["mountPath"] in init["command"]
    sec = init["securityContext"]
    assert sec["allowPrivilegeEscalation"] is False and "ALL" in sec["capabilities"]["drop"]
    if scratch is HOSTPATH:
        # fsGroup does not apply to hostPath: root, with exactly what chown and chmod of the user's folder need.
        assert sec["runAsUser"] == 0 and sorted(sec["capabilities"]["add"]) == ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
        assert init["command"][-1] == "1000:100"
        assert pod["spec"]["volumes"][0]["hostPath"]["type"] == "DirectoryOrCreate"
    else:
        # The volume is the user's through fsGroup: the container runs as the user, with nothing extra.
        assert (sec["runAsUser"], sec["runAsGroup"], sec["runAsNonRoot"]) == (1000, 100, True)
        assert "add" not in sec["capabilities"]
    # KubeSpawner formats init containers as templates, Kubernetes expands $(VAR): neither may touch the script.
    assert not any(c in "".join(init["command"]) for c in "{}") and "$(" not in "".join(init["command"])


def test_scratch_init_container_escapes_a_templated_mount_path():
    cfg = config(scratch={"kubernetes": {**HOSTPATH, "mount_path": "/scratch/{x}$(HOME)"}})
    init = ko.scratch_init_container(plan_for(cfg, "minimal"), cfg, 1000, 100)
    assert init["command"][-2] == "/scratch/{{x}}$$(HOME)"
    assert init["volumeMounts"][0]["mountPath"] == "/scratch/{x}$(HOME)"  # KubeSpawner escapes mounts itself


def _run_init(init, *prefix):
    import subprocess

    return subprocess.run([*prefix, *init["command"]], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


ROOT_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER"]


def _as_root_with(caps):
    """setpriv prefix: root with only ``caps`` (as a container with capabilities drop ALL, add caps)."""
    bounding = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    return ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--"]


def _needs_root_and_setpriv():
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("runs the init container's command as root and as another user (needs root and setpriv)")


def test_hostpath_init_command_gives_the_folder_to_the_user_with_only_its_capabilities(tmp_path):
    import os
    import stat
    import tempfile

    _needs_root_and_setpriv()
    base = tempfile.mkdtemp(dir="/tmp", prefix="esker-scratch-test-")
    try:
        os.chmod(base, 0o755)
        scratch = os.path.join(base, "alice")
        os.mkdir(scratch, 0o755)  # what the kubelet's DirectoryOrCreate leaves: root's, 0755
        cfg = config(scratch={"kubernetes": {**HOSTPATH, "mount_path": scratch}})
        init = ko.scratch_init_container(plan_for(cfg, "spark"), cfg, 1000, 100)
        caps = init["securityContext"]["capabilities"]["add"]
        r = _run_init(init, *_as_root_with(caps))
        assert r.returncode == 0, r.stderr
        for p in (scratch, *(os.path.join(scratch, d) for d in ko.SCRATCH_SUBDIRS)):
            st = os.lstat(p)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 100, 0o700), p
        # The notebook user can now use TMPDIR.
        user = ["setpriv", "--reuid=1000", "--regid=100", "--clear-groups", "--"]
        w = _run_init({"command": ["sh", "-c", 'echo x > "$1/tmp/f" && mkdir "$1/spark/blockmgr"', "t", scratch]},
                      *user)
        assert w.returncode == 0, w.stderr
        # The next start finds the folder as the user left it (0700, theirs): still fine...
        r = _run_init(init, *_as_root_with(caps))
        assert r.returncode == 0, r.stderr
        assert os.path.exists(os.path.join(scratch, "tmp", "f"))
        # ...and each capability is needed there: without one, the container fails (and the pod does not start).
        for missing in ROOT_CAPS:
            r = _run_init(init, *_as_root_with([c for c in caps if c != missing]))
            assert r.returncode != 0, f"works without {missing}: drop it"
    finally:
        import shutil

        shutil.rmtree(base)


def test_ephemeral_init_command_runs_as_the_user_on_an_fsgroup_volume():
    import os
    import shutil
    import stat
    import tempfile

    _needs_root_and_setpriv()
    base = tempfile.mkdtemp(dir="/tmp", prefix="esker-scratch-test-")
    try:
        os.chmod(base, 0o755)
        scratch = os.path.join(base, "volume")
        os.mkdir(scratch)
        os.chown(scratch, 0, 100)
        os.chmod(scratch, 0o2775)  # what fsGroup: 100 makes of a fresh volume's root
        cfg = config(scratch={"kubernetes": {**EPHEMERAL, "mount_path": scratch}})
        init = ko.scratch_init_container(plan_for(cfg, "spark"), cfg, 1000, 100)
        sec = init["securityContext"]
        as_user = ["setpriv", f"--reuid={sec['runAsUser']}", f"--regid={sec['runAsGroup']}", "--groups=100", "--"]
        r = _run_init(init, *as_user)
        assert r.returncode == 0, r.stderr
        for d in ko.SCRATCH_SUBDIRS:
            st = os.lstat(os.path.join(scratch, d))
            # (the setgid bit of fsGroup's volume root is inherited, as on a real volume)
            assert st.st_uid == 1000 and stat.S_IMODE(st.st_mode) & 0o777 == 0o700
        assert _run_init(init, *as_user).returncode == 0  # again, on the next start of the same pod
        # Without an fsGroup the volume is root's: the pod does not start, and the log says why.
        os.chown(scratch, 0, 0)
        os.chmod(scratch, 0o755)
        shutil.rmtree(os.path.join(scratch, "tmp"))
        r = _run_init(init, *as_user)
        assert r.returncode != 0 and "fsGroup" in r.stderr
    finally:
        shutil.rmtree(base)


def test_ephemeral_pvc_is_what_kubernetes_derives():
    cfg = config(scratch={"kubernetes": {"storage_class": "local-nvme"}})
    volume, _ = ko.scratch_volume(plan_for(cfg, "minimal"), cfg, NAMES)
    pod = {"metadata": {"name": "jupyter-alice", "namespace": "esker"}, "spec": {"volumes": [volume, {"name": "x", "emptyDir": {}}]}}
    (pvc,) = ko.ephemeral_pvcs(pod)
    assert pvc["metadata"]["name"] == "jupyter-alice-esker-scratch"
    assert pvc["metadata"]["ownerReferences"][0]["name"] == "jupyter-alice"
    assert pvc["spec"]["storageClassName"] == "local-nvme"


GRANT = {"master": ko.OWN_SPARK_MASTER, "secret": "rpc-s3cret-Alice", "ui_key": "ui-Key_alice-0123456789abcdef"}


def own_plan(cfg, slug="spark", grant=GRANT, **opts):
    sel = select(Catalog.from_config(cfg), GPU_USER, {"profile": slug, **opts})
    placement = ko.kubernetes_placement(sel, cfg, {"spark": grant} if grant else None)
    return build_plan(sel, placement, ko.kubernetes_site(cfg, NAMES, sel.image))


def test_standalone_spark_is_a_cluster_of_the_pods_own_on_its_loopback():
    cfg = config()
    plan = own_plan(cfg)
    assert plan.env["SPARK_MASTER"] == "spark://127.0.0.1:7077" == ko.OWN_SPARK_MASTER
    args = plan.env["PYSPARK_SUBMIT_ARGS"]
    # The executors are the pod's own worker's: the driver listens on loopback only, and needs no Service.
    assert "spark.driver.host=127.0.0.1" in args and "spark.driver.bindAddress=127.0.0.1" in args
    assert "spark.cores.max" not in args and "spark.kubernetes" not in args  # the worker offers only the share
    assert ko.spark_objects(plan, cfg, NAMES) == []
    # The grant's keys reach Spark through spark-defaults.conf (the server's Secret), never the environment.
    (path, text), = plan.files.items()
    assert path == f"{plan.env['SPARK_CONF_DIR']}/spark-defaults.conf"
    assert "spark.authenticate true\n" in text and f"spark.authenticate.secret {GRANT['secret']}\n" in text
    assert f"spark.org.apache.spark.ui.JWSFilter.param.secretKey {GRANT['ui_key']}\n" in text
    assert not any(GRANT["secret"] in v or GRANT["ui_key"] in v for v in plan.env.values())
    assert ko.server_secret_data(plan) == {"ESKER_PRIVATE_FILE_0": text}
    # Profiles without Spark get nothing.
    minimal = own_plan(cfg, "minimal")
    assert ko.spark_objects(minimal, cfg, NAMES) == [] and ko.spark_sidecars(minimal, cfg, 1000, 100) == []


def test_an_external_master_keeps_the_driver_service_and_gets_no_sidecars():
    cfg = config(spark={"master_url": "spark://spark.example:7077"})
    plan = own_plan(cfg, grant=None)
    assert plan.env["SPARK_MASTER"] == "spark://spark.example:7077"
    args = plan.env["PYSPARK_SUBMIT_ARGS"]
    assert "spark.driver.host=jupyter-alice-spark.esker.svc" in args and "spark.cores.max=1" in args
    assert f"spark.driver.port={ko.SPARK_DRIVER_PORT}" in args
    assert [o["kind"] for o in ko.spark_objects(plan, cfg, NAMES)] == ["Service"]
    assert ko.spark_sidecars(plan, cfg, 1000, 100) == [] and ko.spark_sidecar_resources(plan, cfg) == {}
    assert ko.notebook_share(plan, cfg) == (plan.cpu_limit, plan.mem_limit)


@pytest.mark.parametrize("scratch", ["hostPath", "ephemeral"])
def test_spark_sidecars_are_the_users_own_master_and_worker(scratch):
    cfg = config(scratch={"kubernetes": HOSTPATH if scratch == "hostPath" else EPHEMERAL},
                 spark={"cores_per_user": 3, "executor_memory": "2G"})
    plan = own_plan(cfg)
    master, worker = ko.spark_sidecars(plan, cfg, 1234, 567)
    assert [master["name"], worker["name"]] == ["spark-master", "spark-worker"]
    for c in (master, worker):
        assert c["restartPolicy"] == "Always"  # a native sidecar: runs beside the notebook, stops with the pod
        assert c["image"] == plan.image and c["command"][:4] == ["tini", "-g", "--", "spark-class"]
        sec = c["securityContext"]
        assert (sec["runAsUser"], sec["runAsGroup"], sec["runAsNonRoot"]) == (1234, 567, True)
        assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"] == {"drop": ["ALL"]}
        assert "ports" not in c  # loopback only: nothing to name, nothing a Service could select
        env = {e["name"]: e["value"] for e in c["env"]}
        assert all(set(e) == {"name", "value"} for e in c["env"])  # no secret among them
        assert env["SPARK_CONF_DIR"] == plan.env["SPARK_CONF_DIR"]  # the file the scratch init container writes
        assert env["SPARK_LOCAL_IP"] == "127.0.0.1" and env["SPARK_NO_DAEMONIZE"] == "1"
        assert env["SPARK_DAEMON_MEMORY"] == "128m" and "-XX:+UseSerialGC" in env["SPARK_DAEMON_JAVA_OPTS"]
        for var in ("SPARK_WORKER_DIR", "SPARK_LOG_DIR", "SPARK_LOCAL_DIRS", "TMPDIR"):
            assert env[var].startswith(f"{plan.scratch_dir}/"), var  # the user's scratch, sized and wiped with it
        assert c["volumeMounts"] == [ko.scratch_volume(plan, cfg, NAMES)[1]]
        text = yaml.safe_dump(c)
        assert GRANT["secret"] not in text and GRANT["ui_key"] not in text
    assert {e["name"]: e["value"] for e in master["env"]}["SPARK_MASTER_OPTS"] == "-Dspark.master.rest.enabled=false"
    assert master["command"][4:] == [ko.MASTER_CLASS, "--host", "127.0.0.1", "--port", "7077", "--webui-port", "8080"]
    assert worker["command"][4:] == [ko.WORKER_CLASS, "--host", "127.0.0.1", "--cores", "3", "--memory", "2048m",
                                     "--webui-port", "8081", "spark://127.0.0.1:7077"]
    # The master holds back the worker (and the notebook) until its port is open on the pod's loopback.
    assert master["startupProbe"]["exec"]["command"] == ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7077"]
    assert "startupProbe" not in worker


def test_the_pod_holds_exactly_what_the_profile_promises():
    cfg = config(spark={"cores_per_user": 1, "executor_memory": "1G", "driver_memory": "1G"})
    plan = own_plan(cfg)  # spark: 2 CPUs, 4G
    share = ko.spark_sidecar_resources(plan, cfg)
    cpu, memory = ko.notebook_share(plan, cfg)
    Mi = 2**20
    assert share == {"spark-master": (0.25, 256 * Mi), "spark-worker": (1.0, (256 + 1024 + 384) * Mi)}
    assert (cpu, memory) == (0.75, 4096 * Mi - 256 * Mi - 1664 * Mi)
    assert cpu + sum(c for c, _ in share.values()) == plan.cpu_limit
    assert memory + sum(m for _, m in share.values()) == plan.mem_limit
    for c in ko.spark_sidecars(plan, cfg, 1000, 100):
        assert c["resources"]["requests"] == c["resources"]["limits"] == {
            "cpu": ko._cpu(share[c["name"]][0]), "memory": str(share[c["name"]][1])}
    # A profile too small for its own cluster and a driver is refused, saying what does not fit.
    small = config(spark={"cores_per_user": 2})
    with pytest.raises(ValueError, match="profile spark: cpu_limit 2 .* spark.cores_per_user 2"):
        ko.notebook_share(own_plan(small), small)
    big = config(spark={"executor_memory": "3G"})
    with pytest.raises(ValueError, match="mem_limit"):
        ko.notebook_share(own_plan(big), big)


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
