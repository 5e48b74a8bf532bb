"""Headless Chromium for the tests that drive a real browser (Debian's chromium and chromium-driver).

`click_and_wait` follows a click to the page it leads to without asking about the old page's nodes:
`staleness_of` does, and chromedriver can answer that question mid-navigation with an "unhandled
inspector error" instead of "stale element", which failed CI once. A flag set on the old page's
`window` is gone on the new one; that is the whole check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e .[test])")

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def headless_chromium(downloads: Path | None = None):
    """A headless Chromium driver; files it downloads land in `downloads` without a prompt."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1200,1000"):
        opts.add_argument(flag)
    if downloads is not None:  # the profile's prefs, and the DevTools call headless honours
        opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                               "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which("chromedriver")))
    if downloads is not None:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def click_and_wait(driver, by: str, what: str, timeout: float = 10) -> None:
    """Click the element and wait until a new document has loaded in its place."""
    driver.execute_script("window.__lightseekOldPage = true")
    driver.find_element(by, what).click()

    def new_page_loaded(d) -> bool:
        return bool(d.execute_script("return window.__lightseekOldPage !== true && document.readyState === 'complete'"))

    # mid-navigation the script can fail (no document yet): that is "not yet", not an error
    WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,)).until(new_page_loaded)
