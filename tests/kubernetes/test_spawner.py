"""EskerKubeSpawner with KubeSpawner's real pod builder, offline: every profile and choice, gating, forged
requests, the golden environment check, and the Spark lifecycle against a fake API."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
from types import MappingProxyType

import kubernetes_validate
import pytest
import yaml
from kubespawner import KubeSpawner
from tornado.web import HTTPError

from esker.cli import preview as cli_preview
from esker.resources import SHIPPED_CONFIG as DEFAULT_CONFIG
from esker.spawner import k8s_objects as ko
from esker.spawner import kubernetes as kube
from esker.core import config
from esker.core.catalog import Catalog, UserInfo
from esker.core.plan import Site, build_plan, select

pytestmark = pytest.mark.kubernetes

K8S_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]
HUB_OWNED = re.compile(r"^(JUPYTERHUB_|JPY_|JUPYTER_IMAGE|CPU_|MEM_)")


@pytest.fixture(scope="module", autouse=True)
def kubeconfig():
    with cli_preview.offline_kubeconfig():
        yield


def write_config(tmp_path, name="esker.yaml", **sections):
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    tf = next(p for p in data["profiles"] if p["slug"] == "tensorflow")
    tf["gpu_type"] = "a100"
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


CONFIGS = {
    "shipped": {},
    "nvme-k8s-spark": {"scratch": {"kubernetes": {"storage_class": "topolvm-nvme"}},
                       "kubernetes": {"spark_mode": "kubernetes", "namespace": "hub"}},
}


def manifests(config_file, user="alice", groups=("gpu-users",), admin=False, **opts):
    return asyncio.run(cli_preview.kubernetes_manifests(user, groups, admin, config_file, opts))


def manifests_and_grants(config_file, user="alice", groups=("gpu-users",), **opts):
    """What `esker preview` prints, and the grants it was built from (a Spark server's own cluster's keys)."""
    async def run():
        sp = spawner_for(config_file, user, groups, **opts)
        await sp.esker_offline_grants()
        return await sp.esker_manifests(), dict(sp._esker_grants)

    return asyncio.run(run())


def spawner_for(config_file, user="alice", groups=("gpu-users",), **opts):
    return cli_preview.make_spawner(user, groups, False, config_file, opts)


def combinations(catalog):
    for p in catalog.profiles:
        names = [o.name for o in p.options]
        for picks in itertools.product(*[[c.name for c in o.choices] for o in p.options]):
            yield {"profile": p.slug, **dict(zip(names, picks))}


def strict(obj):
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def pod_env(pod):
    """name -> value, or -> the valueFrom of a variable the pod reads from a Secret."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def expected_plan(config_file, opts, user="alice", groups=("gpu-users",), pod="jupyter-alice", slug="alice",
                  grants=None):
    cfg = config.load(config_file).data
    sel = select(Catalog.from_config(cfg), UserInfo(user, frozenset(groups)), opts)
    names = ko.Names(cfg["kubernetes"]["namespace"], pod, slug)
    return cfg, sel, build_plan(sel, ko.kubernetes_placement(sel, cfg, grants),
                                ko.kubernetes_site(cfg, names, sel.image))


def container_totals(pod):
    """CPU and memory of the pod's long-running containers (the notebook and the native sidecars)."""
    running = pod["spec"]["containers"] + [c for c in pod["spec"].get("initContainers") or []
                                           if c.get("restartPolicy") == "Always"]
    def cpu(q):
        q = str(q)
        return float(q[:-1]) / 1000 if q.endswith("m") else float(q)

    return (sum(cpu(c["resources"]["limits"]["cpu"]) for c in running),
            sum(int(c["resources"]["limits"]["memory"]) for c in running))


@pytest.mark.parametrize("variant", CONFIGS)
def test_every_profile_and_choice_gives_valid_manifests_with_the_plan_env(tmp_path, variant):
    config_file = write_config(tmp_path, **CONFIGS[variant])
    catalog = Catalog.from_config(config.load(config_file))
    seen = 0
    for opts in combinations(catalog):
        docs, grants = manifests_and_grants(config_file, **opts)
        for doc in docs:
            strict(doc)
        pod = docs[0]
        cfg, sel, plan = expected_plan(config_file, opts, grants=grants)
        # Golden: what the container is given is exactly build_plan's env, plus JupyterHub's own.
        env = pod_env(pod)
        assert {k: v for k, v in env.items() if not HUB_OWNED.match(k)} == dict(plan.env), opts
        assert not any(HUB_OWNED.match(k) for k in plan.env)
        # Resources, GPUs and scheduling.
        res = pod["spec"]["containers"][0]["resources"]
        want = ko.resources(plan, cfg)
        # The notebook and its Spark sidecars together hold exactly the profile's CPU and memory.
        assert container_totals(pod) == (float(want["limits"]["cpu"]), int(want["limits"]["memory"])) == \
            (sel.cpu_limit, sel.mem_limit)
        assert (float(res["limits"]["cpu"]), int(res["limits"]["memory"])) == ko.notebook_share(plan, cfg)
        assert {k: res["requests"][k] for k in ("cpu", "memory")} == {k: res["limits"][k] for k in ("cpu", "memory")}
        assert res["limits"].get("nvidia.com/gpu") == (str(sel.gpus) if sel.gpus else None)
        assert pod["spec"].get("nodeSelector") == (ko.gpu_scheduling(plan, cfg)["node_selector"] or None)
        assert (pod["spec"].get("tolerations") or []) == ko.gpu_scheduling(plan, cfg)["tolerations"]
        if sel.gpus:
            assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, range(sel.gpus)))
            assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}
        else:
            assert env["CUDA_VISIBLE_DEVICES"] == ""
        # Scratch.
        (vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == ko.SCRATCH_VOLUME]
        (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == ko.SCRATCH_VOLUME]
        assert mount["mountPath"] == env["SCRATCH_DIR"] == "/scratch"
        inits = pod["spec"]["initContainers"]
        assert inits[0] == ko.scratch_init_container(plan, cfg, 1000, 100, ko.Names("esker" if variant == "shipped"
                                                                                    else "hub", "jupyter-alice", "alice"))
        sidecars = [c for c in inits if c.get("restartPolicy") == "Always"]
        if variant == "shipped":
            assert vol["hostPath"] == {"path": "/mnt/esker-scratch/alice", "type": "DirectoryOrCreate"}
            # A Spark server's own master and worker; its Secret carries their keys; no Service, no RBAC.
            assert [d["kind"] for d in docs[1:]] == (["Secret"] if sel.profile.spark else [])
            assert [c["name"] for c in sidecars] == (["spark-master", "spark-worker"] if sel.profile.spark else [])
            assert sidecars == ko.spark_sidecars(plan, cfg, 1000, 100)
        else:
            spec = vol["ephemeral"]["volumeClaimTemplate"]["spec"]
            assert spec["storageClassName"] == "topolvm-nvme"
            assert spec["resources"]["requests"]["storage"] == str(sel.scratch_size)
            kinds = [d["kind"] for d in docs[1:]]
            assert kinds == ["PersistentVolumeClaim"] + (
                ["ServiceAccount", "Role", "RoleBinding", "Service"] if sel.profile.spark else [])
            assert pod["metadata"]["namespace"] == "hub"
            assert (pod["spec"].get("serviceAccountName") is not None) == sel.profile.spark
            assert sidecars == [] and "spark" not in grants  # executors are pods of their own
        seen += 1
    assert seen == 6  # spark, tensorflow x3, scikit-learn, minimal


def test_non_spark_pod_env_equals_the_embedded_plan_for_the_same_placement(tmp_path):
    config_file = write_config(tmp_path)
    for opts in ({"profile": "tensorflow", "gpus": "2"}, {"profile": "minimal"}, {"profile": "scikit-learn"}):
        cfg, sel, _ = expected_plan(config_file, opts)
        embedded = build_plan(sel, ko.kubernetes_placement(sel, cfg), Site(mode="embedded"))
        env = pod_env(manifests(config_file, **opts)[0])
        assert {k: v for k, v in env.items() if not HUB_OWNED.match(k)} == dict(embedded.env)


def test_env_reaches_the_process_byte_for_byte_even_with_braces_and_references(tmp_path):
    config_file = write_config(tmp_path)
    secret = "s3cr{username}t$(ESKER_PROFILE)/x}"
    grant = {"storage": {"endpoint": "http://rgw.ceph:80", "access_key": "AK", "secret_key": secret, "bucket": "b"}}

    async def run():
        sp = cli_preview.make_spawner("alice", (), False, config_file, {"profile": "minimal"})
        sp._esker_grants = MappingProxyType(grant)  # what esker_prepare sets from the services' grants
        return await sp.esker_manifests()

    pod, *others = asyncio.run(run())
    env = pod_env(pod)
    # Kubernetes expands $(VAR) from the container's env and turns $$ into $; do the same here.
    def k8s_expand(value):
        return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)

    # The key is in the server's Secret (no expansion applies to a secretKeyRef), not in the pod spec.
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "jupyter-alice-env", "key": "AWS_SECRET_ACCESS_KEY"}}
    (sec,) = [o for o in others if o["kind"] == "Secret"]
    assert base64.b64decode(sec["data"]["AWS_SECRET_ACCESS_KEY"]).decode() == secret
    assert k8s_expand(env["ESKER_PROFILE"]) == "minimal"
    assert env["AWS_ENDPOINT_URL"] == "http://rgw.ceph:80"


def test_profile_list_follows_groups(tmp_path):
    config_file = write_config(tmp_path)

    async def profiles(groups):
        sp = spawner_for(config_file, groups=groups)
        assert sp.profile_list is kube._profile_list  # KubeSpawner calls it with the spawner
        return {p["slug"]: p for p in sp.profile_list(sp)}

    mine = asyncio.run(profiles(()))
    assert list(mine["tensorflow"]["profile_options"]["gpus"]["choices"]) == ["0"]
    mine = asyncio.run(profiles(("gpu-users",)))
    assert list(mine["tensorflow"]["profile_options"]["gpus"]["choices"]) == ["0", "1", "2"]
    assert not any("kubespawner_override" in p for p in mine.values())


FORGED = [
    ({"profile": "tensorflow", "gpus": "1"}, (), 403),  # not in gpu-users
    ({"profile": "tensorflow", "gpus": "8"}, ("gpu-users",), 400),  # not a choice
    ({"profile": "tensorflow", "gpus": ["1", "2"]}, ("gpu-users",), 400),
    ({"profile": "tensorflow", "gpus--unlisted-choice": "8"}, ("gpu-users",), 400),  # KubeSpawner's escape hatch
    ({"profile": "minimal", "image": "evil/miner:latest"}, ("gpu-users",), 400),
    ({"profile": "nope"}, ("gpu-users",), 400),
    ({"profile": "minimal", "cpu_limit": "64"}, ("gpu-users",), 400),
]


@pytest.mark.parametrize("opts,groups,status", FORGED)
def test_forged_options_are_refused_before_anything_is_created(tmp_path, monkeypatch, opts, groups, status):
    config_file = write_config(tmp_path, kubernetes={"spark_mode": "kubernetes"})
    calls = []

    class Recorder:
        def __getattr__(self, name):
            async def call(*a, **kw):
                calls.append(name)
            return call

    async def pod_start(self):
        calls.append("KubeSpawner._start")
        return "http://pod:8888"

    monkeypatch.setattr(kube, "shared_client", lambda *a, **kw: Recorder())
    monkeypatch.setattr(KubeSpawner, "_start", pod_start)

    async def run(options):
        sp = cli_preview.make_spawner("alice", groups, False, config_file, options)
        sp.api = Recorder()
        with pytest.raises(HTTPError) as hook:
            sp.apply_user_options(sp, sp.user_options)  # JupyterHub's hook, before start
        with pytest.raises(HTTPError) as start:
            await sp.start()
        with pytest.raises(HTTPError):
            await sp.esker_manifests()
        return hook.value, start.value

    hook, start = asyncio.run(run(opts))
    assert hook.status_code == start.status_code == status
    assert calls == []

    # The same spawner path with a valid request does create things, Spark objects before the pod.
    async def ok():
        sp = cli_preview.make_spawner("alice", ("gpu-users",), False, config_file, {"profile": "spark"})
        sp.api = Recorder()
        sp.apply_user_options(sp, sp.user_options)
        return await sp.start()

    assert asyncio.run(ok()) == "http://pod:8888"
    assert calls == ["create_namespaced_service_account", "create_namespaced_role",
                     "create_namespaced_role_binding", "create_namespaced_service", "KubeSpawner._start"]


def test_reapplying_other_choices_does_not_accumulate(tmp_path):
    config_file = write_config(tmp_path)

    async def run():
        sp = spawner_for(config_file, profile="tensorflow", gpus="2")
        sp.tolerations = [{"key": "site", "operator": "Exists"}]
        sp.environment = {"SITE": "x"}
        await sp.load_user_options()
        first = (dict(sp.extra_resource_limits), list(sp.tolerations), len(sp.volumes))
        sp.user_options = {"profile": "minimal"}
        await sp.load_user_options()
        return first, sp

    first, sp = asyncio.run(run())
    assert first == ({"nvidia.com/gpu": "2"}, [{"key": "site", "operator": "Exists"},
                     {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], 1)
    assert sp.extra_resource_limits == {} and sp.node_selector == {}
    assert sp.tolerations == [{"key": "site", "operator": "Exists"}]
    assert len(sp.volumes) == 1 and sp.environment["SITE"] == "x" and sp.environment["ESKER_PROFILE"] == "minimal"
    assert "ESKER_GPU_TYPE" not in sp.environment


class FakeApi:
    def __init__(self, namespace, selector):
        self.namespace, self.selector, self.calls = namespace, selector, []

    async def delete_collection_namespaced_pod(self, namespace, label_selector=None, **kw):
        assert namespace == self.namespace, namespace
        assert label_selector == self.selector, label_selector
        self.calls.append(("delete_collection_namespaced_pod", namespace, label_selector))

    def __getattr__(self, name):  # anything else is a mistake
        raise AssertionError(f"unexpected API call {name}")


def test_delete_executors_uses_the_servers_selector_and_namespace():
    names = ko.Names("hub", "jupyter-alice", "alice")
    api = FakeApi("hub", "spark-role=executor,esker.io/server=jupyter-alice")
    asyncio.run(kube.delete_executors(api, names))
    assert len(api.calls) == 1
    with pytest.raises(AssertionError):
        asyncio.run(kube.delete_executors(FakeApi("hub", "spark-role=executor"), names))
    with pytest.raises(AssertionError):
        asyncio.run(kube.delete_executors(FakeApi("default", ko.executor_selector(names)), names))


def test_stop_deletes_executors_then_the_pod_then_the_spark_objects(tmp_path, monkeypatch):
    config_file = write_config(tmp_path, kubernetes={"spark_mode": "kubernetes", "namespace": "hub"})
    order = []

    class Rbac:
        def __getattr__(self, name):
            async def call(name_, namespace):
                assert namespace == "hub"
                order.append((name, name_))
            return call

    async def pod_stop(self, now=False):
        order.append("pod")

    monkeypatch.setattr(kube, "shared_client", lambda *a: Rbac())
    monkeypatch.setattr(KubeSpawner, "stop", pod_stop)

    async def run():
        sp = spawner_for(config_file, profile="spark")
        sp.api = FakeApi("hub", "spark-role=executor,esker.io/server=jupyter-alice")
        await sp.stop()
        return sp.api.calls

    assert asyncio.run(run()) == [("delete_collection_namespaced_pod", "hub", "spark-role=executor,esker.io/server=jupyter-alice")]
    assert order == ["pod", ("delete_namespaced_role_binding", "jupyter-alice-spark"),
                     ("delete_namespaced_role", "jupyter-alice-spark"),
                     ("delete_namespaced_service_account", "jupyter-alice-spark"),
                     ("delete_namespaced_service", "jupyter-alice-spark"),
                     ("delete_namespaced_secret", "jupyter-alice-env")]  # the S3 keys (KubeObjectStorage)


def test_prepull_images_is_the_catalogs_image_list():
    catalog = Catalog.from_config(config.load(str(DEFAULT_CONFIG)))
    assert kube.prepull_images(catalog) == [p.image for p in catalog.profiles]


def test_preview_cli(tmp_path, capsys):
    from esker.cli import main

    config_file = write_config(tmp_path, kubernetes={"spark_mode": "kubernetes"})
    assert main(["preview", "--user", "bob", "--profile", "spark", "--config", config_file]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["Pod", "ServiceAccount", "Role", "RoleBinding", "Service"]
    assert pod_env(docs[0])["SPARK_MASTER"] == "k8s://https://kubernetes.default.svc"

    assert main(["preview", "--backend", "embedded", "--user", "bob", "--group", "gpu-users", "--profile",
                 "tensorflow", "--option", "gpus=2", "--config", config_file]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["env"]["CUDA_VISIBLE_DEVICES"] == "0,1" and plan["limits"]["gpus"] == 2

    for argv in (["--profile", "tensorflow", "--option", "gpus=1"], ["--profile", "nope"],
                 ["--profile", "minimal", "--option", "novalue"]):
        for backend in ("kubernetes", "embedded"):
            code = main(["preview", "--backend", backend, "--user", "bob", "--config", config_file, *argv])
            out = capsys.readouterr()
            assert code == 2 and out.out == "" and out.err.strip(), (backend, argv)
    assert main(["preview", "--user", "bob", "--profile", "minimal", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_s3_keys_live_in_a_per_server_secret_created_before_the_pod_and_deleted_at_stop(tmp_path, monkeypatch):
    config_file = write_config(tmp_path, kubernetes={"namespace": "hub"})
    key, access = "s3cr3t-Key/value+42", "AKIA-ALICE"
    grant = {"endpoint": "http://rgw.ceph:80", "access_key": access, "secret_key": key, "bucket": "esker-alice"}
    calls, created, pods = [], {}, []

    class Recorder:
        def __getattr__(self, name):
            async def call(*a, **kw):
                calls.append(name)
                if name.startswith("create_namespaced_"):
                    created[a[1]["kind"]] = a[1]
            return call

    async def pod_start(self):
        calls.append("KubeSpawner._start")
        pods.append(self.api.api_client.sanitize_for_serialization(await self.get_pod_manifest()))
        return "http://pod:8888"

    async def pod_stop(self, now=False):
        calls.append("KubeSpawner.stop")

    async def storage_grant(self, sel):
        return grant

    monkeypatch.setattr(kube, "shared_client", lambda *a, **kw: Recorder())
    monkeypatch.setattr(KubeSpawner, "_start", pod_start)
    monkeypatch.setattr(KubeSpawner, "stop", pod_stop)
    monkeypatch.setattr(kube.EskerKubeSpawner, "esker_storage_grant", storage_grant)

    async def run():
        sp = cli_preview.make_spawner("alice", ("gpu-users",), False, config_file, {"profile": "spark"})
        sp.apply_user_options(sp, sp.user_options)
        await sp.start()
        await sp.stop()

    asyncio.run(run())
    assert calls.index("create_namespaced_secret") < calls.index("KubeSpawner._start")
    assert calls.index("KubeSpawner.stop") < calls.index("delete_namespaced_secret")
    secret = created["Secret"]
    strict(secret)
    assert secret["metadata"]["name"] == "jupyter-alice-env" and secret["metadata"]["namespace"] == "hub"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["AWS_SECRET_ACCESS_KEY"] == key and data["AWS_ACCESS_KEY_ID"] == access
    # The Spark defaults file (the S3A keys) the scratch init container writes, from the same Secret.
    assert "spark.hadoop.fs.s3a.secret.key" in data["ESKER_PRIVATE_FILE_0"] and key in data["ESKER_PRIVATE_FILE_0"]
    (pod,) = pods
    strict(pod | {"apiVersion": "v1", "kind": "Pod"})
    text = yaml.safe_dump(pod)
    assert key not in text and access not in text  # neither as a value of the notebook's env nor of the init's
    for c in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
        for e in c.get("env") or []:
            if e["name"] in ko.SECRET_ENV or e["name"].startswith(ko.PRIVATE_FILE_ENV):
                assert e == {"name": e["name"], "valueFrom": {"secretKeyRef": {"name": "jupyter-alice-env",
                                                                              "key": e["name"]}}}
    # After a failed start the Secret goes too (the base releases the services).
    calls.clear()

    async def pod_fails(self):
        calls.append("KubeSpawner._start")
        raise RuntimeError("image pull failed")

    monkeypatch.setattr(KubeSpawner, "_start", pod_fails)

    async def failing():
        sp = cli_preview.make_spawner("alice", ("gpu-users",), False, config_file, {"profile": "spark"})
        sp.apply_user_options(sp, sp.user_options)
        with pytest.raises((HTTPError, RuntimeError)):
            await sp.start()

    asyncio.run(failing())
    assert calls.index("create_namespaced_secret") < calls.index("KubeSpawner._start") < \
        calls.index("delete_namespaced_secret")


def test_hostpath_scratch_says_once_that_it_has_no_quota(tmp_path):
    import logging

    def warnings_for(config_file, n):
        seen = []

        class Keep(logging.Handler):
            def emit(self, record):
                seen.append(record.getMessage())

        async def run():
            for _ in range(n):
                sp = spawner_for(config_file, profile="minimal")
                handler = Keep(logging.WARNING)
                sp.log.addHandler(handler)
                try:
                    await sp.load_user_options()
                finally:
                    sp.log.removeHandler(handler)

        asyncio.run(run())
        return [m for m in seen if "no quota" in m]

    hostpath = warnings_for(write_config(tmp_path, "hostpath.yaml"), 2)  # the shipped storage_class: null
    assert len(hostpath) == 1 and "storage_class is null" in hostpath[0], hostpath
    sized = write_config(tmp_path, "nvme.yaml", scratch={"kubernetes": {"storage_class": "topolvm-nvme"}})
    assert warnings_for(sized, 2) == []


def test_a_spark_server_starts_its_own_cluster_with_keys_of_its_own(tmp_path, monkeypatch):
    """spark_mode standalone, through the spawner's real start: each start makes a fresh RPC secret and UI key,
    they reach the master, worker and driver only through the server's Secret (spark-defaults.conf, written by
    the scratch init container), the sidecars run as the notebook's uid, and nothing is created besides the
    Secret (no Service: nothing outside the pod talks to this Spark)."""
    config_file = write_config(tmp_path, kubernetes={"namespace": "hub"})
    created, pods, calls = [], [], []

    class Recorder:
        def __getattr__(self, name):
            async def call(*a, **kw):
                calls.append(name)
                if name.startswith("create_namespaced_"):
                    created.append(a[1])
            return call

    async def pod_start(self):
        pods.append(self.api.api_client.sanitize_for_serialization(await self.get_pod_manifest()))
        return "http://pod:8888"

    async def pod_stop(self, now=False):
        calls.append("KubeSpawner.stop")

    monkeypatch.setattr(kube, "shared_client", lambda *a, **kw: Recorder())
    monkeypatch.setattr(KubeSpawner, "_start", pod_start)
    monkeypatch.setattr(KubeSpawner, "stop", pod_stop)

    async def run(user, uid, gid):
        sp = cli_preview.make_spawner(user, (), False, config_file, {"profile": "spark"}, uid=uid, gid=gid)
        sp.apply_user_options(sp, sp.user_options)
        await sp.start()
        await sp.stop()

    asyncio.run(run("alice", 1000, 100))
    asyncio.run(run("bob", 1234, 567))
    assert [o["kind"] for o in created] == ["Secret", "Secret"]
    assert "delete_namespaced_service" not in calls and "delete_namespaced_role" not in calls
    confs = []
    for secret, pod, uid, gid in zip(created, pods, (1000, 1234), (100, 567)):
        strict(secret)
        strict(pod | {"apiVersion": "v1", "kind": "Pod"})
        (conf,) = (base64.b64decode(v).decode() for v in secret["data"].values())
        lines = dict(line.split(" ", 1) for line in conf.splitlines())
        assert lines["spark.authenticate"] == "true" and len(lines["spark.authenticate.secret"]) >= 43
        assert lines["spark.ui.filters"] == "org.apache.spark.ui.JWSFilter"
        key = lines["spark.org.apache.spark.ui.JWSFilter.param.secretKey"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)  # 32 bytes, base64url without padding: what JWSFilter takes
        confs.append(lines)
        # No secret in any container's plain env, args or probes: only the scratch init container reads it, by
        # secretKeyRef, and writes it where SPARK_CONF_DIR points the notebook and both sidecars.
        text = yaml.safe_dump(pod)
        assert lines["spark.authenticate.secret"] not in text and key not in text
        notebook = pod["spec"]["containers"][0]
        init, master, worker = pod["spec"]["initContainers"]
        assert [c["name"] for c in (init, master, worker)] == ["esker-scratch", "spark-master", "spark-worker"]
        assert init["env"] == [{"name": "ESKER_PRIVATE_FILE_0", "valueFrom": {"secretKeyRef": {
            "name": secret["metadata"]["name"], "key": "ESKER_PRIVATE_FILE_0"}}}]
        conf_dir = pod_env(pod)["SPARK_CONF_DIR"]
        assert f"spark/conf/spark-defaults.conf" in init["command"][2] and conf_dir == "/scratch/spark/conf"
        for c in (master, worker):
            assert {e["name"]: e["value"] for e in c["env"]}["SPARK_CONF_DIR"] == conf_dir
            # The notebook's uid (KubeSpawner's, z2jh's singleuser.uid), whatever it is.
            assert notebook["securityContext"]["runAsUser"] == c["securityContext"]["runAsUser"] == uid
            assert c["securityContext"]["runAsGroup"] == gid
            assert c["restartPolicy"] == "Always"
    alice, bob = confs
    assert alice["spark.authenticate.secret"] != bob["spark.authenticate.secret"]
    assert alice["spark.org.apache.spark.ui.JWSFilter.param.secretKey"] != \
        bob["spark.org.apache.spark.ui.JWSFilter.param.secretKey"]
    # The Secret goes at stop (with the keys in it).
    assert calls.count("delete_namespaced_secret") == 2
    # A fresh start of the same server gets new keys too.
    assert kube.own_cluster_grant()["secret"] != kube.own_cluster_grant()["secret"]


def test_a_function_servers_broker_password_is_in_its_secret_not_in_the_pod(tmp_path):
    config_file = write_config(tmp_path)
    grant = {"broker": {"url": "redis://esker-functions-broker:6379/0", "user": "fn.0123", "password": "pw-" * 12,
                        "prefix": "esker:fn:0123:"}}

    async def run():
        sp = cli_preview.make_spawner("alice", (), False, config_file, {"profile": "minimal"})
        sp._esker_grants = MappingProxyType(grant)
        return await sp.esker_manifests()

    pod, *others = asyncio.run(run())
    env = pod_env(pod)
    assert env["ESKER_FUNCTION_BROKER_PASSWORD"] == {
        "secretKeyRef": {"name": "jupyter-alice-env", "key": "ESKER_FUNCTION_BROKER_PASSWORD"}}
    assert env["ESKER_FUNCTION_BROKER_USER"] == "fn.0123" and env["ESKER_FUNCTION_BROKER_PREFIX"] == "esker:fn:0123:"
    assert "pw-pw-" not in yaml.safe_dump(pod)
    (sec,) = [o for o in others if o["kind"] == "Secret"]
    assert base64.b64decode(sec["data"]["ESKER_FUNCTION_BROKER_PASSWORD"]).decode() == "pw-" * 12


EXPORTER_PAGE = """# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-1f7c",pci_bus_id="00000000:07:00.0",device="nvidia0",modelName="NVIDIA A100-SXM4-40GB",Hostname="gpu-node-1",container="notebook",namespace="default",pod="jupyter-alice"}} {util}
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{{gpu="0",UUID="GPU-1f7c",pci_bus_id="00000000:07:00.0",device="nvidia0",modelName="NVIDIA A100-SXM4-40GB",Hostname="gpu-node-1",container="notebook",namespace="default",pod="jupyter-alice"}} {free}
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{{gpu="0",UUID="GPU-1f7c",pci_bus_id="00000000:07:00.0",device="nvidia0",modelName="NVIDIA A100-SXM4-40GB",Hostname="gpu-node-1",container="notebook",namespace="default",pod="jupyter-alice"}} {used}
"""


def test_the_gpu_policy_reads_the_dcgm_exporter_on_kubernetes(tmp_path):
    """The same policy as on one machine: the server's pod's series from a real HTTP exporter page; busy, then
    idle past the timeout (the idle clock moved back rather than waited for), then stopped; max_runtime alone
    needs no exporter."""
    import http.server
    import threading
    import time as _time

    page = {"util": 87, "used": 30000, "free": 10960}

    class Exporter(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = EXPORTER_PAGE.format(**page).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    async def run():
        cfg = write_config(tmp_path, gpus={"metrics_url": f"http://127.0.0.1:{srv.server_port}/metrics",
                                           "metrics_interval": 5, "policy": {"idle_timeout": 600}})
        sp = spawner_for(cfg, profile="tensorflow", gpus="1")
        sp.esker_select(sp.user_options)
        sp.namespace, sp.pod_name = "default", "jupyter-alice"
        source = sp.runtime.gpu_source()
        assert sp.esker_gpus_held() == 1 and source is not None
        assert await sp.esker_gpu_policy_check() is None  # busy
        [u] = await sp.esker_gpu_usage()
        assert (u.device, u.utilization, u.memory_used) == ("GPU-1f7c", 87.0, 30000 * 2**20)
        page.update(util=0, used=3, free=40957)  # the notebook freed its model: no context left
        source._tried_at = None  # read again at the next look (rather than wait out metrics_interval)
        assert await sp.esker_gpu_policy_check() is None  # idle from now
        assert sp._esker_gpu_idle_from is not None
        sp._esker_gpu_idle_from -= 601
        verdict = await sp.esker_gpu_policy_check()
        assert verdict is not None and verdict.reason == "idle"
        # max_runtime, with no exporter at all
        cfg2 = write_config(tmp_path, name="b.yaml", gpus={"policy": {"idle_timeout": 0, "max_runtime": 3600}})
        sp2 = spawner_for(cfg2, profile="tensorflow", gpus="1")
        sp2.esker_select(sp2.user_options)

        started = {"at": _time.time() - 3601}
        sp2.esker_started_at = lambda: started["at"]  # JupyterHub's record of when the server started
        assert sp2.runtime.gpu_source() is None
        verdict = await sp2.esker_gpu_policy_check()
        assert verdict is not None and verdict.reason == "max_runtime"
        started["at"] = _time.time()
        assert await sp2.esker_gpu_policy_check() is None

    try:
        asyncio.run(run())
    finally:
        srv.shutdown()
