"""The Helm chart, offline: lint, render, strict validation of every object, and the values it hands to
Zero to JupyterHub checked against z2jh's own schema."""

from __future__ import annotations

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
    (cm,) = by(docs, "ConfigMap", "esker-config")
    return yaml.safe_load(cm["data"]["esker.yaml"])


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
    if values is OFFLINE:
        assert kinds == ["ConfigMap", "Deployment", "Deployment", "NetworkPolicy", "NetworkPolicy",
                         "NetworkPolicy", "PriorityClass", "Secret", "Service"]
    else:
        assert kinds == ["ConfigMap", "ConfigMap", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy",
                         "PriorityClass", "Role", "RoleBinding", "Secret", "ServiceMonitor"]


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


@pytest.mark.parametrize("values", [OFFLINE, EVERYTHING], ids=["defaults", "everything"])
def test_network_policies_keep_user_pods_apart(values):
    docs = render(values)
    (user,) = by(docs, "NetworkPolicy", "esker-singleuser")
    assert user["spec"]["podSelector"]["matchLabels"] == {"app": "jupyterhub", "component": "singleuser-server"}
    for rule in user["spec"]["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert values is EVERYTHING and peer["ipBlock"]["cidr"] == "10.96.0.1/32"
                continue
            assert not _selects_singleuser(peer), peer
    for rule in user["spec"]["ingress"]:
        assert not any(_selects_singleuser(p) for p in rule["from"])
        assert sorted(p["port"] for p in rule["ports"]) == [ko.SPARK_DRIVER_PORT, ko.SPARK_BLOCK_MANAGER_PORT]
    egress = [p for rule in user["spec"]["egress"] for p in rule["to"]]
    assert {"app": "jupyterhub", "component": "hub"} in [p.get("podSelector", {}).get("matchLabels") for p in egress]
    assert any(p.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for p in egress)
    if values is EVERYTHING:
        assert any(p.get("podSelector", {}).get("matchLabels") == {"app": "rook-ceph-rgw"} for p in egress)
    for np in by(docs, "NetworkPolicy"):
        if np["metadata"]["name"] == "esker-singleuser":
            continue
        to_users = [r for r in np["spec"]["egress"] if any(_selects_singleuser(p) for p in r["to"])]
        assert [sorted(p["port"] for p in r["ports"]) for r in to_users] == [[ko.SPARK_DRIVER_PORT, ko.SPARK_BLOCK_MANAGER_PORT]]


def test_config_map_is_a_valid_esker_config_with_the_shipped_catalog():
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
    assert ingress["ports"] == [{"port": port, "protocol": "TCP"}]
    (egress,) = VALUES["jupyterhub"]["proxy"]["chp"]["networkPolicy"]["egress"]
    assert egress["to"] == [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}]
    assert egress["ports"] == ingress["ports"]
    # Valid z2jh values (the schema test covers the whole file); a misplaced rule is refused.
    defaults = yaml.safe_load((Z2JH / "values.yaml").read_text())
    schema = yaml.safe_load((Z2JH / "values.schema.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(
            merge(merge(defaults, VALUES["jupyterhub"]), {"hub": {"networkPolicy": {"ingres": []}}}))


def test_spark_master_and_workers_match_the_config():
    docs = render()
    cfg = validate(rendered_config(docs)).data
    (svc,) = by(docs, "Service", "esker-spark-master")
    assert cfg["kubernetes"]["spark_master_service"] == f"spark://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    (worker,) = by(docs, "Deployment", "esker-spark-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["args"][-1] == cfg["kubernetes"]["spark_master_service"]
    spark_profile = next(p for p in cfg["profiles"] if p["spark"])
    assert container["image"] == spark_profile["image"]  # executors run the notebooks' Python code
    assert by(docs, "Deployment", "esker-spark-master")[0]["spec"]["selector"]["matchLabels"].items() <= \
        by(docs, "Deployment", "esker-spark-master")[0]["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= \
        by(docs, "Deployment", "esker-spark-master")[0]["spec"]["template"]["metadata"]["labels"].items()


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
                 {"esker": {"spark": {"worker": {"replica": 3}}}}, {"esker": {"networkPolicy": {"enabled": "yes"}}}):
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
    assert vol["configMap"]["name"] == by(render(), "ConfigMap")[0]["metadata"]["name"] == "esker-config"
    assert mount["name"] == vol["name"] and hub["extraEnv"]["ESKER_CONFIG"] == f"{mount['mountPath']}/esker.yaml"
