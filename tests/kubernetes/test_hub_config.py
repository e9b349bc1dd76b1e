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
    env = {"ESKER_CONFIG": str(config_file), "ESKER_STATE_DIR": str(tmp_path / "state")}
    snippet = VALUES["jupyterhub"]["hub"]["extraConfig"]["esker"]
    assert "apply_kubernetes(c)" in snippet
    traits.apply_kubernetes(c, env)
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"existing", "esker-courses"}  # z2jh's own services are kept
    assert services["esker-courses"]["environment"]["ESKER_COURSES_BACKEND"] == "kubernetes"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "esker-courses" in roles
    instructor = [r for r in roles.values() if "ines" in r.get("users", [])]
    assert instructor and any("!group=intro-ml" in s for s in instructor[0]["scopes"])
    assert c.JupyterHub.load_groups["intro-ml"]["users"] == []
