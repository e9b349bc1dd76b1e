"""Courses on Kubernetes, offline: the pod of a course participant (and of its instructor) built by
EskerKubeSpawner with KubeSpawner's real pod builder, validated strictly for Kubernetes 1.32 and the newest; the
init container that merges the course content (same image, notebook user, home volume), the datasets volume
(read-only for participants, read-write for instructors), and the merge command itself run for real."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from esker.cli import preview as cli_preview
from esker.resources import SHIPPED_CONFIG as DEFAULT_CONFIG
from esker.spawner import k8s_objects as ko

pytestmark = pytest.mark.kubernetes

K8S_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]
REPO = Path(__file__).resolve().parents[2]
HOME = [{"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
HOME_MOUNT = [{"name": "volume-{user_server}", "mountPath": "/home/jovyan"}]
GIT = "https://git.example.org/teach/intro-ml.git"


@pytest.fixture(scope="module", autouse=True)
def kubeconfig():
    with cli_preview.offline_kubeconfig():
        yield


def write_config(tmp_path, courses):
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["storage"] = {**data.get("storage", {}), "datasets": [{"name": "weather", "bucket": "shared",
                                                                 "prefix": "weather/"},
                                                                {"name": "climate", "bucket": "shared",
                                                                 "prefix": "climate/"}]}
    data["courses"] = courses
    path = tmp_path / "esker.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


COURSES = [
    {"name": "intro-ml", "group": "intro-ml", "instructors": ["ines"], "profiles": ["scikit-learn"],
     "content": {"git": GIT, "ref": "2026-11", "subdir": "notebooks"}, "datasets": ["weather"]},
    {"name": "stats", "group": "stats", "datasets": ["climate"]},  # no content: only the dataset link
]


def pod_for(config_file, user, groups=(), admin=False, **traits):
    async def run():
        sp = cli_preview.make_spawner(user, groups, admin, config_file, {"profile": "scikit-learn"},
                                      volumes=HOME, volume_mounts=HOME_MOUNT, uid=1000, gid=100, **traits)
        return await sp.esker_manifests()

    docs = asyncio.run(run())
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    return docs[0]


def course_inits(pod):
    """The course init containers: every pod starts with the scratch one (k8s_objects.scratch_init_container)."""
    inits = pod["spec"].get("initContainers") or []
    assert inits and inits[0]["name"] == ko.SCRATCH_VOLUME
    return inits[1:]


def test_participant_pod_has_the_merge_init_container_and_read_only_datasets(tmp_path):
    pod = pod_for(write_config(tmp_path, COURSES), "ana", ["intro-ml", "stats"])
    spec = pod["spec"]
    main = spec["containers"][0]
    inits = course_inits(pod)
    assert [i["name"] for i in inits] == ["course-intro-ml", "course-stats"]
    ml, stats = inits
    # Same image as the profile, as the notebook user, on the user's own home volume
    assert ml["image"] == main["image"] == "quay.io/esker/scikit-learn-notebook:2026.11"
    assert ml["securityContext"]["runAsUser"] == 1000 and ml["securityContext"]["runAsGroup"] == 100
    assert ml["securityContext"]["runAsNonRoot"] is True and ml["securityContext"]["allowPrivilegeEscalation"] is False
    assert ml["volumeMounts"] == [{"name": "volume-ana", "mountPath": "/home/jovyan"}]
    assert {"name": "volume-ana", "persistentVolumeClaim": {"claimName": "claim-ana"}} in spec["volumes"]
    # The one merge implementation, from esker-client, with the git source and the dataset link
    assert ml["command"][:5] == ["python", "-m", "esker_client.course_merge", "merge", "notebooks"]
    cmd = ml["command"]
    assert cmd[5] == "/home/jovyan/intro-ml" and cmd[cmd.index("--git") + 1] == GIT
    assert cmd[cmd.index("--ref") + 1] == "2026-11" and "--keep-going" in cmd
    assert cmd[cmd.index("--link") + 1] == f"data/weather={ko.DATASETS_ROOT}/weather"
    assert stats["command"][4:6] == ["", "/home/jovyan/stats"] and "--git" not in stats["command"]
    # Datasets: one read-only claim, each dataset mounted read-only (subPath) in the notebook container only
    (vol,) = [v for v in spec["volumes"] if v["name"] == ko.DATASETS_VOLUME]
    assert vol["persistentVolumeClaim"] == {"claimName": "esker-datasets", "readOnly": True}
    ds = [m for m in main["volumeMounts"] if m["name"] == ko.DATASETS_VOLUME]
    assert ds == [{"name": ko.DATASETS_VOLUME, "mountPath": f"{ko.DATASETS_ROOT}/climate", "subPath": "climate",
                   "readOnly": True},
                  {"name": ko.DATASETS_VOLUME, "mountPath": f"{ko.DATASETS_ROOT}/weather", "subPath": "weather",
                   "readOnly": True}]
    assert not any(m["name"] == ko.DATASETS_VOLUME for i in inits for m in i["volumeMounts"])
    # The scratch volume is still there
    assert any(v["name"] == ko.SCRATCH_VOLUME for v in spec["volumes"])


def test_instructor_gets_read_write_for_the_course_she_teaches(tmp_path):
    pod = pod_for(write_config(tmp_path, COURSES), "ines", ["stats"])
    spec = pod["spec"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == ko.DATASETS_VOLUME]
    assert vol["persistentVolumeClaim"]["readOnly"] is False
    mounts = {m["subPath"]: m["readOnly"] for m in spec["containers"][0]["volumeMounts"]
              if m["name"] == ko.DATASETS_VOLUME}
    assert mounts == {"weather": False, "climate": True}  # teaches intro-ml, takes stats


def test_no_courses_no_changes_and_options(tmp_path):
    config_file = write_config(tmp_path, COURSES)
    pod = pod_for(config_file, "outsider", ["others"])
    assert not course_inits(pod)
    assert not any(v["name"] == ko.DATASETS_VOLUME for v in pod["spec"]["volumes"])
    # No datasets claim configured: no volume, no links; the content still arrives
    pod = pod_for(config_file, "ana", ["intro-ml"], course_datasets_claim="")
    (init,) = course_inits(pod)
    assert "--link" not in init["command"]
    assert not any(v["name"] == ko.DATASETS_VOLUME for v in pod["spec"]["volumes"])
    # content.path is a folder on the hub: not delivered on Kubernetes (the dataset link still is)
    cf = write_config(tmp_path, [{"name": "local", "group": "g", "content": {"path": "courses/intro-ml"},
                                  "datasets": ["weather"]}])
    (init,) = course_inits(pod_for(cf, "ana", ["g"]))
    assert init["command"][4] == "" and "--git" not in init["command"]


def test_template_characters_in_a_git_url_survive_kubespawner_and_kubernetes(tmp_path):
    url = "https://git.example.org/{user}/$(HOME)/x.git"
    cf = write_config(tmp_path, [{"name": "c", "group": "g", "content": {"git": url}}])
    (init,) = course_inits(pod_for(cf, "ana", ["g"]))
    # KubeSpawner's {template} expansion is undone; Kubernetes' $(VAR) is escaped as $$(
    assert init["command"][init["command"].index("--git") + 1] == "https://git.example.org/{user}/$$(HOME)/x.git"


def test_the_init_containers_command_merges_with_the_embedded_rules(tmp_path):
    """Run the command the init container runs (the packaged module, as a script), with a local git repo."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "notebooks" / "01.ipynb").write_text("one")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "one"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    from types import SimpleNamespace

    course = SimpleNamespace(name="intro-ml", datasets=("weather",),
                             content={"git": f"file://{repo}", "ref": "main", "subdir": "notebooks"})
    home = tmp_path / "home"
    init = ko.course_init_container(course, "img", str(home), [], 1000, 100)
    cmd = [a.replace("{{", "{").replace("}}", "}") for a in init["command"]]
    src = REPO / "images" / "esker-client" / "src"
    run = lambda: subprocess.run([sys.executable, "-I", str(src / "esker_client" / "course_merge.py"), *cmd[3:]],
                                 capture_output=True, text=True, check=True)
    report = json.loads(run().stdout.splitlines()[-1])
    assert report["added"] == ["01.ipynb"] and (home / "intro-ml" / "01.ipynb").read_text() == "one"
    assert os.readlink(home / "intro-ml" / "data" / "weather") == f"{ko.DATASETS_ROOT}/weather"
    (home / "intro-ml" / "01.ipynb").write_text("mine")
    assert json.loads(run().stdout.splitlines()[-1])["kept"] == ["01.ipynb"]  # the user's edit is kept
    assert (home / "intro-ml" / "01.ipynb").read_text() == "mine"
    # An unreachable remote: the files stay, the pod still starts (exit 0)
    cmd[cmd.index("--git") + 1] = f"file://{tmp_path}/missing"
    r = run()
    assert "content not updated" in r.stderr and (home / "intro-ml" / "01.ipynb").read_text() == "mine"
