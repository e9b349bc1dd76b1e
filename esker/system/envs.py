"""Local environments for embedded mode: one virtualenv per images/<name>/requirements.lock.

The lock file is the same one the container image installs, so a profile behaves the same on one machine
and on Kubernetes. Environments are built on demand (or ahead by `make run`), cached under the state
directory by a hash of their inputs, and rebuilt when the lock file or the notebook helper changes.

An image may also have a requirements-cuda.lock (tensorflow-gpu: TensorFlow's `and-cuda` extra, the nvidia-*-cu12
wheels), which its container image installs after requirements.lock. A builder made with ``cuda=True`` (a machine
whose NVML answers for a GPU, or ESKER_CUDA=1: cuda_wanted) does the same, and that lock is then one of the
environment's inputs, so the CUDA build has a key, and a folder, of its own beside the CPU build.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from esker.spark.archive import build_executor_archive
from esker.spark.cluster import java_home, spark_home_of

log = logging.getLogger(__name__)

READY = ".esker-ready"
CUDA_LOCK = "requirements-cuda.lock"  # images/<name>/: installed after requirements.lock by CUDA builds
RECIPE = b"6"  # bump when the way environments are built changes, so existing ones are rebuilt

# Jupyter Server's own settings for every server of an environment ({env}/etc/jupyter, after the user's own):
# terminals run bash as an interactive shell, not a login one (Jupyter's default when it has no terminal),
# since a login shell's /etc/profile on Debian sets PATH anew and drops the environment's bin/ (python, pip,
# aws, spark-submit of the profile) that the server's PATH starts with.
SERVER_CONFIG = {"ServerApp": {"terminado_settings": {"shell_command": ["/bin/bash"]}}}

# The environments are shared and read-only for their users; `pip install` and a notebook's `%pip install` go to
# the user's own site for that environment instead. The venv is made with --system-site-packages (so that site
# enables the user site and pip allows --user); a .pth file runs USER_SITE (as _esker_user_site) while site adds
# the environment's own site-packages, before the user site and the system's: it names the user's site for this
# environment and keeps the system interpreter's packages off sys.path (an environment holds its lock file only).
USER_SITE = '''"""Esker (esker.system.envs): this environment is shared and read-only for its users, so their own packages go
to a site of their own for it, $HOME/.local/esker/<environment>: `pip install` (and `%pip install` in a notebook)
installs there, and what it installs is importable at once, after the environment's own packages (which win).
See docs/embedded.md, "Installing packages". Run by _esker_user_site.pth while site adds this environment."""

import os
import site
import sys

ENVIRONMENT = {name!r}


def _setup():
    env_site = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    # The system interpreter's packages, which site adds after this environment's: skipped (once each).
    pending = {{os.path.realpath(p) for p in site.getsitepackages([sys.base_prefix, sys.base_exec_prefix])
                if os.path.isdir(p)}} - {{env_site}}
    original = site.addsitedir

    def addsitedir(sitedir, known_paths=None):
        real = os.path.realpath(sitedir)
        if real in pending:
            pending.discard(real)
            if not pending:
                site.addsitedir = original
            return known_paths
        return original(sitedir, known_paths)

    if pending:
        site.addsitedir = addsitedir
    if sys.flags.no_user_site or site.ENABLE_USER_SITE is False or not site.check_enableusersite():
        return
    if "PYTHONUSERBASE" not in os.environ or os.environ.get("ESKER_USER_SITE_OF", ENVIRONMENT) != ENVIRONMENT:
        os.environ["PYTHONUSERBASE"] = os.path.join(os.path.expanduser("~"), ".local", "esker", ENVIRONMENT)
        os.environ["ESKER_USER_SITE_OF"] = ENVIRONMENT  # what starts from here (kernels, pip) inherits both
    site.USER_BASE = site.USER_SITE = None  # site computes them again, from PYTHONUSERBASE
    user_site = site.getusersitepackages()
    if not os.path.isdir(user_site) and os.geteuid() != 0:
        try:  # made now, so that site puts it on sys.path and what pip puts there is importable at once
            os.makedirs(user_site, exist_ok=True)
        except OSError:
            pass
    bin_dir = os.path.join(site.USER_BASE, "bin")
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(p for p in (os.environ.get("PATH", ""), bin_dir) if p)
    if not os.access(env_site, os.W_OK):
        os.environ.setdefault("PIP_USER", "1")


_setup()
'''


def uv_bin() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except Exception:
        found = shutil.which("uv") or os.path.join(os.path.dirname(sys.executable), "uv")
        return found


def default_python() -> str:
    """The interpreter environments are built on: one every user can execute.

    pyenv and friends often live under /root (mode 0700), which other accounts cannot enter, so prefer
    the system's /usr/bin/python3.
    """
    for cand in ("/usr/bin/python3.11", "/usr/bin/python3"):
        if os.access(cand, os.X_OK):
            return cand
    return sys.executable


def nvml_answers() -> bool:
    """Whether NVML (the NVIDIA driver) answers here and counts at least one GPU; False on any error.

    Only this switches the CUDA build on by itself: gpus.devices in esker.yaml may pin device ids on a
    machine without a driver (tests do), and those ids are no reason to download CUDA."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no pynvml, NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def cuda_wanted(environ=None, detect=None) -> bool:
    """Whether environments are built with their CUDA libraries (EnvironmentBuilder's ``cuda``).

    ESKER_CUDA=1 (true, yes, on) or 0 (false, no, off) decides; unset or empty, NVML does (nvml_answers).
    Any other value is ignored, with a warning."""
    value = (os.environ if environ is None else environ).get("ESKER_CUDA", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if value:
        log.warning("ESKER_CUDA=%r is neither 1 nor 0: ignored, NVML decides", value)
    return (detect or nvml_answers)()


def build_steps(name: str, env_path: Path, *, uv: str, python: str, lock: Path, cuda_lock: Path | None = None,
                client: Path | None = None) -> list[tuple[str, list[str]]]:
    """The commands that build environment ``name`` at ``env_path``, each with its progress line, in order.

    ``cuda_lock`` (a CUDA build) is installed right after ``lock`` and, as in the container image
    (images/tensorflow-gpu/Dockerfile), with --no-deps: exactly its pins, so both modes get the same set.
    ``client`` is the esker-client folder, when the environment gets the helper."""
    env_python = str(Path(env_path) / "bin" / "python")
    steps = [
        (f"Creating the {name} environment" + (" (CUDA build)" if cuda_lock else ""),
         [uv, "venv", "--python", python, "--seed", "--system-site-packages", str(env_path)]),
        (f"Installing {name} packages from {lock.name}",
         # Bytecode now, as root: servers run as users who cannot write __pycache__ here.
         [uv, "pip", "install", "--python", env_python, "--compile-bytecode", "-r", str(lock)]),
    ]
    if cuda_lock is not None:
        steps.append((f"Installing {name}'s CUDA libraries from {cuda_lock.name} (NVIDIA's CUDA and cuDNN wheels: "
                      "several GB to download and unpack, the longest step)",
                      [uv, "pip", "install", "--python", env_python, "--compile-bytecode", "--no-deps",
                       "-r", str(cuda_lock)]))
    if client is not None:
        steps.append(("Installing the esker_client helper",
                      [uv, "pip", "install", "--python", env_python, "--no-deps", str(client)]))
    return steps


@dataclass(frozen=True)
class Environment:
    name: str
    path: Path
    cuda: bool = False  # built with the image's requirements-cuda.lock too (EnvironmentBuilder's cuda)

    @property
    def variant(self) -> str:
        """What was built, for status lines and progress: "CUDA build" or "CPU build"."""
        return "CUDA build" if self.cuda else "CPU build"

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    @property
    def bin(self) -> str:
        return str(self.path / "bin")

    def ready(self) -> bool:
        return (self.path / READY).is_file()


class EnvironmentBuilder:
    def __init__(self, root: str | Path, images_dir: str | Path, python: str | None = None, cuda: bool = False):
        self.root = Path(root)
        self.images_dir = Path(images_dir)
        self.python = python or default_python()
        self.cuda = cuda  # images with a requirements-cuda.lock get their CUDA libraries (cuda_wanted says when)
        self._locks: dict[str, asyncio.Lock] = {}
        self._keys: dict[str, tuple] = {}

    def inputs(self, name: str) -> list[Path]:
        lock = self.images_dir / name / "requirements.lock"
        if not lock.is_file():
            raise FileNotFoundError(f"no lock file for environment {name!r}: {lock}")
        files = [lock]
        cuda_lock = self.cuda_lock(name)
        if cuda_lock is not None:
            files.append(cuda_lock)
        client = self.images_dir / "esker-client"
        if client.is_dir():
            files += sorted(p for p in client.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                            and not p.name.endswith(".egg-info") and ".egg-info" not in str(p))
        return files

    def cuda_lock(self, name: str) -> Path | None:
        """The image's requirements-cuda.lock when this builder makes CUDA builds and the image has one."""
        path = self.images_dir / name / CUDA_LOCK
        return path if self.cuda and path.is_file() else None

    def key(self, name: str) -> str:
        # Cached on the inputs' mtimes: every spawn asks, the files rarely change.
        files = self.inputs(name)
        stamp = tuple((str(p), p.stat().st_mtime_ns) for p in files)
        cached = self._keys.get(name)
        if cached and cached[0] == stamp:
            return cached[1]
        key = self._hash(files)
        self._keys[name] = (stamp, key)
        return key

    def _hash(self, files: list[Path]) -> str:
        h = hashlib.sha256(self.python.encode() + RECIPE)
        for p in files:
            h.update(str(p.relative_to(self.images_dir)).encode())
            h.update(p.read_bytes())
        return h.hexdigest()[:12]

    def get(self, name: str) -> Environment:
        return Environment(name, self.root / f"{name}-{self.key(name)}", cuda=self.cuda_lock(name) is not None)

    async def ensure(self, name: str) -> AsyncIterator[str]:
        """Build the environment if needed, yielding progress lines; returns when it is ready."""
        env = self.get(name)
        if env.ready():
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if env.ready():
                return
            async for line in self._build(env):
                yield line

    async def _build(self, env: Environment) -> AsyncIterator[str]:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        # A file lock too: `esker prepare` and a running hub may build at the same moment.
        # Root's alone (0600): an account that could open it could hold the lock every build waits on.
        lock_path = self.root / f".{env.name}.lock"
        lockfile = open(os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600), "w")
        os.fchmod(lockfile.fileno(), 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, lockfile, fcntl.LOCK_EX)
            if env.ready():
                return
            shutil.rmtree(env.path, ignore_errors=True)
            client = self.images_dir / "esker-client"
            steps = build_steps(env.name, env.path, uv=uv_bin(), python=self.python,
                                lock=self.images_dir / env.name / "requirements.lock",
                                cuda_lock=self.cuda_lock(env.name) if env.cuda else None,
                                client=client if (client / "pyproject.toml").is_file() else None)
            for title, cmd in steps:
                yield title
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, "UV_NO_PROGRESS": "1"},
                )
                tail: list[str] = []
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    tail = (tail + [line])[-20:]
                    if line.startswith(("Resolved", "Prepared", "Installed", "Audited", "Downloading", "Built")):
                        yield line
                if await proc.wait() != 0:
                    shutil.rmtree(env.path, ignore_errors=True)
                    raise RuntimeError(f"{title} failed:\n" + "\n".join(tail))
            write_user_site(env)
            write_server_config(env)
            spark_home = _spark_home(env)
            if spark_home and java_home():
                yield "Building the Spark executors' class archive (a faster first Spark result)"
                try:
                    await asyncio.to_thread(build_executor_archive, env.path, env.python, spark_home)
                except (RuntimeError, OSError) as e:  # only slower executors: never a failed environment
                    yield f"No class archive for the Spark executors, they start without it: {e}"
            if (client / "pyproject.toml").is_file():
                write_esker_launcher(env)
            os.chmod(env.path, 0o755)
            (env.path / READY).write_text(self.key(env.name) + "\n")
            yield f"The {env.name} environment is ready"
        finally:
            lockfile.close()


def _spark_home(env: Environment) -> str | None:
    try:
        return spark_home_of(env.python)
    except FileNotFoundError:  # not a Spark environment
        return None


def write_user_site(env: Environment) -> Path:
    """The environment's _esker_user_site module and the .pth that runs it (USER_SITE)."""
    found = sorted(env.path.glob("lib/python3*/site-packages"))
    if not found:
        raise RuntimeError(f"no site-packages in {env.path}")
    module = found[0] / "_esker_user_site.py"
    module.write_text(USER_SITE.format(name=env.name))
    (found[0] / "_esker_user_site.pth").write_text("import _esker_user_site\n")
    for f in (module, found[0] / "_esker_user_site.pth"):
        os.chmod(f, 0o644)
    # Bytecode now, as for the packages: its users cannot write __pycache__ here.
    subprocess.run([env.python, "-m", "py_compile", str(module)], check=True, capture_output=True, timeout=60)
    return module


ESKER_LAUNCHER = """#!/bin/sh
# `esker fn ...` in this environment (the hub's own `esker` has more commands)
exec {python} -m esker_client.cli "$@"
"""


def write_esker_launcher(env: Environment) -> Path:
    """The environment's ``bin/esker``: esker_client's CLI (`esker fn`) with this environment's python."""
    path = Path(env.bin) / "esker"
    path.write_text(ESKER_LAUNCHER.format(python=shlex.quote(env.python)))
    os.chmod(path, 0o755)
    return path


def write_server_config(env: Environment) -> Path:
    """The environment's ``etc/jupyter/jupyter_server_config.json`` (SERVER_CONFIG)."""
    path = env.path / "etc" / "jupyter" / "jupyter_server_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(SERVER_CONFIG, indent=2) + "\n")
    os.chmod(path, 0o644)
    return path


async def build_all(builder: EnvironmentBuilder, names: list[str], echo=print) -> None:
    for name in names:
        async for line in builder.ensure(name):
            echo(f"[{name}] {line}")
