"""Debian's chromium driven by selenium, for the tests of pages in a real browser."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tests.helpers import part_missing

NO_CHROMIUM = ("needs Debian's chromium and chromedriver on PATH: "
               "apt-get install chromium chromium-driver (.ci/run installs them)")


def find_chromium() -> tuple[str, str]:
    """Chromium and chromedriver. Without them the browser test is skipped, saying what to
    install (the README's test command passes on a fresh machine); with CI=true (.ci/run) it
    fails instead, so CI never passes without it."""
    exe, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    if exe is None or driver_exe is None:
        part_missing(NO_CHROMIUM, "the browser test ")
    return exe, driver_exe


def open_browser(chromium: tuple[str, str], profile: Path, downloads: Path) -> webdriver.Chrome:
    exe, driver_exe = chromium
    opts = Options()
    opts.binary_location = exe
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,1500"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "download.directory_upgrade": True, "safebrowsing.enabled": False})
    driver = webdriver.Chrome(service=Service(driver_exe), options=opts)
    driver.set_page_load_timeout(60)
    # Headless chromium needs to be told where downloads go (the prefs alone may not do).
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def wait_download(folder: Path, name: str, timeout_s: float = 60) -> Path:
    deadline = time.monotonic() + timeout_s
    target = folder / name
    while time.monotonic() < deadline:
        if target.exists() and not list(folder.glob("*.crdownload")):
            return target
        time.sleep(0.1)
    raise AssertionError(f"no download of {name}: {sorted(p.name for p in folder.iterdir())}")
