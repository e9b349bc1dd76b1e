"""`%pip install` in a notebook of an embedded server: the shared environment stays read-only, the package goes
to the user's own site for that environment and imports in the same kernel at once, and after a restart.

A real hub, a real server as a real per-user account, and a wheel built here (no network)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest

from conftest import needs_root
from esker import devhub
from esker.devhub import RunningHub, prepare_environments
from esker.hubapi import _run_cells, run_code

pytestmark = [pytest.mark.integration, needs_root]

PKG = "eskertiny"


def tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel, written as the wheel format says (PEP 427): no build backend, no index."""
    files = {f"{PKG}/__init__.py": "VALUE = 42\n",
             f"{PKG}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PKG}\nVersion: 0.1\n",
             f"{PKG}-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: esker-tests\nRoot-Is-Purelib: true\n"
                                           "Tag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{PKG}-0.1.dist-info/RECORD,,")
    files[f"{PKG}-0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{PKG}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def pip_hub():
    prepare_environments(["minimal"])
    h = RunningHub(cfg=devhub.test_config("x-", "/nonexistent", spark={"enabled": False}))
    try:
        h.start()
        yield h
    finally:
        h.teardown()


def test_pip_install_in_a_notebook_goes_to_the_users_site_and_imports_at_once(pip_hub):
    wheels = Path(tempfile.mkdtemp(prefix="esker-wheel-", dir="/tmp"))
    os.chmod(wheels, 0o755)
    try:
        wheel = tiny_wheel(wheels)
        os.chmod(wheel, 0o644)
        hub = pip_hub.hub
        hub.ensure_user("pipper")
        hub.spawn("pipper", {"profile": "minimal"})
        url, token = f"{pip_hub.url}/user/pipper/", hub.user_token("pipper")
        probe = ("import json, os, site, sys, sysconfig; print('SITE' + json.dumps({'prefix': sys.prefix, "
                 "'user_site': site.getusersitepackages(), 'enabled': site.ENABLE_USER_SITE, "
                 "'writable': os.access(sysconfig.get_paths()['purelib'], os.W_OK), 'home': os.environ['HOME'], "
                 "'system': [p for p in sys.path if 'dist-packages' in p]}))")
        out = asyncio.run(_run_cells(url, token, [
            probe,
            f"%pip install --no-index {wheel}",
            f"import {PKG}; print('VALUE', {PKG}.VALUE, {PKG}.__file__)",
        ], timeout=300))
        assert all(o["error"] is None for o in out), [o["error"] for o in out]
        info = json.loads(out[0]["stdout"].split("SITE", 1)[1])
        assert info["enabled"] is True and info["writable"] is False  # the environment is not the user's
        assert info["system"] == []  # the system interpreter's packages are not part of an environment
        assert info["user_site"].startswith(info["home"] + "/.local/esker/minimal/")
        assert "Successfully installed" in out[1]["stdout"], out[1]
        assert f"VALUE 42 {info['user_site']}/{PKG}/__init__.py" in out[2]["stdout"], out[2]  # same kernel
        assert not list(Path(info["prefix"]).glob(f"lib/python3*/site-packages/{PKG}*"))  # the env is unchanged
        assert Path(info["user_site"], PKG, "__init__.py").stat().st_uid == Path(info["home"]).stat().st_uid != 0

        # After a restart (a new kernel) it is still there, and pip lists it as the user's.
        again = run_code(url, token, f"import {PKG}, subprocess, sys; print('VALUE', {PKG}.VALUE); "
                         "print(subprocess.run([sys.executable, '-m', 'pip', 'list', '--user'], "
                         "capture_output=True, text=True).stdout)")
        assert again["error"] is None and "VALUE 42" in again["stdout"] and PKG in again["stdout"], again
    finally:
        hub.stop("pipper")
        shutil.rmtree(wheels, ignore_errors=True)
