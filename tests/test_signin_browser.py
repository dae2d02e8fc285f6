"""Sign in with GitHub, public add and a user's history in a real browser (Debian's
chromium through selenium), against a real `bulkbackup serve` and the stand-in's OAuth
pages (bulkbackup/testing/oauth.py). Screenshots go to the artifacts folder it prints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from bulkbackup.queue import history
from tests.browser import open_browser
from tests.helpers import stop_serve
from tests.signin_site import SignInSite, start_site


@pytest.fixture
def site(redis_server: str, tmp_path: Path) -> Iterator[SignInSite]:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushall()
    served, forge = start_site(tmp_path, redis_server)
    yield SignInSite(served, forge, client)
    stop_serve(served)
    forge.stop()
    client.close()


def test_sign_in_priority_sign_out_public_add_history(
        chromium: tuple[str, str], site: SignInSite, tmp_path: Path,
        artifacts: Path) -> None:
    history.record(site.r, "Octo-Cat", history.entry(1_700_000_000, 3, 45_678, 0))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = open_browser(chromium, tmp_path / "profile", downloads)
    wait = WebDriverWait(driver, 30)
    url = site.served.url
    try:
        driver.get(url + "/")
        wait.until(ec.presence_of_element_located((By.ID, "sign-in"))).click()
        # The stand-in's authorize page: sign in as octo-cat (GitHub spells it Octo-Cat).
        wait.until(ec.presence_of_element_located((By.ID, "login"))).send_keys("octo-cat")
        driver.save_screenshot(str(artifacts / "authorize.png"))
        driver.find_element(By.ID, "authorize").click()
        wait.until(ec.presence_of_element_located((By.ID, "me")))
        assert driver.current_url == url + "/users/Octo-Cat"
        assert driver.find_element(By.ID, "signed-in-as").text == \
            "signed in as Octo-Cat · priority user"
        assert "priority user" in driver.find_element(By.ID, "priority").text
        rows = driver.find_elements(By.CSS_SELECTOR, "#syncs tbody tr")
        assert [r.text for r in rows] == ["2023-11-14T22:13:20Z 3 45.7 kB 0"]
        driver.save_screenshot(str(artifacts / "signed-in.png"))
        assert site.r.zscore("tracked", "github.com/Octo-Cat") == float("-inf")
        assert site.r.zscore("bulkbackup:priority", "github.com/Octo-Cat") is not None
        cookies = {c["name"]: c for c in driver.get_cookies()}
        assert set(cookies) == {"bb_session"}  # the sign-in's state cookie is gone
        assert cookies["bb_session"]["httpOnly"] and cookies["bb_session"]["sameSite"] == "Lax"
        [token] = site.forge.oauth.issued
        assert token not in str(cookies) and token not in driver.page_source
        assert token not in site.served.log.read_text()

        driver.find_element(By.ID, "sign-out").click()
        wait.until(ec.presence_of_element_located((By.ID, "sign-in")))
        assert driver.current_url == url + "/" and not driver.find_elements(By.ID, "me")

        # Public add from the dashboard's form (its CSRF token from the session's cookie),
        # with the autocomplete of tracked logins.
        box = driver.find_element(By.ID, "public-add-login")
        box.send_keys("oct")
        wait.until(lambda d: [o.get_attribute("value") for o in d.find_elements(
            By.CSS_SELECTOR, "#known-logins option")] == ["Octo-Cat"])
        result = driver.find_element(By.ID, "public-add-result")
        for typed, said in (("dave", "added: dave"), ("CAROL-x", "added: Carol-X"),
                            ("nobody-here", "not on GitHub: nobody-here"),
                            ("erin", "at most 3 new logins an hour from one address")):
            box.clear()
            box.send_keys(typed)
            driver.find_element(By.CSS_SELECTOR, "#public-add-form button").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "public-add-result"), said))
        assert result.text.startswith("at most 3 new logins an hour from one address")
        driver.save_screenshot(str(artifacts / "public-add.png"))
        assert site.r.zscore("tracked", "github.com/Carol-X") == float("-inf")
        assert site.r.zscore("tracked", "github.com/erin") is None
    finally:
        driver.quit()
