"""A real Chromium (Debian's) driven by Playwright: log in, pick Spark, watch the progress page, reach
JupyterLab; and see the error page a forged GPU choice gets."""

from __future__ import annotations

import os
import shutil
import tempfile

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
