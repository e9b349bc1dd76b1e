"""The chart's hub.extraConfig: z2jh's hub gets the esker-courses service and the course roles too."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from esker.app import configurer as traits

pytestmark = pytest.mark.kubernetes
REPO = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((REPO / "helm" / "esker" / "values.yaml").read_text())


def test_extra_config_adds_courses_service_and_roles(tmp_path):
    cfg = VALUES["esker"]["config"] | {"courses": [{
        "name": "intro-ml", "display_name": "Intro", "group": "intro-ml", "instructors": ["ines"],
        "content": {"git": "https://example.org/course.git"}, "profiles": ["scikit-learn"]}]}
    cfg["storage"] = {"enabled": False}
    config_file = tmp_path / "esker.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    c = Config()
    c.JupyterHub.services = [{"name": "existing", "api_token": "x" * 32}]
    env = {"ESKER_CONFIG": str(config_file), "ESKER_STATE_DIR": str(tmp_path / "state"),
           "ESKER_USER_PASSWORD": "u" * 16, "ESKER_ADMIN_PASSWORD": "a" * 40}
    snippet = VALUES["jupyterhub"]["hub"]["extraConfig"]["esker"]
    assert "apply_kubernetes(c)" in snippet
    traits.apply_kubernetes(c, env)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"existing", "esker-courses", "esker-functions"}  # z2jh's own services are kept
    assert services["esker-courses"]["environment"]["ESKER_COURSES_BACKEND"] == "kubernetes"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "esker-courses" in roles
    instructor = [r for r in roles.values() if "ines" in r.get("users", [])]
    assert instructor and any("!group=intro-ml" in s for s in instructor[0]["scopes"])
    assert c.JupyterHub.load_groups["intro-ml"]["users"] == []


def _extra_env(values=VALUES):
    return values["jupyterhub"]["hub"]["extraEnv"]


def _chart_hub(tmp_path, monkeypatch, pod_ip="10.244.3.7", port=None, courses=(), extra_env=None, z2jh=None):
    """Run the chart's extraConfig snippet as z2jh's jupyterhub_config.py does (exec, with `c`, after its own
    settings: ``z2jh`` {section: {trait: value}}), in the hub pod's environment (hub.extraEnv, the downward
    API's pod IP, the API server's variables)."""
    cfg = VALUES["esker"]["config"] | {"courses": list(courses), "hub": {"mode": "kubernetes"}}
    config_file = tmp_path / "esker.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    extra = _extra_env()
    env = {k: v for k, v in extra.items() if isinstance(v, str)}
    env |= {"ESKER_CONFIG": str(config_file), "ESKER_STATE_DIR": str(tmp_path / "state"), "ESKER_HUB_POD_IP": pod_ip,
            "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
            "ESKER_USER_PASSWORD": "u" * 16, "ESKER_ADMIN_PASSWORD": "a" * 40}  # from the Secret esker-auth
    if port:
        env["ESKER_COURSES_PORT"] = str(port)
    env |= extra_env or {}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    c = Config()
    c.JupyterHub.services = [{"name": "idle-culler", "command": ["python3", "-m", "jupyterhub_idle_culler"]}]
    for section, values in (z2jh or {}).items():
        c[section].update(values)
    exec(VALUES["jupyterhub"]["hub"]["extraConfig"]["esker"], {"c": c})
    return c, env


def _courses_service(tmp_path, monkeypatch, **kw):
    c, env = _chart_hub(tmp_path, monkeypatch, **kw)
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "esker-courses"]
    return service, env


def test_the_chart_runs_the_courses_service_in_the_hub_pod_where_the_proxy_reaches_it(tmp_path, monkeypatch):
    from esker.app.deployment import Deployment
    from esker.courses.roles import SERVICE_NAME

    extra = _extra_env()
    port = int(extra["ESKER_COURSES_PORT"])
    assert port == traits.KUBERNETES_COURSES_PORT
    assert extra["ESKER_HUB_POD_IP"] == {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    service, env = _courses_service(tmp_path, monkeypatch)
    # A JupyterHub-managed service (the hub starts and restarts it), the same command as embedded mode's.
    embedded = traits.to_traitlets(traits.config_mod.load(REPO / "esker.yaml").data,
                                   Deployment(state_dir=str(tmp_path / "e"), config_file="x", port=0, hub_port=0,
                                              proxy_api_port=0, proxy_command=[]))
    (same,) = [s for s in embedded["JupyterHub"]["services"] if s["name"] == SERVICE_NAME]
    assert service["command"][1:] == same["command"][1:] == ["-m", "esker.courses.service"]
    # Behind the proxy at the same path as embedded: /services/<name>/ under the hub's base URL (both "/").
    assert service["name"] == same["name"] and "prefix" not in service
    # The proxy is another pod: the url JupyterHub gives it (and the service listens on) is the hub pod's IP.
    assert service["url"] == f"http://10.244.3.7:{port}"
    assert same["url"].startswith("http://127.0.0.1:")
    environment = service["environment"]
    assert environment["ESKER_STATE_DIR"] == env["ESKER_STATE_DIR"] and environment["ESKER_CONFIG"] == env["ESKER_CONFIG"]
    assert environment["ESKER_COURSES_BACKEND"] == "kubernetes"
    # JupyterHub passes managed services only what `environment` lists: the in-cluster API config needs these.
    assert (environment["KUBERNETES_SERVICE_HOST"], environment["KUBERNETES_SERVICE_PORT"]) == ("10.96.0.1", "443")
    # IPv6 pods: a bracketed host.
    service6, _ = _courses_service(tmp_path, monkeypatch, pod_ip="fd00:10::7")
    assert service6["url"] == f"http://[fd00:10::7]:{port}"


def test_the_chart_state_dir_is_on_the_hubs_persistent_volume():
    z2jh = yaml.safe_load((REPO / "tests" / "fixtures" / "z2jh" / "values.yaml").read_text())
    hub = {**z2jh["hub"], **VALUES["jupyterhub"]["hub"]}
    assert hub["db"]["type"] == "sqlite-pvc"  # z2jh mounts the hub's PVC at /srv/jupyterhub for this type
    assert _extra_env()["ESKER_STATE_DIR"].startswith("/srv/jupyterhub/")


def test_the_service_listens_on_the_pod_ip_with_its_state_on_the_volume(tmp_path, monkeypatch):
    """Start the service as JupyterHub starts a managed service (its `environment` plus JupyterHub's variables)
    and reach it at the url the proxy is given."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))  # a second loopback address stands in for the pod's IP
        port = s.getsockname()[1]
    service, env = _courses_service(tmp_path, monkeypatch, pod_ip="127.0.0.2", port=port)
    assert service["url"] == f"http://127.0.0.2:{port}"
    run_env = {"PATH": env.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **service["environment"],
               "JUPYTERHUB_SERVICE_NAME": service["name"], "JUPYTERHUB_SERVICE_URL": service["url"],
               "JUPYTERHUB_SERVICE_PREFIX": f"/services/{service['name']}/", "JUPYTERHUB_API_TOKEN": "t" * 32,
               "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api", "ESKER_COURSES_PREWARM_EVERY": "3600",
               "ESKER_COURSES_CULL_EVERY": "3600"}
    run_env["PATH"] = f"{Path(sys.executable).parent}:{run_env['PATH']}"
    proc = subprocess.Popen([sys.executable, *service["command"][1:]], env=run_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"{service['url']}/services/esker-courses/", timeout=5) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code  # not logged in: the service answered
            except OSError:
                assert time.monotonic() < deadline, "the service did not listen on the pod's IP"
                time.sleep(0.3)
                continue
            break
        assert status < 500
        assert (Path(env["ESKER_STATE_DIR"]) / "courses.sqlite").exists()  # its store, on the hub's volume
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_chart_hub_refuses_a_content_path_course_at_start(tmp_path, monkeypatch):
    from esker.core.config import ConfigError

    path = {"name": "intro", "group": "intro", "content": {"path": "courses/intro-ml"}}
    with pytest.raises(ConfigError) as e:
        _courses_service(tmp_path, monkeypatch, courses=[path])
    assert [p.split(":")[0] for p in e.value.problems] == ["courses[0].content.path"]


# What z2jh 4.4's jupyterhub_config.py sets before hub.extraConfig runs (last): allow_named_servers and
# named_server_limit_per_user from hub.allowNamedServers/namedServerLimitPerUser (False/None by default),
# KubeSpawner.environment from singleuser.extraEnv (always, {} by default: it outranks Spawner.environment).
Z2JH_FIRST = {"JupyterHub": {"allow_named_servers": False},
              "KubeSpawner": {"environment": {"OPERATOR_VAR": "kept"}, "server_token_scopes": ["users:activity!user"]}}


def test_the_chart_runs_the_functions_service_in_the_hub_pod_behind_the_proxy(tmp_path, monkeypatch):
    from esker.functions.roles import SERVICE_NAME, SERVICE_SCOPES

    extra = _extra_env()
    port = int(extra["ESKER_FUNCTIONS_PORT"])
    assert port == traits.KUBERNETES_FUNCTIONS_PORT
    c, env = _chart_hub(tmp_path, monkeypatch, z2jh=Z2JH_FIRST)
    (service,) = [s for s in c.JupyterHub.services if s["name"] == SERVICE_NAME]
    # Listens on the pod's IP (the proxy, another pod, reaches it there), a managed service of the hub pod.
    assert service["url"] == f"http://10.244.3.7:{port}"
    assert service["command"][1:] == ["-m", "esker.functions.service"]
    environment = service["environment"]
    assert environment["ESKER_FUNCTIONS_PROXY_URL"] == "http://proxy-public" == traits.KUBERNETES_PROXY_URL
    assert environment["ESKER_STATE_DIR"] == env["ESKER_STATE_DIR"]
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == SERVICE_NAME]
    assert role["services"] == [SERVICE_NAME] and role["scopes"] == SERVICE_SCOPES
    # z2jh's values ran first and are overridden: named servers (fn-<name> only, through the gate).
    assert c.JupyterHub.allow_named_servers is True
    gate = c.JupyterHub.named_server_limit_per_user
    assert gate.limit == traits.config_mod.load(env["ESKER_CONFIG"]).data["functions"]["max_per_user"]
    # The notebooks' settings land on KubeSpawner's section (which z2jh always sets), merged with the operator's.
    kube = c.KubeSpawner
    assert kube.server_token_scopes == ["users:activity!user", "access:servers!server", "access:servers!user"]
    assert kube.environment == {"OPERATOR_VAR": "kept", "ESKER_HUB_URL": "http://proxy-public"}
    # Both overridable from the pod's environment; IPv6 pods get a bracketed host.
    c2, _ = _chart_hub(tmp_path, monkeypatch, pod_ip="fd00:10::7", extra_env={
        "ESKER_FUNCTIONS_PORT": "10222", "ESKER_FUNCTIONS_PROXY_URL": "http://proxy-public.hub.svc:80"})
    (service2,) = [s for s in c2.JupyterHub.services if s["name"] == SERVICE_NAME]
    assert service2["url"] == "http://[fd00:10::7]:10222"
    assert service2["environment"]["ESKER_FUNCTIONS_PROXY_URL"] == "http://proxy-public.hub.svc:80"
    assert c2.KubeSpawner.environment["ESKER_HUB_URL"] == "http://proxy-public.hub.svc:80"


def test_functions_disabled_adds_no_service_and_no_named_servers(tmp_path, monkeypatch):
    cfg = VALUES["esker"]["config"] | {"hub": {"mode": "kubernetes"}, "functions": {"enabled": False}}
    config_file = tmp_path / "off.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    c, _ = _chart_hub(tmp_path, monkeypatch, z2jh=Z2JH_FIRST, extra_env={"ESKER_CONFIG": str(config_file)})
    assert "esker-functions" not in {s["name"] for s in c.JupyterHub.services}
    assert "esker-functions" not in {r["name"] for r in c.JupyterHub.load_roles}
    assert c.JupyterHub.allow_named_servers is False
    assert c.KubeSpawner.environment == {"OPERATOR_VAR": "kept"}
