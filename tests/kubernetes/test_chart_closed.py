"""Kubernetes as shipped is closed: Esker's auth (never z2jh's dummy authenticator), generated shared passwords in
a Secret, and explicit acknowledgements for what opens the hub up (dummy auth, Spark's k8s:// mode)."""

from __future__ import annotations

import base64

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from test_chart import (
    EVERYTHING,
    K8S_VERSIONS,
    OFFLINE,
    VALUES,
    Z2JH,
    by,
    merge,
    render,
)
from traitlets.config import Config

from esker.app import configurer as traits

pytestmark = pytest.mark.kubernetes

DUMMY = {"esker": {"config": {"auth": {"type": "dummy"}}}}
OAUTH = {"type": "oauth", "oauth": {"client_id": "esker", "authorize_url": "https://idp/auth",
                                    "token_url": "https://idp/token", "userdata_url": "https://idp/userinfo"}}


def _z2jh(values):
    defaults = yaml.safe_load((Z2JH / "values.yaml").read_text())
    schema = yaml.safe_load((Z2JH / "values.schema.yaml").read_text())
    merged = merge(defaults, values)
    jsonschema.Draft7Validator(schema).validate(merged)
    return merged


def test_the_hub_never_serves_the_dummy_authenticator():
    assert _z2jh(VALUES["jupyterhub"])["hub"]["config"]["JupyterHub"]["authenticator_class"] == "shared-password"
    for ok in (OFFLINE, EVERYTHING, merge(OFFLINE, {"esker": {"config": {"auth": OAUTH}}})):
        docs = render(ok)
        assert "dummy" not in yaml.safe_dump_all(d for d in docs if d["kind"] != "Secret").lower()
    with pytest.raises(helm.HelmRenderError, match="acknowledgeDummyAuth"):
        render(merge(OFFLINE, DUMMY))
    with pytest.raises(helm.HelmRenderError, match="acknowledgeDummyAuth"):  # nor through z2jh's own value
        render(merge(OFFLINE, {"jupyterhub": {"hub": {"config": {"JupyterHub": {"authenticator_class": "dummy"}}}}}))
    assert render(merge(OFFLINE, merge(DUMMY, {"esker": {"acknowledgeDummyAuth": True}})))


def test_shared_passwords_are_generated_into_a_secret_the_hub_reads_by_reference():
    (secret,) = by(render(), "Secret", "esker-auth")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    user, admin = (base64.b64decode(secret["data"][k]).decode() for k in ("user-password", "admin-password"))
    assert len(user) >= 16 and len(admin) >= 32 and user != admin  # SharedPasswordAuthenticator's minimums
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (again,) = by(render(), "Secret", "esker-auth")
    assert again["data"] != secret["data"]  # randAlphaNum on a fresh install; `lookup` keeps it on upgrades
    env = VALUES["jupyterhub"]["hub"]["extraEnv"]
    for var, key in (("ESKER_USER_PASSWORD", "user-password"), ("ESKER_ADMIN_PASSWORD", "admin-password")):
        assert env[var] == {"valueFrom": {"secretKeyRef": {"name": "esker-auth", "key": key}}}


def _hub_config(tmp_path, auth, **env):
    cfg = VALUES["esker"]["config"] | {"auth": auth, "hub": {"mode": "kubernetes"}}
    (tmp_path / "esker.yaml").write_text(yaml.safe_dump(cfg))
    c = Config()
    c.JupyterHub.authenticator_class = "dummy"  # what z2jh would leave
    traits.apply_kubernetes(c, {"ESKER_CONFIG": str(tmp_path / "esker.yaml"), "ESKER_STATE_DIR": str(tmp_path / "s"),
                                "ESKER_HUB_POD_IP": "10.0.0.5", **env})
    return c


def test_the_hub_applies_eskers_auth_over_z2jhs(tmp_path):
    c = _hub_config(tmp_path, {"type": "shared-password"}, ESKER_USER_PASSWORD="u" * 16,
                    ESKER_ADMIN_PASSWORD="a" * 40)
    assert c.JupyterHub.authenticator_class == "shared-password"
    assert c.SharedPasswordAuthenticator.user_password == "u" * 16
    assert c.SharedPasswordAuthenticator.admin_password == "a" * 40
    c = _hub_config(tmp_path, OAUTH)
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert c.GenericOAuthenticator.client_id == "esker"
    with pytest.raises(RuntimeError, match="ESKER_USER_PASSWORD"):  # no Secret: the hub does not start open
        _hub_config(tmp_path, {"type": "shared-password"})


def test_spark_kubernetes_mode_needs_an_acknowledgement():
    k8s = {"esker": {"config": {"kubernetes": {"spark_mode": "kubernetes"}}}}
    with pytest.raises(helm.HelmRenderError, match="acknowledgeSparkKubernetesMode"):
        render(merge(OFFLINE, k8s))
    docs = render(merge(OFFLINE, merge(k8s, {"esker": {"acknowledgeSparkKubernetesMode": True}})))
    assert by(docs, "Role", "esker-hub-spark")
    # Spark off: nothing to acknowledge; standalone (the default) never needs it.
    assert render(merge(OFFLINE, merge(k8s, {"esker": {"config": {"spark": {"enabled": False}}}})))
    assert render(OFFLINE)


def test_z2jh_singleuser_policy_admits_no_private_peer():
    """z2jh's own singleuser NetworkPolicy (its chart is not vendored: its inputs, as the chart's values and
    z2jh's defaults give them, checked against z2jh's schema) opens nothing towards other user pods or the
    hub's internal ports; what user pods may reach inside the cluster is Esker's esker-singleuser policy
    (test_chart.py::test_network_policies_keep_user_pods_apart)."""
    merged = _z2jh(VALUES["jupyterhub"])
    np = merged["singleuser"]["networkPolicy"]
    assert np["enabled"] is True
    rules = np["egressAllowRules"]
    # privateIPs: every private address on every port (other user pods, the proxy's API, the hub's services);
    # dnsPortsPrivateIPs: port 53 of every private address (other user pods included); cloudMetadataServer: the
    # node's credentials.
    assert rules["privateIPs"] is False and rules["dnsPortsPrivateIPs"] is False and rules["cloudMetadataServer"] is False
    assert rules["dnsPortsKubeSystemNamespace"] is True  # DNS still resolves (kube-dns)
    assert np["egress"] == [] and np["ingress"] == [] and np["allowedIngressPorts"] == []
    assert np["interNamespaceAccessLabels"] == "ignore"  # no pod of another namespace is let in by label
    # User pods carry the label that admits them to the hub's API (port 8081), nothing that admits them
    # to other user pods.
    labels = merged["singleuser"]["extraLabels"]
    assert labels.get("hub.jupyter.org/network-access-hub") == "true"
    assert not any(k.startswith("hub.jupyter.org/network-access-") and k != "hub.jupyter.org/network-access-hub"
                   for k in labels)
    # The hub's extra ingress (esker-courses, port 10101) admits the proxy only, never user pods.
    for rule in merged["hub"]["networkPolicy"]["ingress"]:
        for peer in rule["from"]:
            assert peer["podSelector"]["matchLabels"].get("component") != "singleuser-server"
            assert peer["podSelector"]["matchLabels"] != {}
    # Esker's own policy ORed with it: from user pods, only the hub's 8081 among the hub's ports.
    (user,) = by(render(), "NetworkPolicy", "esker-singleuser")
    to_hub = [r for r in user["spec"]["egress"] for p in r["to"]
              if p.get("podSelector", {}).get("matchLabels", {}).get("component") in ("hub", "proxy")]
    assert [[p["port"] for p in r["ports"]] for r in to_hub] == [[8081]]


def test_secrets_of_the_esker_config_are_in_a_secret_never_in_a_config_map():
    """esker.config may hold secrets: OAuth's client_secret, the RGW admin keys, a course password, a git URL with
    a token. The chart hands the whole file to the hub as the Secret esker-config (mounted by hub.extraVolumes);
    no ConfigMap, no other object, carries any of them."""
    marks = {"oauth": "oauth-Cl13nt-S3cret", "rgw": "rgw-Adm1n-S3cret", "course": "c0urse-Passw0rd",
             "git": "ghp_t0ken"}
    values = merge(OFFLINE, {"esker": {"config": {
        "auth": merge(OAUTH, {"oauth": {"client_secret": marks["oauth"]}}),
        "storage": {"enabled": True, "endpoint": "http://rgw.example", "admin_access_key": "ADMIN",
                    "admin_secret_key": marks["rgw"]},
        "courses": [{"name": "intro", "group": "intro", "password": marks["course"],
                     "content": {"git": f"https://x:{marks['git']}@git.example/intro.git"}}]}}})
    docs = render(values)
    plain = yaml.safe_dump_all(d for d in docs if d["kind"] != "Secret")
    for mark in marks.values():
        assert mark not in plain
    (secret,) = by(docs, "Secret", "esker-config")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    text = base64.b64decode(secret["data"]["esker.yaml"]).decode()
    assert all(mark in text for mark in marks.values())
    cfg = yaml.safe_load(text)
    assert cfg["auth"]["oauth"]["client_secret"] == marks["oauth"] and cfg["hub"]["mode"] == "kubernetes"
    assert not by(docs, "ConfigMap", "esker-config")
    # The hub mounts that Secret where ESKER_CONFIG points, and applies the client secret from it.
    hub = VALUES["jupyterhub"]["hub"]
    (vol,) = [v for v in hub["extraVolumes"] if v["name"] == "esker-config"]
    assert vol == {"name": "esker-config", "secret": {"secretName": "esker-config"}}
    (mount,) = [m for m in hub["extraVolumeMounts"] if m["name"] == "esker-config"]
    assert hub["extraEnv"]["ESKER_CONFIG"] == f"{mount['mountPath']}/esker.yaml"
    assert _z2jh(VALUES["jupyterhub"])["hub"]["extraVolumes"] == hub["extraVolumes"]


def test_the_hub_takes_the_oauth_client_secret_from_the_config_secret(tmp_path):
    c = _hub_config(tmp_path, merge(OAUTH, {"oauth": {"client_secret": "oauth-Cl13nt-S3cret"}}))
    assert c.GenericOAuthenticator.client_secret == "oauth-Cl13nt-S3cret"
