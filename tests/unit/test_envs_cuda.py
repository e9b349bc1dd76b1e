"""CUDA builds of the embedded environments (esker.system.envs): an image's requirements-cuda.lock joins the
environment's inputs, key and steps only for a builder made with cuda=True, which the hub, the courses service and
`esker prepare` ask for when NVML answers for a GPU (or ESKER_CUDA says so). The CPU build, and its key, stay as
they were. That the shipped CUDA lock pins what requirements.lock pins is test_images.py's
test_cuda_lock_agrees_with_the_main_lock."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import types
from pathlib import Path
from urllib.parse import urlparse

import pytest

from esker import resources
from esker.courses import jobs
from esker.courses.roles import SERVICE_ENV_KEEP
from esker.runtime import Runtime
from esker.system import envs
from esker.system.envs import CUDA_LOCK, EnvironmentBuilder, build_steps, cuda_wanted, nvml_answers
from esker.system.gpus import Gpu

PYTHON = "/opt/py/bin/python3"  # the key hashes the interpreter's path only: it need not exist
# The key of images() below's "tf" for PYTHON, as the builder computed it before CUDA builds existed (recipe 6):
# a cuda=False builder must keep it, or every existing environment cache would be rebuilt.
OLD_KEY = "6b76dd5a6d7c"
IMAGES = resources.images_dir()


def images(root: Path, cuda_lock: str | None = "mdurl==0.1.2\n", client: bool = True) -> Path:
    (root / "tf").mkdir(parents=True)
    (root / "tf" / "requirements.lock").write_text("six==1.16.0\n")
    if cuda_lock is not None:
        (root / "tf" / CUDA_LOCK).write_text(cuda_lock)
    if client:
        (root / "esker-client" / "src").mkdir(parents=True)
        (root / "esker-client" / "pyproject.toml").write_text('[project]\nname = "x"\n')
        (root / "esker-client" / "src" / "x.py").write_text("print(1)\n")
    return root


def test_without_cuda_the_inputs_and_the_key_are_the_old_ones(tmp_path):
    img = images(tmp_path / "images")
    cpu = EnvironmentBuilder(tmp_path / "envs", img, python=PYTHON)
    assert cpu.cuda is False and cpu.cuda_lock("tf") is None
    assert CUDA_LOCK not in [p.name for p in cpu.inputs("tf")]
    assert cpu.key("tf") == OLD_KEY
    assert EnvironmentBuilder(tmp_path / "envs", img, python=PYTHON, cuda=False).key("tf") == OLD_KEY
    env = cpu.get("tf")
    assert env.path == tmp_path / "envs" / f"tf-{OLD_KEY}" and not env.cuda and env.variant == "CPU build"


def test_with_cuda_the_cuda_lock_is_an_input_after_the_main_lock(tmp_path):
    img = images(tmp_path / "images")
    cpu = EnvironmentBuilder(tmp_path / "envs", img, python=PYTHON)
    gpu = EnvironmentBuilder(tmp_path / "envs", img, python=PYTHON, cuda=True)
    files = gpu.inputs("tf")
    assert files[:2] == [img / "tf" / "requirements.lock", img / "tf" / CUDA_LOCK]
    assert files[2:] == cpu.inputs("tf")[1:]  # the helper's files, as before
    assert gpu.cuda_lock("tf") == img / "tf" / CUDA_LOCK
    # Its own key and folder, beside the CPU build in a shared envs folder
    assert gpu.key("tf") != cpu.key("tf")
    env = gpu.get("tf")
    assert env.name == "tf" and env.cuda and env.variant == "CUDA build"
    assert env.path.parent == cpu.get("tf").path.parent and env.path != cpu.get("tf").path
    # The CUDA lock's content is hashed: a new pin is a new environment
    before = gpu.key("tf")
    (img / "tf" / CUDA_LOCK).write_text("mdurl==0.1.1\n")
    os.utime(img / "tf" / CUDA_LOCK, ns=(1, 1))  # the key is cached on mtimes: make sure this one moved
    assert gpu.key("tf") != before
    assert cpu.key("tf") == OLD_KEY


def test_an_image_without_a_cuda_lock_is_the_same_environment_either_way(tmp_path):
    img = images(tmp_path / "images", cuda_lock=None)
    gpu = EnvironmentBuilder(tmp_path / "envs", img, python=PYTHON, cuda=True)
    assert gpu.key("tf") == OLD_KEY and gpu.cuda_lock("tf") is None
    assert not gpu.get("tf").cuda
    # The shipped images: only tensorflow-gpu has a CUDA lock, the others keep their folder on a GPU host
    for name in ("minimal", "spark", "scikit-learn"):
        assert (EnvironmentBuilder(tmp_path, IMAGES, python=PYTHON, cuda=True).key(name)
                == EnvironmentBuilder(tmp_path, IMAGES, python=PYTHON).key(name))
    tf = EnvironmentBuilder(tmp_path, IMAGES, python=PYTHON, cuda=True)
    assert tf.get("tensorflow-gpu").cuda and IMAGES / "tensorflow-gpu" / CUDA_LOCK in tf.inputs("tensorflow-gpu")
    assert (tf.key("tensorflow-gpu")
            != EnvironmentBuilder(tmp_path, IMAGES, python=PYTHON).key("tensorflow-gpu"))


def test_build_steps_without_cuda(tmp_path):
    lock, client = tmp_path / "img" / "tf" / "requirements.lock", tmp_path / "img" / "esker-client"
    env = tmp_path / "envs" / "tf-k"
    py = str(env / "bin" / "python")
    steps = build_steps("tf", env, uv="uv", python=PYTHON, lock=lock, client=client)
    assert steps == [
        ("Creating the tf environment", ["uv", "venv", "--python", PYTHON, "--seed", "--system-site-packages", str(env)]),
        ("Installing tf packages from requirements.lock",
         ["uv", "pip", "install", "--python", py, "--compile-bytecode", "-r", str(lock)]),
        ("Installing the esker_client helper", ["uv", "pip", "install", "--python", py, "--no-deps", str(client)]),
    ]
    assert [t for t, _ in build_steps("tf", env, uv="uv", python=PYTHON, lock=lock)] == [
        "Creating the tf environment", "Installing tf packages from requirements.lock"]
    assert not any("CUDA" in t or CUDA_LOCK in " ".join(c) for t, c in steps)


def test_build_steps_with_cuda_install_the_cuda_lock_right_after_the_main_one(tmp_path):
    lock, client = tmp_path / "tf" / "requirements.lock", tmp_path / "esker-client"
    cuda_lock = tmp_path / "tf" / CUDA_LOCK
    env = tmp_path / "envs" / "tf-k"
    py = str(env / "bin" / "python")
    cpu = build_steps("tf", env, uv="uv", python=PYTHON, lock=lock, client=client)
    steps = build_steps("tf", env, uv="uv", python=PYTHON, lock=lock, cuda_lock=cuda_lock, client=client)
    assert len(steps) == 4
    assert steps[0] == ("Creating the tf environment (CUDA build)", cpu[0][1])
    assert steps[1] == cpu[1] and steps[3] == cpu[2]
    title, cmd = steps[2]
    assert "CUDA" in title and CUDA_LOCK in title and "GB" in title
    assert cmd == ["uv", "pip", "install", "--python", py, "--compile-bytecode", "--no-deps", "-r", str(cuda_lock)]


def test_the_cuda_step_installs_the_way_the_container_image_does(tmp_path):
    """Both modes get the same set: --no-deps for the CUDA lock exactly where the Dockerfile uses it."""
    dockerfile = (IMAGES / "tensorflow-gpu" / "Dockerfile").read_text().replace("\\\n", " ")
    installs = [c for c in re.split(r"&&|\n", dockerfile) if re.search(r"install .*-r \S*requirements-cuda\.lock", c)]
    assert len(installs) == 1, installs
    (_, cmd), = [s for s in build_steps("tensorflow-gpu", tmp_path, uv="uv", python=PYTHON,
                                        lock=tmp_path / "requirements.lock", cuda_lock=tmp_path / CUDA_LOCK)
                 if CUDA_LOCK in " ".join(s[1])]
    assert ("--no-deps" in cmd) == ("--no-deps" in installs[0].split())


def _no_detect():
    raise AssertionError("ESKER_CUDA decides: NVML must not be asked")


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_esker_cuda_forces_the_cuda_build(value):
    assert cuda_wanted({"ESKER_CUDA": value}, detect=_no_detect) is True


@pytest.mark.parametrize("value", ["0", "false", "No", "off"])
def test_esker_cuda_forces_the_cpu_build(value):
    assert cuda_wanted({"ESKER_CUDA": value}, detect=_no_detect) is False


@pytest.mark.parametrize("found", [True, False])
def test_without_esker_cuda_nvml_decides(found):
    assert cuda_wanted({}, detect=lambda: found) is found
    assert cuda_wanted({"ESKER_CUDA": ""}, detect=lambda: found) is found


def test_a_bad_esker_cuda_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="esker.system.envs"):
        assert cuda_wanted({"ESKER_CUDA": "maybe"}, detect=lambda: False) is False
    assert "ESKER_CUDA" in caplog.text and "maybe" in caplog.text


def fake_pynvml(count=0, init_error=None, count_error=None):
    calls = []

    def init():
        calls.append("init")
        if init_error:
            raise init_error

    def device_count():
        calls.append("count")
        if count_error:
            raise count_error
        return count

    mod = types.ModuleType("pynvml")
    mod.nvmlInit, mod.nvmlDeviceGetCount = init, device_count
    mod.nvmlShutdown = lambda: calls.append("shutdown")
    return mod, calls


def test_nvml_answers_when_it_counts_a_gpu(monkeypatch):
    mod, calls = fake_pynvml(count=2)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    assert nvml_answers() is True
    assert calls == ["init", "count", "shutdown"]


@pytest.mark.parametrize("kw", [{"count": 0}, {"init_error": RuntimeError("NVML Shared Library Not Found")},
                                {"count": 1, "count_error": RuntimeError("Unknown Error")}])
def test_nvml_answers_no_without_a_gpu_or_a_driver(monkeypatch, kw):
    mod, calls = fake_pynvml(**kw)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    assert nvml_answers() is False
    assert calls[-1] == ("init" if "init_error" in kw else "shutdown")


def test_nvml_answers_no_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert nvml_answers() is False


def runtime(tmp_path, gpus) -> Runtime:
    return Runtime(config={}, state_dir=str(tmp_path), mode="embedded", catalog=None, gpus=gpus, site=None)


def test_pinned_gpus_without_a_driver_keep_the_cpu_build(tmp_path, monkeypatch):
    """gpus.devices: [0, 1] on a machine NVML does not answer on (as in the tests): the lean CPU build."""
    monkeypatch.delenv("ESKER_CUDA", raising=False)
    monkeypatch.setattr(envs, "nvml_answers", lambda: False)
    assert runtime(tmp_path, [Gpu("0"), Gpu("1")]).builder.cuda is False
    assert jobs.default_builder(str(tmp_path)).cuda is False


def test_the_hub_and_the_courses_service_build_cuda_where_nvml_answers(tmp_path, monkeypatch):
    monkeypatch.delenv("ESKER_CUDA", raising=False)
    monkeypatch.setattr(envs, "nvml_answers", lambda: True)
    rt = runtime(tmp_path, [])
    assert rt.builder.cuda is True and rt.builder.get("tensorflow-gpu").variant == "CUDA build"
    assert jobs.default_builder(str(tmp_path)).cuda is True
    monkeypatch.setenv("ESKER_CUDA", "0")
    assert runtime(tmp_path, []).builder.cuda is False and jobs.default_builder(str(tmp_path)).cuda is False
    # The courses service (which pre-warms into the hub's folder) is given the override too
    assert "ESKER_CUDA" in SERVICE_ENV_KEEP


def test_the_tests_shared_cache_stays_the_cpu_build_here():
    """`esker prepare` (devhub.prepare_environments, the tests' cache) decides as the hub does: on this machine
    without ESKER_CUDA, NVML's answer (no driver, no CUDA build)."""
    if os.environ.get("ESKER_CUDA"):
        pytest.skip("ESKER_CUDA is set")
    assert cuda_wanted() is nvml_answers()


# -- one real build: two tiny pure-Python packages, one per lock ----------------------------------------------------

def index_reachable() -> bool:
    url = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL")
    host = urlparse(url).hostname if url else "pypi.org"
    if os.environ.get("UV_OFFLINE") or not host:
        return False
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


async def collect(agen) -> list[str]:
    return [line async for line in agen]


def imports(env: envs.Environment, module: str, home: Path) -> bool:
    r = subprocess.run([env.python, "-c", f"import {module}"], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    return r.returncode == 0


@pytest.mark.skipif(not index_reachable(), reason="no network to the package index")
def test_a_real_cuda_build_installs_both_locks_and_the_cpu_build_only_the_first(tmp_path):
    img = images(tmp_path / "images", client=False)
    root = tmp_path / "envs"
    gpu = EnvironmentBuilder(root, img, cuda=True)
    lines = asyncio.run(collect(gpu.ensure("tf")))
    env = gpu.get("tf")
    assert env.ready() and env.cuda
    assert "Creating the tf environment (CUDA build)" in lines
    assert any(line.startswith(f"Installing tf's CUDA libraries from {CUDA_LOCK}") for line in lines)
    assert imports(env, "six", tmp_path) and imports(env, "mdurl", tmp_path)

    cpu = EnvironmentBuilder(root, img, cuda=False)  # the same envs folder: both builds side by side
    lines = asyncio.run(collect(cpu.ensure("tf")))
    plain = cpu.get("tf")
    assert plain.ready() and not plain.cuda and plain.path != env.path
    assert not any("CUDA" in line for line in lines)
    assert imports(plain, "six", tmp_path) and not imports(plain, "mdurl", tmp_path)
    assert env.ready()  # the CUDA build is still there
