"""The images without a Docker engine: Dockerfiles parsed and checked, lock files checked against their inputs,
and tools/image_tags.py and images/images.mk exercised on temporary copies."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
NOTEBOOK_IMAGES = ["minimal", "scikit-learn", "spark", "tensorflow-gpu"]
ALL_IMAGES = NOTEBOOK_IMAGES + ["hub"]
LOCKED = sorted(p.parent.name for p in IMAGES.glob("*/requirements.lock"))


# --- a small Dockerfile parser ----------------------------------------------------------------------


@dataclass
class Instruction:
    cmd: str  # upper case: FROM, RUN, ...
    value: str  # the arguments, continuation lines joined
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comments and blank lines dropped, backslash continuations joined."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue  # comments and parser directives (# syntax=...) outside an instruction
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are removed by Docker
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].rstrip())
            continue
        buf.append(stripped)
        joined = " ".join(x for x in buf if x)
        buf = []
        cmd, _, value = joined.partition(" ")
        out.append(Instruction(cmd.upper(), value.strip(), start))
    assert not buf, "the Dockerfile ends inside a continued instruction"
    return out


def args_and_env(instrs: list[Instruction]) -> dict[str, str]:
    """ARG defaults and ENV values, in the simple `K=V` forms our Dockerfiles use."""
    found: dict[str, str] = {}
    for i in instrs:
        if i.cmd in ("ARG", "ENV"):
            for m in re.finditer(r"""([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|'[^']*'|\S*)""", i.value):
                found[m.group(1)] = m.group(2).strip("\"'")
            if i.cmd == "ARG" and "=" not in i.value:
                found.setdefault(i.value.strip(), "")
    return found


def dockerfile(name: str) -> list[Instruction]:
    return parse_dockerfile((IMAGES / name / "Dockerfile").read_text())


def runs(instrs: list[Instruction]) -> list[str]:
    return [i.value for i in instrs if i.cmd == "RUN"]


def copies(instrs: list[Instruction]) -> list[list[str]]:
    """COPY sources and destination, flags dropped: [[src..., dest], ...]."""
    out = []
    for i in instrs:
        if i.cmd in ("COPY", "ADD"):
            out.append([w for w in i.value.split() if not w.startswith("--")])
    return out


def test_parser_handles_continuations_and_comments():
    text = "# syntax=docker/dockerfile:1\nFROM a:1\n\nRUN one && \\\n  # note\n  two\nuser 1000\n"
    got = [(i.cmd, i.value, i.line) for i in parse_dockerfile(text)]
    assert got == [("FROM", "a:1", 2), ("RUN", "one && two", 4), ("USER", "1000", 7)]


# --- every image ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_image_folder_has_dockerfile_and_readme(name):
    assert (IMAGES / name / "Dockerfile").is_file()
    readme = IMAGES / name / "README.md"
    assert readme.is_file() and len(readme.read_text().strip()) > 100


def image_ref(ref: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag, digest
    return ref, None, digest


def resolve(value: str, known: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: known.get(m.group(1), m.group(0)), value)


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_base_images_are_pinned(name):
    instrs = dockerfile(name)
    known = args_and_env(instrs)
    froms = [i for i in instrs if i.cmd == "FROM"]
    assert froms, "no FROM"
    for f in froms:
        ref = resolve(f.value.split()[0], known)
        assert "$" not in ref, f"line {f.line}: FROM {f.value} does not resolve to a fixed image"
        repo, tag, digest = image_ref(ref)
        assert tag or digest, f"line {f.line}: {ref} has neither a tag nor a digest"
        assert tag != "latest" and not (tag or "").endswith("-latest"), f"line {f.line}: {ref} is not pinned"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    repo, tag, _ = image_ref(resolve(froms[-1].value.split()[0], known))
    if name == "hub":
        assert repo == "quay.io/jupyterhub/k8s-hub" and re.fullmatch(r"4\.4\.\d+", tag or "")
    else:
        assert repo.startswith("quay.io/jupyter/")
        # A dated Docker Stacks build (optionally a variant prefix such as cuda-), never a moving tag.
        assert re.fullmatch(r"([a-z0-9]+-)?\d{4}-\d{2}-\d{2}", tag or ""), tag


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_final_user_is_not_root(name):
    instrs = dockerfile(name)
    last_from = max(n for n, i in enumerate(instrs) if i.cmd == "FROM")
    users = [i.value.split(":")[0] for i in instrs[last_from:] if i.cmd == "USER"]
    assert users, "no USER after the last FROM: the image would run as its base's user"
    assert users[-1] not in ("root", "0"), f"the image ends as {users[-1]}"
    if name == "hub":
        assert users[-1].isdigit(), "numeric, so Kubernetes runAsNonRoot can check it"
    else:
        assert users[-1] in ("${NB_UID}", "$NB_UID"), "Docker Stacks images end as the notebook user"


@pytest.mark.parametrize("name", NOTEBOOK_IMAGES)
def test_lock_file_installed_without_resolving(name):
    instrs = dockerfile(name)
    srcs = [s for c in copies(instrs) for s in c[:-1]]
    assert f"{name}/requirements.lock" in srcs, "the image must install the lock the embedded mode uses"
    assert any(re.search(r"pip\S*\"? install .*--no-deps.*-r \S*requirements\.lock", r) for r in runs(instrs))


@pytest.mark.parametrize("name", NOTEBOOK_IMAGES)
def test_esker_client_installed(name):
    instrs = dockerfile(name)
    assert any(c[0] == "esker-client" for c in copies(instrs))
    assert any(re.search(r"pip\S*\"? install .*esker-client", r) for r in runs(instrs))
    assert any("import esker_client" in r for r in runs(instrs)), "the build should prove the import works"


@pytest.mark.parametrize("name", NOTEBOOK_IMAGES)
def test_servers_use_the_locked_environment(name):
    instrs = dockerfile(name)
    env = args_and_env(instrs)
    assert env.get("PATH", "").startswith("/opt/conda/envs/esker/bin:")
    assert env.get("DOCKER_STACKS_CONDA_ENV") == "esker"
    assert any("mamba create" in r and "python=${PYTHON_VERSION}" in r for r in runs(instrs))
    assert env.get("PYTHON_VERSION") == "3.11", "the locks are compiled for Python 3.11"


SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_no_secrets(name):
    text = (IMAGES / name / "Dockerfile").read_text()
    instrs = parse_dockerfile(text)
    for key in args_and_env(instrs):
        assert not SECRET_NAME.search(key), f"{key}: secrets must be injected at run time, never baked in"
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id"
    assert not re.search(r"aws_secret_access_key|AWS_SECRET_ACCESS_KEY", text)
    assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text)
    for i in instrs:
        assert not (i.cmd == "RUN" and re.search(r"--mount=type=secret", i.value) is None
                    and re.search(r"(password|passwd)\s*=", i.value, re.I)), f"line {i.line}"


# --- image specifics --------------------------------------------------------------------------------


def test_spark_image_adds_java_and_s3a_jars_with_checksums():
    instrs = dockerfile("spark")
    known = args_and_env(instrs)
    run_text = resolve(" ".join(runs(instrs)), known)
    assert re.search(r"apt-get install .*openjdk-17-jre-headless", run_text)
    assert known.get("SPARK_HOME", "").endswith("/site-packages/pyspark")
    assert any('cd "${SPARK_HOME}/jars"' in r for r in runs(instrs)), "the jars go into $SPARK_HOME/jars"
    urls = re.findall(r"https://repo1\.maven\.org/maven2/\S+?\.jar", run_text)
    jars = {u.rsplit("/", 1)[1]: u for u in urls}
    hadoop = known["HADOOP_AWS_VERSION"]
    assert f"hadoop-aws-{hadoop}.jar" in jars
    assert f"bundle-{known['AWS_SDK_BUNDLE_VERSION']}.jar" in jars
    assert jars[f"bundle-{known['AWS_SDK_BUNDLE_VERSION']}.jar"].startswith(
        "https://repo1.maven.org/maven2/software/amazon/awssdk/bundle/")
    # Every downloaded jar is checked against a pinned SHA-1, and the check runs.
    for jar in jars:
        assert re.search(r"\b[0-9a-f]{40}\"?\s+\"?" + re.escape(jar), run_text), f"{jar} has no pinned checksum"
    assert "sha1sum --check --strict" in run_text
    # hadoop-aws must be the Hadoop version the locked pyspark bundles (checked at build time too).
    assert f"hadoop-client-api-{hadoop}.jar" in run_text
    try:
        import pyspark
    except ImportError:
        return
    lock = locked_versions(IMAGES / "spark" / "requirements.lock")
    if pyspark.__version__ == lock["pyspark"]:
        bundled = [p.name for p in (Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar")]
        assert bundled == [f"hadoop-client-api-{hadoop}.jar"], bundled


def test_spark_image_entrypoint_runs_executors_and_passes_the_rest_to_start_sh():
    """spark_mode: kubernetes starts executors from this image with the argument `executor` and no command:
    the image's entrypoint must be Esker's (tests/kubernetes/test_spark_executor_image.py runs it)."""
    instrs = dockerfile("spark")
    last_from = max(n for n, i in enumerate(instrs) if i.cmd == "FROM")
    final = instrs[last_from:]
    script = IMAGES / "spark" / "esker-spark-entrypoint.sh"
    assert script.is_file() and script.stat().st_mode & 0o111, "the script is executable in the repository too"
    installed = "/usr/local/bin/esker-spark-entrypoint"
    (copy,) = [i for i in final if i.cmd == "COPY" and "spark/esker-spark-entrypoint.sh" in i.value]
    assert copy.value.split()[-1] == installed and "--chmod=0755" in copy.value.split()
    entrypoints = [json.loads(i.value) for i in final if i.cmd == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == ["tini", "-g", "--", installed], "tini as PID 1, as in the base image"
    cmds = [json.loads(i.value) for i in final if i.cmd == "CMD"]
    # A new ENTRYPOINT resets the base's CMD; without it `docker run IMAGE` would start nothing.
    assert cmds and cmds[-1] == ["start-notebook.py"]
    assert [n for n, i in enumerate(final) if i.cmd == "ENTRYPOINT"][-1] > [n for n, i in enumerate(final) if i is copy][0]
    env = args_and_env(instrs)
    assert env.get("JAVA_HOME") and env.get("SPARK_HOME"), "the entrypoint finds java and the jars through them"
    # The build proves pyspark ships the backend the script starts; run that same check on pip's pyspark.
    backend = re.search(r"org\.apache\.spark\.scheduler\.cluster\.k8s\.KubernetesExecutorBackend", script.read_text())
    assert backend
    (check,) = [r for r in runs(final) if "KubernetesExecutorBackend.class" in r]
    code = re.fullmatch(r'"\$\{ESKER_ENV_DIR\}/bin/python" -c "(.*)"', check).group(1)
    try:
        import pyspark
    except ImportError:
        return
    spark_home = str(Path(pyspark.__file__).parent)
    subprocess.run([sys.executable, "-c", code], env={"SPARK_HOME": spark_home}, check=True, timeout=60)
    bad = subprocess.run([sys.executable, "-c", code], env={"SPARK_HOME": "/nonexistent"}, capture_output=True)
    assert bad.returncode != 0, "the build check must be able to fail"


def test_tensorflow_image_adds_pinned_cuda_libraries():
    instrs = dockerfile("tensorflow-gpu")
    srcs = [s for c in copies(instrs) for s in c[:-1]]
    assert "tensorflow-gpu/requirements-cuda.lock" in srcs
    assert any(re.search(r"install .*--no-deps -r \S*requirements-cuda\.lock", r) for r in runs(instrs))
    cuda = locked_versions(IMAGES / "tensorflow-gpu" / "requirements-cuda.lock")
    assert any(n.startswith("nvidia-cudnn") for n in cuda) and any(n.startswith("nvidia-cublas") for n in cuda)


def test_hub_image_installs_esker():
    instrs = dockerfile("hub")
    srcs = [s for c in copies(instrs) for s in c[:-1]]
    assert {"pyproject.toml", "esker", "esker.yaml"} <= set(srcs)
    root = IMAGES.parent
    assert all((root / src).exists() for src in srcs if "*" not in src), srcs
    assert any(re.search(r"pip install .*/tmp/esker(\s|$)", r) for r in runs(instrs))
    assert any("pip check" in r for r in runs(instrs))
    # The chart's hub runs the spawner, the configurer's extraConfig and the esker-courses service from it.
    (imports,) = [r for r in runs(instrs) if "python -c \"import esker" in r]
    assert {"esker.spawner.kubernetes", "esker.app.configurer", "esker.courses.service"} <= set(
        re.search(r'python -c "import ([^"]+)"', imports).group(1).replace(" ", "").split(","))
    ignore = (IMAGES / "hub" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[0] == "*" or "*" in ignore, "the repository-root context must not send .venv and the rest"


# --- lock files -------------------------------------------------------------------------------------


def lock_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def locked_versions(path: Path) -> dict[str, str]:
    out = {}
    for line in lock_lines(path):
        req = Requirement(line)
        (spec,) = req.specifier
        out[canonicalize_name(req.name)] = spec.version
    return out


ALL_LOCKS = sorted(IMAGES.glob("*/requirements*.lock"))


def test_every_notebook_image_has_a_lock():
    assert set(NOTEBOOK_IMAGES) <= set(LOCKED)


@pytest.mark.parametrize("lock", ALL_LOCKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lock_pins_every_requirement(lock):
    lines = lock_lines(lock)
    assert lines
    for line in lines:
        assert not line.startswith("-"), f"{line}: options (-e, -r, --index-url) do not belong in a lock"
        req = Requirement(line)
        assert req.url is None, f"{line}: a URL requirement"
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{line}: not pinned with =="
        assert "*" not in specs[0].version, f"{line}: a wildcard pin"
    names = [canonicalize_name(Requirement(x).name) for x in lines]
    assert len(names) == len(set(names)), "a package pinned twice"


def input_requirements(path: Path) -> list[Requirement]:
    reqs = []
    for line in lock_lines(path):
        line = line.split(" #", 1)[0].strip()
        if line.startswith("-"):
            continue  # -c / -r options: the constraint files are checked on their own
        reqs.append(Requirement(line))
    return reqs


INPUTS = sorted(IMAGES.glob("*/requirements*.in"))


@pytest.mark.parametrize("infile", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lock_satisfies_its_input(infile):
    lock = infile.with_suffix(".lock")
    assert lock.is_file(), f"{infile.name} has no {lock.name}: compile it (see images/README.md)"
    pins = locked_versions(lock)
    for req in input_requirements(infile):
        if req.marker and not req.marker.evaluate({"python_version": "3.11", "python_full_version": "3.11.0",
                                                   "sys_platform": "linux", "platform_machine": "x86_64"}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{infile.parent.name}: {req} is not in {lock.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req} but {lock.name} pins {pins[name]}"


def test_cuda_lock_agrees_with_the_main_lock():
    main = locked_versions(IMAGES / "tensorflow-gpu" / "requirements.lock")
    cuda = locked_versions(IMAGES / "tensorflow-gpu" / "requirements-cuda.lock")
    differ = {n: (main[n], v) for n, v in cuda.items() if n in main and main[n] != v}
    assert not differ, f"the CUDA lock moves packages of the main lock: {differ}"


# --- tools/image_tags.py ----------------------------------------------------------------------------


def load_tool():
    spec = importlib.util.spec_from_file_location("image_tags", ROOT / "tools" / "image_tags.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


VALUES_SAMPLE = """\
# Esker chart values (sample in the z2jh shape)
jupyterhub:
  hub:
    image:
      name: quay.io/esker/hub   # the Esker hub
      tag: "2026.11"
      pullPolicy: IfNotPresent
  proxy:
    chp:
      image:
        name: quay.io/jupyterhub/configurable-http-proxy
        tag: "5.3.0"
  singleuser:
    image:
      name: quay.io/esker/minimal-notebook
      tag: '2026.11'
    profileList:
      - display_name: Spark
        slug: spark
        kubespawner_override:
          image: "quay.io/esker/spark-notebook:2026.11"
      - display_name: Other team's image
        kubespawner_override:
          image: quay.io/jupyter/scipy-notebook:2026-09-01
  prePuller:
    extraImages:
      tensorflow:
        name: quay.io/esker/tensorflow-gpu-notebook
        tag: 2026.11
spark:
  image:
    repository: docker.io/apache/spark
    tag: 4.3.0
"""


def test_image_tags_on_a_sample_values_file():
    tool = load_tool()
    new, changes = tool.update_text(VALUES_SAMPLE, "2026.12")
    assert len(changes) == 4
    old_lines, new_lines = VALUES_SAMPLE.splitlines(), new.splitlines()
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert changed == [
        ('      tag: "2026.11"', '      tag: "2026.12"'),
        ("      tag: '2026.11'", "      tag: '2026.12'"),
        ('          image: "quay.io/esker/spark-notebook:2026.11"', '          image: "quay.io/esker/spark-notebook:2026.12"'),
        ("        tag: 2026.11", '        tag: "2026.12"'),
    ]
    data = yaml.safe_load(new)
    assert data["jupyterhub"]["proxy"]["chp"]["image"]["tag"] == "5.3.0"  # not ours: untouched
    assert data["spark"]["image"]["tag"] == "4.3.0"
    assert data["jupyterhub"]["prePuller"]["extraImages"]["tensorflow"]["tag"] == "2026.12"
    # Running again changes nothing.
    assert tool.update_text(new, "2026.12") == (new, [])


def test_image_tags_registry_move_and_digest_drop():
    tool = load_tool()
    text = "image: quay.io/esker/spark-notebook:2026.11@sha256:" + "a" * 64 + "  # pinned\n"
    new, _ = tool.update_text(text, "2026.12", registry="registry.example.org/team/")
    assert new == "image: registry.example.org/team/spark-notebook:2026.12  # pinned\n"
    with pytest.raises(ValueError):
        tool.update_text(text, "bad tag")


def test_image_tags_cli_on_temp_copies(tmp_path):
    config = tmp_path / "esker.yaml"
    shutil.copy(ROOT / "esker.yaml", config)
    values = tmp_path / "values.yaml"
    real_values = ROOT / "helm" / "esker" / "values.yaml"
    values.write_text(real_values.read_text() if real_values.is_file() else VALUES_SAMPLE)
    before_config, before_values = config.read_text(), values.read_text()
    tool = [sys.executable, str(ROOT / "tools" / "image_tags.py")]

    out = subprocess.run(tool + ["--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: image_tags.py" in out and "--registry" in out

    cur = subprocess.run(tool + ["--current", "--config", str(config)], capture_output=True, text=True, check=True)
    old_tag = cur.stdout.strip()
    assert old_tag

    check = subprocess.run(tool + ["2099.01", "--check", "--config", str(config), "--values", str(values)],
                           capture_output=True, text=True)
    assert check.returncode == 1 and config.read_text() == before_config  # --check writes nothing

    subprocess.run(tool + ["2099.01", "--config", str(config), "--values", str(values)], check=True,
                   capture_output=True)
    after = config.read_text()
    diff = [(a, b) for a, b in zip(before_config.splitlines(), after.splitlines()) if a != b]
    assert diff and all("image:" in a and a.replace(old_tag, "2099.01") == b for a, b in diff)
    assert len(before_config.splitlines()) == len(after.splitlines())
    profiles = yaml.safe_load(after)["profiles"]
    assert all(p["image"].endswith(":2099.01") for p in profiles)
    # Everything but the image tags parses the same.
    strip = lambda d: json.loads(json.dumps(d).replace(old_tag, "X").replace("2099.01", "X"))  # noqa: E731
    assert strip(yaml.safe_load(after)) == strip(yaml.safe_load(before_config))
    vdiff = [(a, b) for a, b in zip(before_values.splitlines(), values.read_text().splitlines()) if a != b]
    assert all(("image:" in a or "tag:" in a) for a, _ in vdiff)

    again = subprocess.run(tool + ["2099.01", "--check", "--config", str(config), "--values", str(values)],
                           capture_output=True, text=True)
    assert again.returncode == 0

    listing = subprocess.run(tool + ["--list", "--config", str(config)], capture_output=True, text=True, check=True)
    assert "spark quay.io/esker/spark-notebook:2099.01" in listing.stdout.splitlines()


def test_image_tags_skips_missing_values(tmp_path):
    config = tmp_path / "esker.yaml"
    shutil.copy(ROOT / "esker.yaml", config)
    tool = load_tool()
    assert tool.main(["2099.02", "--config", str(config), "--values", str(tmp_path / "absent.yaml")]) == 0
    assert ":2099.02" in config.read_text()


# --- images/images.mk -------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("docker", ["/nonexistent/docker", "false"])
def test_make_images_without_docker_says_so_and_succeeds(docker):
    r = subprocess.run(["make", "--no-print-directory", "-f", "images/images.mk", "images", f"DOCKER={docker}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "skipping the image builds" in r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_images_builds_every_image_when_docker_answers():
    # DOCKER=echo: `echo info` succeeds, so each build command is printed instead of run.
    r = subprocess.run(["make", "--no-print-directory", "-f", "images/images.mk", "images", "DOCKER=echo",
                        "IMAGE_TAG=t1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in NOTEBOOK_IMAGES:
        assert f"build -f images/{name}/Dockerfile -t quay.io/esker/{name}-notebook:t1 images" in r.stdout
    assert "build -f images/hub/Dockerfile -t quay.io/esker/hub:t1 ." in r.stdout
