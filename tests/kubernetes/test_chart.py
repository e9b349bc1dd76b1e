"""The Helm chart, offline: lint, render, strict validation of every object, and the values it hands to
Zero to JupyterHub checked against z2jh's own schema."""

from __future__ import annotations

import base64
import copy
import json
from importlib.metadata import entry_points
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from esker.core.config import validate
from esker.resources import SHIPPED_CONFIG as DEFAULT_CONFIG
from esker.core.schema import SCHEMA
from esker.spawner import k8s_objects as ko
from esker.core.catalog import Catalog

pytestmark = pytest.mark.kubernetes

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "esker"
Z2JH = Path(__file__).resolve().parents[1] / "fixtures" / "z2jh"  # z2jh 4.4 schema and defaults (BSD, LICENSE beside)
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
K8S_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]
OFFLINE = {"jupyterhub": {"enabled": False}}  # the dependency is not vendored; z2jh is checked below
CRDS = {"ServiceMonitor"}

EVERYTHING = {
    **OFFLINE,
    "esker": {
        "acknowledgeSparkKubernetesMode": True,
        "config": {"kubernetes": {"spark_mode": "kubernetes"},
                   "scratch": {"kubernetes": {"storage_class": "topolvm-nvme"}}},
        "networkPolicy": {"s3": {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "rook-ceph"}},
                                        "podSelector": {"matchLabels": {"app": "rook-ceph-rgw"}}}], "ports": [8080]},
                          "apiServer": {"cidrs": ["10.96.0.1/32"]}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboards": {"esker-overview": json.dumps({"title": "Esker"})},
    },
}


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def render(values=OFFLINE, namespace="hub"):
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="esker", namespace=namespace, is_install=True)
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    return docs


def by(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def rendered_config(docs):
    (secret,) = by(docs, "Secret", "esker-config")
    return yaml.safe_load(base64.b64decode(secret["data"]["esker.yaml"]))


def test_lint_is_clean_but_for_the_missing_dependency():
    report = helm.lint(str(CHART), OFFLINE, strict=True, kube_version="v1.32.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2
                and "missing these dependencies: jupyterhub" not in m["error"]]
    assert problems == []
    chart = helm.Chart.load(str(CHART))
    (dep,) = chart.metadata["dependencies"]
    assert dep["name"] == "jupyterhub" and dep["version"].startswith("4.4")
    assert dep["repository"] == "https://hub.jupyter.org/helm-chart/" and dep["condition"] == "jupyterhub.enabled"


@pytest.mark.parametrize("values", [OFFLINE, EVERYTHING], ids=["defaults", "everything"])
def test_every_rendered_object_is_valid(values):
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["kind"] in CRDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    kinds = sorted(d["kind"] for d in docs)
    # No Spark workload of the chart's: in standalone mode each Spark server's pod has its own master and worker.
    # The functions' task broker: its Secret, ConfigMap, Service, StatefulSet and three NetworkPolicies.
    broker = ["ConfigMap", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "Secret", "Service", "StatefulSet"]
    if values is OFFLINE:
        assert kinds == sorted(["NetworkPolicy", "PriorityClass", "Secret", "Secret", *broker])
    else:
        assert kinds == sorted(["ConfigMap", "NetworkPolicy", "NetworkPolicy", "PriorityClass", "Role", "RoleBinding",
                                "Secret", "Secret", "ServiceMonitor", *broker])


def test_seat_placeholder_priority_class_is_below_user_pods_and_named_as_the_service_expects():
    from esker.courses.prewarm import PRIORITY_CLASS, placeholder_pod

    (pc,) = by(render(), "PriorityClass")
    assert pc["metadata"]["name"] == PRIORITY_CLASS == "esker-user-placeholder"
    assert pc["value"] == -10 and pc["value"] < 0 and pc["globalDefault"] is False
    assert pc["preemptionPolicy"] == "Never"  # placeholders never push anyone out
    assert "namespace" not in pc["metadata"]  # cluster-scoped
    # The pods the courses service creates name exactly this class.
    from datetime import datetime, timezone

    from esker.courses.reservations import Reservation

    cfg = validate(VALUES["esker"]["config"]).data
    prof = Catalog.from_config(cfg).get("scikit-learn")
    t = datetime(2030, 1, 1, tzinfo=timezone.utc)
    pod = placeholder_pod(Reservation("c", "scikit-learn", 1, t, t), prof, 0)
    assert pod["spec"]["priorityClassName"] == pc["metadata"]["name"]
    # Behind a values flag; the value must stay negative.
    off = merge(OFFLINE, {"esker": {"seatPlaceholders": {"priorityClass": {"enabled": False, "value": -10}}}})
    assert not by(render(off), "PriorityClass")
    with pytest.raises(helm.HelmValuesError):
        render(merge(OFFLINE, {"esker": {"seatPlaceholders": {"priorityClass": {"enabled": True, "value": 5}}}}))


def test_service_monitor_and_dashboards():
    docs = render(EVERYTHING)
    (sm,) = by(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0] == {"port": "hub", "path": "/hub/metrics", "interval": "30s"}
    (cm,) = by(docs, "ConfigMap", "esker-grafana-dashboards")
    assert json.loads(cm["data"]["esker-overview.json"]) == {"title": "Esker"}
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not by(render(), "ServiceMonitor")


def test_hub_can_grant_exactly_what_a_spark_session_role_holds():
    docs = render(EVERYTHING)
    (role,) = by(docs, "Role", "esker-hub-spark")
    held = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    needed = {(g, r, v) for rule in ko.SPARK_DRIVER_RULES for g in rule["apiGroups"] for r in rule["resources"]
              for v in rule["verbs"]}
    assert needed <= held  # otherwise RBAC refuses the hub's Role creation (escalation)
    for kind, group in (("serviceaccounts", ""), ("roles", "rbac.authorization.k8s.io"),
                        ("rolebindings", "rbac.authorization.k8s.io")):
        assert {(group, kind, "create"), (group, kind, "delete")} <= held
    (binding,) = by(docs, "RoleBinding", "esker-hub-spark")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "hub"}]
    assert not by(render(), "Role")  # standalone mode: the hub needs nothing beyond z2jh's


def _selects_singleuser(peer):
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    return labels.get("component") == "singleuser-server" or peer.get("podSelector") == {} or "ipBlock" in peer


EXTERNAL_SPARK = {"esker": {"config": {"spark": {"master_url": "spark://spark.example:7077"}},
                            "networkPolicy": {"externalSpark": {"peers": [{"ipBlock": {"cidr": "10.30.0.0/24"}}]}}}}


@pytest.mark.parametrize("values", [OFFLINE, EVERYTHING, merge(OFFLINE, EXTERNAL_SPARK)],
                         ids=["defaults", "everything", "external-master"])
def test_network_policies_keep_user_pods_apart(values):
    docs = render(values)
    mode = "kubernetes" if values is EVERYTHING else "standalone"
    (user,) = by(docs, "NetworkPolicy", "esker-singleuser")
    assert user["spec"]["podSelector"]["matchLabels"] == {"app": "jupyterhub", "component": "singleuser-server"}
    for rule in user["spec"]["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert peer["ipBlock"]["cidr"] in ("10.96.0.1/32", "10.30.0.0/24")  # the API server, the external cluster
                continue
            assert not _selects_singleuser(peer), peer
    ingress = user["spec"]["ingress"]
    for rule in ingress:
        assert not any(_selects_singleuser(p) and "ipBlock" not in p for p in rule["from"])
        assert sorted(p["port"] for p in rule["ports"]) == [ko.SPARK_DRIVER_PORT, ko.SPARK_BLOCK_MANAGER_PORT]
    if values is OFFLINE:
        assert ingress == []  # a server's own Spark is inside its pod: nothing comes in for it
    egress = [p for rule in user["spec"]["egress"] for p in rule["to"]]
    assert {"app": "jupyterhub", "component": "hub"} in [p.get("podSelector", {}).get("matchLabels") for p in egress]
    assert any(p.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for p in egress)
    if values is EVERYTHING:
        assert any(p.get("podSelector", {}).get("matchLabels") == {"app": "rook-ceph-rgw"} for p in egress)
    others = [np for np in by(docs, "NetworkPolicy") if np["metadata"]["name"] != "esker-singleuser"
              and not np["metadata"]["name"].startswith("esker-functions-broker")]  # the next test's
    assert [np["metadata"]["name"] for np in others] == (["esker-spark-executors"] if mode == "kubernetes" else [])
    for np in others:
        to_users = [r for r in np["spec"]["egress"] if any(_selects_singleuser(p) for p in r["to"])]
        assert [sorted(p["port"] for p in r["ports"]) for r in to_users] == [[ko.SPARK_DRIVER_PORT, ko.SPARK_BLOCK_MANAGER_PORT]]


def _selects(selector, labels) -> bool:
    """A label selector (matchLabels, matchExpressions with In and Exists) against a pod's labels."""
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions") or []:
        if e["operator"] == "Exists" and e["key"] not in labels:
            return False
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
    return True


def test_only_the_hub_and_function_servers_reach_the_task_broker():
    docs = render()
    (pol,) = by(docs, "NetworkPolicy", "esker-functions-broker")
    (sts,) = by(docs, "StatefulSet", "esker-functions-broker")
    broker = sts["spec"]["template"]["metadata"]["labels"]
    assert _selects(pol["spec"]["podSelector"], broker) and pol["spec"]["egress"] == []
    (rule,) = pol["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    hub = {"app": "jupyterhub", "component": "hub"}
    notebook = {"app": "jupyterhub", "component": "singleuser-server", ko.SERVER_LABEL: "jupyter-alice"}
    function = {**notebook, **ko.function_labels("predict")}
    assert [any(_selects(p["podSelector"], pod) for p in rule["from"]) for pod in (hub, notebook, function)] == [
        True, False, True]
    # egress: the function servers' policy selects them alone; the hub's, the hub
    (fn_out,) = by(docs, "NetworkPolicy", "esker-functions-broker-functions")
    assert [_selects(fn_out["spec"]["podSelector"], pod) for pod in (hub, notebook, function)] == [False, False, True]
    (hub_out,) = by(docs, "NetworkPolicy", "esker-functions-broker-hub")
    assert _selects(hub_out["spec"]["podSelector"], hub) and not _selects(hub_out["spec"]["podSelector"], notebook)
    # the hub's config names it, the hub gets its admin password by secretKeyRef, the pod runs no shell as root
    assert rendered_config(docs)["functions"]["broker"]["url"] == "redis://esker-functions-broker:6379/0"
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    (seed,) = sts["spec"]["template"]["spec"]["initContainers"]
    assert seed["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "esker-functions-broker", "key": "admin-password"}
    off = render(merge(OFFLINE, {"esker": {"functionsBroker": {"enabled": False}}}))
    assert not by(off, "StatefulSet") and rendered_config(off).get("functions", {}).get("broker", {}).get("url", "") == ""


def _admitted_ports(docs, pod):
    """Ports of ``pod`` that some NetworkPolicy of ``docs`` selecting it admits from another pod (None: all)."""
    labels = pod["metadata"]["labels"]
    ports = set()
    for np in by(docs, "NetworkPolicy"):
        if not _selects(np["spec"]["podSelector"], labels):
            continue
        for rule in np["spec"].get("ingress") or []:
            if "ports" not in rule:
                return None
            ports |= {p["port"] for p in rule["ports"]}
    return ports


def test_a_servers_own_spark_is_reached_by_no_service_and_no_policy(tmp_path):
    """The chart's configuration, through the spawner: a Spark server's pod has its master and worker as
    sidecars, no Service selects it, and no NetworkPolicy (the chart's; z2jh's admits the notebook port only)
    admits another pod to the Spark ports, the driver's included. They listen on loopback besides."""
    import asyncio

    from esker.cli import preview as cli_preview

    docs = render()
    (path := tmp_path / "esker.yaml").write_text(yaml.safe_dump(rendered_config(docs)))
    with cli_preview.offline_kubeconfig():
        pod, *objects = asyncio.run(cli_preview.kubernetes_manifests("alice", (), False, str(path), {"profile": "spark"}))
    sidecars = [c for c in pod["spec"]["initContainers"] if c.get("restartPolicy") == "Always"]
    assert [c["name"] for c in sidecars] == ["spark-master", "spark-worker"]
    assert [o["kind"] for o in objects] == ["Secret"]  # no Service of the server's
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == ["esker-functions-broker"]  # nor of the chart's
    assert _admitted_ports(docs, pod) == set()  # not 7077, 8080, 8081 (master, UIs), 7078-7079, 4040 (driver)
    for c in sidecars:
        assert "ports" not in c and c["command"][c["command"].index("--host") + 1] == "127.0.0.1"
    # The external master's cluster may reach the driver's ports, and only those.
    external = render(merge(OFFLINE, EXTERNAL_SPARK))
    assert _admitted_ports(external, pod) == {ko.SPARK_DRIVER_PORT, ko.SPARK_BLOCK_MANAGER_PORT}


def test_the_shipped_profiles_fit_their_own_spark_cluster():
    cfg = validate(rendered_config(render())).data
    assert not cfg["spark"]["master_url"] and cfg["kubernetes"]["spark_mode"] == "standalone"
    catalog = Catalog.from_config(cfg)
    for profile in catalog.profiles:
        if not profile.spark:
            continue
        from esker.core.catalog import UserInfo
        from esker.core.plan import build_plan, select

        sel = select(catalog, UserInfo("alice", frozenset()), {"profile": profile.slug})
        names = ko.Names("hub", "jupyter-alice", "alice")
        plan = build_plan(sel, ko.kubernetes_placement(sel, cfg), ko.kubernetes_site(cfg, names, sel.image))
        cpu, memory = ko.notebook_share(plan, cfg)  # raises when the sidecars do not fit
        assert cpu >= ko.NOTEBOOK_MIN_CPU and memory > 0


def test_config_is_a_valid_esker_config_with_the_shipped_catalog():
    cfg = rendered_config(render())
    filled = validate(cfg, "chart").data
    assert filled["kubernetes"]["namespace"] == "hub"  # the release's namespace by default
    shipped = validate(yaml.safe_load(DEFAULT_CONFIG.read_text())).data
    assert filled["profiles"] == shipped["profiles"]
    mine = merge(OFFLINE, {"esker": {"config": {"kubernetes": {"namespace": "elsewhere"}}}})
    assert rendered_config(render(mine))["kubernetes"]["namespace"] == "elsewhere"


def test_chart_config_is_for_kubernetes_and_refuses_content_path_courses():
    from esker.core.config import ConfigError

    cfg = rendered_config(render())
    assert cfg["hub"]["mode"] == "kubernetes" and validate(cfg)["hub"]["mode"] == "kubernetes"
    git = {"name": "intro-git", "group": "intro-git", "content": {"git": "https://example.org/intro.git"}}
    path = {"name": "intro-path", "group": "intro-path", "content": {"path": "courses/intro-ml"}}
    ok = rendered_config(render(merge(OFFLINE, {"esker": {"config": {"courses": [git]}}})))
    assert validate(ok)["courses"][0]["content"]["git"] == git["content"]["git"]
    # The hub loads this file at start (and `esker check` reads it the same way): it stops, naming the field.
    with pytest.raises(ConfigError) as e:
        validate(rendered_config(render(merge(OFFLINE, {"esker": {"config": {"courses": [git, path]}}}))))
    (problem,) = e.value.problems
    assert problem.startswith("courses[1].content.path: ") and "content.git" in problem
    # The operator's own hub settings are kept; the mode is the chart's.
    kept = rendered_config(render(merge(OFFLINE, {"esker": {"config": {"hub": {"log_level": "DEBUG"}}}})))
    assert kept["hub"] == {"log_level": "DEBUG", "mode": "kubernetes"}
    with pytest.raises(helm.HelmValuesError):
        render(merge(OFFLINE, {"esker": {"config": {"hub": {"mode": "embedded"}}}}))


def test_network_policies_let_the_proxy_reach_the_courses_service_in_the_hub_pod_only():
    from esker.app.configurer import KUBERNETES_COURSES_PORT

    hub = VALUES["jupyterhub"]["hub"]
    port = int(hub["extraEnv"]["ESKER_COURSES_PORT"])
    assert port == KUBERNETES_COURSES_PORT
    (ingress,) = hub["networkPolicy"]["ingress"]  # added to z2jh's hub policy (which admits only port 8081)
    assert ingress["from"] == [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}]
    assert {"port": port, "protocol": "TCP"} in ingress["ports"]
    (egress,) = VALUES["jupyterhub"]["proxy"]["chp"]["networkPolicy"]["egress"]
    assert egress["to"] == [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}]
    assert egress["ports"] == ingress["ports"]
    # Valid z2jh values (the schema test covers the whole file); a misplaced rule is refused.
    defaults = yaml.safe_load((Z2JH / "values.yaml").read_text())
    schema = yaml.safe_load((Z2JH / "values.schema.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(
            merge(merge(defaults, VALUES["jupyterhub"]), {"hub": {"networkPolicy": {"ingres": []}}}))


def test_network_policies_let_the_proxy_and_the_functions_service_reach_each_other_only():
    from esker.app.configurer import KUBERNETES_COURSES_PORT, KUBERNETES_FUNCTIONS_PORT

    hub = VALUES["jupyterhub"]["hub"]
    port = int(hub["extraEnv"]["ESKER_FUNCTIONS_PORT"])
    assert port == KUBERNETES_FUNCTIONS_PORT != KUBERNETES_COURSES_PORT
    proxy_pod = [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}]
    # The proxy -> the service: the hub admits it from the proxy pod alone, on exactly the two service ports.
    (ingress,) = hub["networkPolicy"]["ingress"]
    assert ingress["from"] == proxy_pod
    assert ingress["ports"] == [{"port": KUBERNETES_COURSES_PORT, "protocol": "TCP"}, {"port": port, "protocol": "TCP"}]
    (proxy_egress,) = VALUES["jupyterhub"]["proxy"]["chp"]["networkPolicy"]["egress"]
    assert proxy_egress["ports"] == ingress["ports"]
    # The activator -> the proxy's public port: chp's http port (z2jh's proxy-public Service maps 80 to it).
    (hub_egress,) = hub["networkPolicy"]["egress"]
    assert hub_egress == {"to": proxy_pod, "ports": [{"port": 8000, "protocol": "TCP"}]}
    z2jh = yaml.safe_load((Z2JH / "values.yaml").read_text())
    assert "http" in z2jh["proxy"]["chp"]["networkPolicy"]["allowedIngressPorts"]  # chp admits 8000 from anywhere
    schema = yaml.safe_load((Z2JH / "values.schema.yaml").read_text())
    values = merge(z2jh, VALUES["jupyterhub"])
    jsonschema.Draft7Validator(schema).validate(values)
    with pytest.raises(jsonschema.ValidationError):  # z2jh's schema is strict about the rule's shape
        jsonschema.Draft7Validator(schema).validate(merge(values, {"hub": {"networkPolicy": {"egres": []}}}))


def test_prepuller_images_are_derived_from_the_catalog():
    cfg = validate(VALUES["esker"]["config"]).data
    assert VALUES["jupyterhub"]["prePuller"]["extraImages"] == ko.prepuller_extra_images(Catalog.from_config(cfg)), (
        "helm/esker/values.yaml jupyterhub.prePuller.extraImages must be:\n"
        + yaml.safe_dump(ko.prepuller_extra_images(Catalog.from_config(cfg))))


def test_values_schema_is_strict_and_names_the_config_sections():
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["esker"]["properties"]["config"]
    assert set(config["properties"]) == set(SCHEMA["properties"])
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(VALUES)
    for typo in ({"esker": {"sparkk": {}}}, {"esker": {"config": {"profile": []}}},
                 {"esker": {"networkPolicy": {"externalSpark": {"peer": []}}}},
                 {"esker": {"spark": {"worker": {"replicas": 3}}}},  # the shared cluster's values are gone
                 {"esker": {"networkPolicy": {"enabled": "yes"}}}):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(merge(VALUES, typo))
        with pytest.raises(helm.HelmValuesError):
            render(merge(OFFLINE, typo))


def test_z2jh_values_are_valid_for_the_jupyterhub_chart():
    defaults = yaml.safe_load((Z2JH / "values.yaml").read_text())
    schema = yaml.safe_load((Z2JH / "values.schema.yaml").read_text())
    merged = merge(defaults, VALUES["jupyterhub"])
    jsonschema.Draft7Validator(schema).validate(merged)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(merge(merged, {"hub": {"extraVolumeMount": []}}))

    hub = VALUES["jupyterhub"]["hub"]
    (ep,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == hub["config"]["JupyterHub"]["spawner_class"]]
    assert ep.load().__name__ == "EskerKubeSpawner"
    (vol,) = hub["extraVolumes"]
    (mount,) = hub["extraVolumeMounts"]
    assert vol["secret"]["secretName"] == "esker-config" and by(render(), "Secret", "esker-config")
    assert mount["name"] == vol["name"] and hub["extraEnv"]["ESKER_CONFIG"] == f"{mount['mountPath']}/esker.yaml"


# ------------------------------------------------------------------------------------------- GPU use (DCGM)
DCGM_URL = "http://nvidia-dcgm-exporter.gpu-operator:9400/metrics"
WITH_DCGM = merge(OFFLINE, {"esker": {"config": {"gpus": {"metrics_url": DCGM_URL}}}})
HUB_POD = {"app": "jupyterhub", "component": "hub", "release": "esker"}
DCGM_POD = {"app": "nvidia-dcgm-exporter", "app.kubernetes.io/managed-by": "gpu-operator"}


def _peer_admits(peer, pod_labels, pod_namespace, policy_namespace="hub"):
    """Whether one NetworkPolicy peer (namespaceSelector and/or podSelector) admits a pod of that namespace."""
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod_namespace}):
            return False
    elif pod_namespace != policy_namespace:
        return False
    return _selects(peer.get("podSelector", {}), pod_labels)


def test_the_hub_may_reach_the_dcgm_exporter_once_its_url_is_set():
    assert VALUES["esker"]["config"]["gpus"]["metrics_url"] == ""  # off by default, documented beside
    assert f"#   metrics_url: {DCGM_URL}" in (CHART / "values.yaml").read_text()
    assert not by(render(), "NetworkPolicy", "esker-hub-dcgm-exporter")
    docs = render(WITH_DCGM)
    assert rendered_config(docs)["gpus"]["metrics_url"] == DCGM_URL
    assert validate(rendered_config(docs), "chart").data["gpus"]["metrics_interval"] == 30
    (pol,) = by(docs, "NetworkPolicy", "esker-hub-dcgm-exporter")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pol, version, strict=True)
    spec = pol["spec"]
    assert spec["policyTypes"] == ["Egress"] and "ingress" not in spec  # it admits nothing in
    assert _selects(spec["podSelector"], HUB_POD)
    assert not _selects(spec["podSelector"], {"app": "jupyterhub", "component": "singleuser-server"})
    (rule,) = spec["egress"]
    assert rule["ports"] == [{"port": 9400, "protocol": "TCP"}]
    # The GPU Operator's exporter pods in gpu-operator, and nothing else: not the same labels elsewhere, not the
    # hub's own namespace, not a user pod.
    assert any(_peer_admits(p, DCGM_POD, "gpu-operator") for p in rule["to"])
    assert not any(_peer_admits(p, DCGM_POD, "hub") for p in rule["to"])
    assert not any(_peer_admits(p, {"app": "other"}, "gpu-operator") for p in rule["to"])
    assert not any(_peer_admits(p, {"app": "jupyterhub", "component": "singleuser-server"}, "hub") for p in rule["to"])
    # Everything else the chart renders is unchanged, and still valid.
    names = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy")
    assert names == sorted(["esker-hub-dcgm-exporter",
                            *(d["metadata"]["name"] for d in render() if d["kind"] == "NetworkPolicy")])
    for doc in docs:
        if doc["kind"] not in CRDS:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_the_dcgm_rule_is_configurable_and_off_where_it_cannot_help():
    # Through Prometheus (/federate): its pods and port replace the exporter's (lists replace, maps would merge).
    prom = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    url = "http://prometheus-operated.monitoring:9090/federate?match[]=DCGM_FI_DEV_GPU_UTIL&match[]=DCGM_FI_DEV_FB_USED"
    docs = render(merge(WITH_DCGM, {"esker": {"config": {"gpus": {"metrics_url": url}},
                                              "networkPolicy": {"dcgmExporter": {"to": prom, "ports": [9090]}}}}))
    (pol,) = by(docs, "NetworkPolicy", "esker-hub-dcgm-exporter")
    kubernetes_validate.validate(pol, K8S_VERSIONS[-1], strict=True)
    assert pol["spec"]["egress"] == [{"to": prom, "ports": [{"port": 9090, "protocol": "TCP"}]}]
    # No rule: an empty `to`, Esker's network policies off, or z2jh's hub policy off (the hub's egress is open
    # then, and an Egress policy selecting it would shut everything else).
    for off in ({"esker": {"networkPolicy": {"dcgmExporter": {"to": []}}}},
                {"esker": {"networkPolicy": {"enabled": False}}},
                {"jupyterhub": {"hub": {"networkPolicy": {"enabled": False}}}}):
        assert not by(render(merge(WITH_DCGM, off)), "NetworkPolicy", "esker-hub-dcgm-exporter"), off
    # values.schema.json: strict about the rule's shape and the URL's scheme.
    chart = helm.Chart.load(str(CHART))
    for typo in ({"esker": {"networkPolicy": {"dcgmExporter": {"port": 9400}}}},
                 {"esker": {"networkPolicy": {"dcgmExporter": {"ports": [94000]}}}},
                 {"esker": {"networkPolicy": {"dcgmExporter": {"to": "gpu-operator"}}}},
                 {"esker": {"config": {"gpus": {"metrics_url": "nvidia-dcgm-exporter.gpu-operator:9400"}}}},
                 {"esker": {"config": {"gpus": {"metrics_interval": 1}}}}):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(merge(VALUES, typo))
        with pytest.raises(helm.HelmValuesError):
            render(merge(OFFLINE, typo))


# ------------------------------------------------------------------------------------------- the dashboard's GPUs
DASHBOARD = CHART / "files" / "dashboards" / "esker-hub.json"
# The hub's GPU metrics (esker.metrics; docs/monitoring.md lists them), with their labels.
GPU_METRICS = {
    "esker_gpu_assigned": {"user", "server", "device", "type"},
    "esker_gpu_utilization_ratio": {"user", "server", "device", "type"},
    "esker_gpu_memory_used_bytes": {"user", "server", "device", "type"},
    "esker_gpu_memory_total_bytes": {"user", "server", "device", "type"},
    "esker_gpu_processes": {"user", "server", "device", "type"},
    "esker_gpu_idle_seconds": {"user", "server"},
    "esker_gpus_total": {"type"},
    "esker_gpus_free": {"type"},
    "esker_gpu_servers_stopped_total": {"reason"},
}


def _dashboard_rows(dash):
    """Row title -> the panels under it (the dashboard's panels are flat, each row followed by its own)."""
    rows, current = {}, None
    for p in dash["panels"]:
        if p["type"] == "row":
            current = rows.setdefault(p["title"], [])
        elif current is not None:
            current.append(p)
    return rows


def test_dashboard_layout_ids_and_datasource():
    import re as _re

    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            for t in p["targets"]:
                assert t["datasource"] == p["datasource"] and t["expr"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(set(refs)) == len(refs)
    # Rows in order, each below the last panel of the one before.
    rows = [p for p in panels if p["type"] == "row"]
    assert [r["gridPos"]["y"] for r in rows] == sorted(r["gridPos"]["y"] for r in rows)
    for a, b in zip(rows, rows[1:]):
        under = [p for p in panels if p["type"] != "row" and a["gridPos"]["y"] < p["gridPos"]["y"] < b["gridPos"]["y"]]
        assert under and max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in under) <= b["gridPos"]["y"]
    assert _re.search(r"\bGPUs\b", dash["description"])


def test_dashboard_gpu_row_per_user_and_server():
    import re as _re

    gpus = _dashboard_rows(json.loads(DASHBOARD.read_text()))["GPUs"]
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in gpus}
    named = set()
    for p in gpus:
        for t in p["targets"]:
            names = set(_re.findall(r"\besker_[a-z0-9_]+", _re.sub(r'"(?:[^"\\]|\\.)*"', "", t["expr"])))
            assert names and names <= set(GPU_METRICS), (p["title"], t["expr"])
            named |= names
            for grouped in _re.findall(r"\bby \(([^)]*)\)", t["expr"]):  # grouping by labels the metrics have
                assert {g.strip() for g in grouped.split(",")} <= set().union(*(GPU_METRICS[n] for n in names))
            for label in _re.findall(r"\{\{(\w+)\}\}", t["legendFormat"]):
                assert all(label in GPU_METRICS[n] for n in names), (t["expr"], label)
    assert named == set(GPU_METRICS), f"the GPUs row does not show {set(GPU_METRICS) - named}"

    def panel(metric):
        (p,) = [p for p in gpus if any(metric in e and "idle_seconds >" not in e for e in exprs[p["title"]])]
        return p

    # Per device, legend user/server device: utilisation, memory used and total, processes.
    for metric in ("esker_gpu_utilization_ratio", "esker_gpu_memory_used_bytes", "esker_gpu_processes"):
        assert any(t["legendFormat"].startswith("{{user}}/{{server}} {{device}}") for t in panel(metric)["targets"])
    assert panel("esker_gpu_memory_used_bytes") is panel("esker_gpu_memory_total_bytes")
    assert panel("esker_gpu_utilization_ratio")["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert "Kubernetes" in panel("esker_gpu_processes")["description"]
    # Idle time per server, and what the policy does with it.
    idle = panel("esker_gpu_idle_seconds")
    assert idle["targets"][0]["legendFormat"] == "{{user}}/{{server}}" and idle["fieldConfig"]["defaults"]["unit"] == "s"
    for words in ("gpus.policy.idle_timeout", "max_runtime", "0 while any is busy"):
        assert words in idle["description"]
    # Free of total by type, as a stat or bar gauge; stopped servers over an hour by reason.
    free = panel("esker_gpus_free")
    assert free is panel("esker_gpus_total") and free["type"] in ("stat", "bargauge")
    assert all(t.get("instant") for t in free["targets"])
    (stopped,) = exprs[panel("esker_gpu_servers_stopped_total")["title"]]
    assert _re.fullmatch(r"sum by \(reason\) \(increase\(esker_gpu_servers_stopped_total\[1h\]\)\)", stopped)
