"""`bulkbackup serve` in a real browser: Debian's chromium driven by selenium.

The archive is the demo's (the stand-in's sample users, backed up by a real run). The test
loads the dashboard, searches a login, opens the user, downloads a bundle by clicking its link,
and restores it with `git clone`. A screenshot of each page is saved under the artifacts
folder it prints (BULKBACKUP_ARTIFACTS, or a temporary folder); with
BULKBACKUP_UPDATE_SCREENSHOT=1 the dashboard's becomes docs/dashboard.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from bulkbackup.testing.forge import Forge, sample
from tests.browser import NO_CHROMIUM, find_chromium, open_browser, wait_download
from tests.helpers import ROOT, SERVE_TOKEN, base_env, run_backup, start_serve, stop_serve


@pytest.fixture
def demo_served(redis_server: str, tmp_path: Path) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    store = tmp_path / "backup" / "github.com"
    with Forge(tmp_path / "forge") as forge:
        sample(forge)
        env = base_env(tmp_path, redis_server, str(store))
        env["GITHUB_API_URL"] = forge.url
        run_backup(env, ["octocat", "torvalds-demo", "ghost-user"])
    served = start_serve({**env, "BULKBACKUP_ADMIN_TOKEN": SERVE_TOKEN}, tmp_path / "serve.log")
    yield served.url
    stop_serve(served)


def test_dashboard_search_user_download_clone(
    chromium: tuple[str, str], demo_served: str, tmp_path: Path, artifacts: Path
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = open_browser(chromium, tmp_path / "profile", downloads)
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(demo_served + "/")
        wait.until(ec.presence_of_element_located((By.ID, "tracked")))
        assert driver.find_element(By.ID, "tracked").text == "3"
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart")) == 2
        driver.save_screenshot(str(artifacts / "dashboard.png"))

        # The add form (static JavaScript under the CSP) sends the token as a bearer header.
        driver.find_element(By.ID, "add-logins").send_keys("newcomer octocat")
        driver.find_element(By.ID, "add-token").send_keys(SERVE_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#add-form button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "add-result"), "added"))
        assert driver.find_element(By.ID, "add-result").text == \
            "added: newcomer; already tracked: octocat"

        box = driver.find_element(By.ID, "q")
        box.send_keys("octo")
        driver.find_element(By.ID, "search-button").click()
        wait.until(ec.presence_of_element_located((By.ID, "users")))
        assert "/users?q=octo" in driver.current_url
        driver.save_screenshot(str(artifacts / "search.png"))

        driver.find_element(By.LINK_TEXT, "octocat").click()
        wait.until(ec.presence_of_element_located((By.ID, "repos")))
        assert driver.find_element(By.ID, "status").text in ("synced", "partial", "error")
        driver.save_screenshot(str(artifacts / "user.png"))

        link = driver.find_element(By.CSS_SELECTOR, 'a.dl[href$="/Hello-World.bundle"]')
        link.click()
        bundle = wait_download(downloads, "Hello-World.bundle")
        driver.get(demo_served + "/users")
        wait.until(ec.presence_of_element_located((By.ID, "users")))
        badges = {row.find_element(By.CSS_SELECTOR, "td a").text:
                  row.find_element(By.CSS_SELECTOR, ".badge").text
                  for row in driver.find_elements(By.CSS_SELECTOR, "#users tbody tr")}
        assert badges["ghost-user"] == "gone" and badges["octocat"] == "partial"
        driver.save_screenshot(str(artifacts / "users.png"))
        driver.get(demo_served + "/workers")
        driver.save_screenshot(str(artifacts / "workers.png"))
    finally:
        driver.quit()
    restored = tmp_path / "restored"
    subprocess.run(["git", "clone", "--quiet", str(bundle), str(restored)], check=True,
                   capture_output=True, timeout=60)
    branches = subprocess.run(["git", "-C", str(restored), "branch", "-a"], check=True,
                              capture_output=True, text=True).stdout
    assert "dev" in branches
    assert (restored / "README.md").exists() or any(restored.iterdir())
    if os.environ.get("BULKBACKUP_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(artifacts / "dashboard.png", ROOT / "docs" / "dashboard.png")


def test_without_chromium_the_browser_test_is_skipped_saying_what_to_install_but_fails_in_ci(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's test command on a machine without chromium: a skip with its reason; under
    .ci/run (CI=true): a failure."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium there (nor anything else)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        find_chromium()
    assert str(skipped.value) == NO_CHROMIUM
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        find_chromium()
    assert str(failed.value) == f"CI=true: the browser test {NO_CHROMIUM}"
