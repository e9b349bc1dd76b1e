"""A real Chromium (Debian's) driven by Playwright: log in, pick Spark, watch the progress page, reach
JupyterLab; and see the error page a forged GPU choice gets."""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import needs_root

pytestmark = [pytest.mark.browser, pytest.mark.integration, needs_root]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = os.environ.get("ESKER_SCREENSHOTS", os.path.join(tempfile.gettempdir(), "esker-screenshots"))


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is not installed: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def login(page, base: str, name: str) -> None:
    page.goto(f"{base}/hub/login?next=%2Fhub%2Fspawn")
    page.fill("#username_input", name)
    page.fill("#password_input", "anything")  # the test hub uses the dummy authenticator
    page.click("#login_submit")
    page.wait_for_url("**/hub/spawn**")


def test_pick_spark_and_reach_jupyterlab(running_hub, hub, browser):
    os.makedirs(SHOTS, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        login(page, running_hub.url, "browser-user")
        assert page.locator("input[name=profile]").count() == 4
        page.check("#profile-spark")
        page.screenshot(path=os.path.join(SHOTS, "spawn-page.png"), full_page=True)
        page.click("form input[type=submit], form button[type=submit]")
        page.wait_for_url("**/user/browser-user/lab**", timeout=300_000)
        page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
        page.screenshot(path=os.path.join(SHOTS, "jupyterlab.png"))
        assert "JupyterLab" in page.title()
        model = hub.request("GET", "/users/browser-user").json()["servers"][""]
        assert model["user_options"]["profile"] == "spark"
    finally:
        page.close()
        hub.stop("browser-user")


def test_forged_gpu_choice_gets_a_clear_error_page(running_hub, hub, browser):
    page = browser.new_page()
    try:
        login(page, running_hub.url, "browser-forger")
        # Add the GPU choice the page does not offer this user, as a forger would.
        page.evaluate("""() => {
            const sel = document.querySelector('select[name="profile-option-tensorflow--gpus"]');
            const o = document.createElement('option'); o.value = '2'; o.text = 'forged'; sel.appendChild(o);
            sel.value = '2';
            document.querySelector('#profile-tensorflow').checked = true;
        }""")
        page.click("form input[type=submit], form button[type=submit]")
        page.wait_for_load_state()
        body = page.content()
        assert "reserved for the groups gpu-users" in body
        page.screenshot(path=os.path.join(SHOTS, "forged-gpu-error.png"))
        assert hub.request("GET", "/users/browser-forger").json()["servers"] == {}
    finally:
        page.close()


def test_the_functions_page_lists_a_published_function(running_hub, hub, browser):
    """Published from a server with `esker fn publish`, shared with a user: the page shows the function, its
    version, its stable URL, a curl to copy, and who it is shared with."""
    from esker.hubapi import run_code

    user = "browser-fn"
    hub.ensure_user(user)
    hub.ensure_user("browser-fn-friend")
    hub.spawn(user, {"profile": "minimal"})
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        code = ("open('sq.py', 'w').write('from esker_client import function\\n\\n\\n@function\\n"
                "def square(x: float) -> float:\\n    return x * x\\n')\n"
                "import subprocess\n"
                "for cmd in (['esker', 'fn', 'publish', 'sq.py', '--name', 'square', '--version', '0.1.0'],\n"
                "            ['esker', 'fn', 'share', 'square', '--user', 'browser-fn-friend']):\n"
                "    p = subprocess.run(cmd, capture_output=True, text=True)\n"
                "    assert p.returncode == 0, p.stdout + p.stderr\n")
        # Playwright's sync API runs an event loop in this thread; the kernel client wants one of its own.
        with ThreadPoolExecutor(1) as pool:
            out = pool.submit(run_code, f"{running_hub.url}/user/{user}/", hub.user_token(user), code, 600).result()
        assert out["error"] is None, (out["error"], out["stderr"][-2000:])
        # Logged in through the form, straight to the page (the hub's OAuth for the service follows the login).
        page.goto(f"{running_hub.url}/hub/login?next=%2Fservices%2Fesker-functions%2F")
        page.fill("#username_input", user)
        page.fill("#password_input", "anything")
        page.click("#login_submit")
        try:
            page.wait_for_selector("text=square", timeout=60_000)
        finally:
            page.screenshot(path=os.path.join(SHOTS, "functions-page.png"), full_page=True)
            print("landed at", page.url, page.inner_text("body")[:2000])
        text = page.inner_text("body")
        assert f"/services/esker-functions/call/{user}/square" in text, text
        assert "curl" in text and "0.1.0" in text and "browser-fn-friend" in text, text
    finally:
        page.close()
        hub.request("DELETE", f"/users/{user}/servers/fn-square", json={"remove": True})
        hub.stop(user)
