"""Kubernetes as shipped is closed: Esker's auth (never z2jh's dummy authenticator), generated shared passwords in
a Secret, and explicit acknowledgements for what opens the hub up (dummy auth, Spark's k8s:// mode)."""

from __future__ import annotations

import base64

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config

from esker.app import configurer as traits
from test_chart import EVERYTHING, K8S_VERSIONS, OFFLINE, VALUES, Z2JH, by, merge, render

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
