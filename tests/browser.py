"""A real browser for tests: Debian's chromium, headless, driven through its chromedriver by Selenium.

`.ci/run` installs both (apt: chromium, chromium-driver). Screenshots go to var/screenshots/ in the checkout
(gitignored; TOPPCLOUD_SCREENSHOT_DIR elsewhere) for people to look at after a run.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from jobs.engine.states import TERMINAL

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("TOPPCLOUD_SCREENSHOT_DIR") or ROOT / "var" / "screenshots")
WIDTH = 1400


class Browser:
    """One headless chromium with a profile of its own (a temporary directory, removed by quit())."""

    def __init__(self, base_url):
        self.base_url = base_url.rstrip("/")
        self.profile = tempfile.mkdtemp(prefix="tc-chromium-")
        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    f"--window-size={WIDTH},1000", f"--user-data-dir={self.profile}", "--no-first-run",
                    "--disable-extensions", "--disable-background-networking"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for failures
        # The driver named by path: Selenium Manager never runs, nothing is downloaded.
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=os.devnull), options=options)
        self.driver.implicitly_wait(0)

    def quit(self):
        try:
            self.driver.quit()  # ends chromedriver and the browser it started
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, path):
        self.driver.get(self.base_url + path)

    def css(self, selector):
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector):
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self):
        return self.driver.find_element(By.TAG_NAME, "body").text

    def log_in(self, username, password):
        self.open("/login/")
        self.css("#id_username").send_keys(username)
        self.css("#id_password").send_keys(password)
        self.css("input[type=submit]").click()
        self.wait(lambda: not self.driver.current_url.rstrip("/").endswith("/login"), what="the login to finish")

    def wait(self, predicate, timeout=30, what="condition", interval=0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except StaleElementReferenceException:
                value = None
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} at {self.driver.current_url}:\n"
                             f"{self.text()[:3000]}\nconsole: {self.console()}")

    def console(self):
        """What the page logged to its console (errors of its scripts among them)."""
        return [(e["level"], e["message"]) for e in self.driver.get_log("browser")]

    def screenshot(self, name):
        """The whole page as var/screenshots/NAME.png (the window stretched to the page's height)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(WIDTH, min(max(int(height) + 120, 600), 6000))
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(WIDTH, 1000)
        return path

    def job_status(self):
        """(the job page's status, whether the page keeps it live): the element id="job-status" of the job page,
        its data-live attribute saying the page updates it without a reload."""
        found = self.all("#job-status")
        assert found, f"no #job-status on the page:\n{self.text()[-2000:]}"
        return found[0].text.strip().lower(), found[0].get_attribute("data-live") is not None

    def wait_for_job(self, timeout=180):
        """Watch the job page, never reloading it, until its job ends: (its last status, True: it updated live).

        The page must follow the job by itself (#job-status with data-live): one that is not live, or
        reloads, or still shows a running job after `timeout`, fails.
        """
        self.driver.execute_script("window.tcNotReloaded = true")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, live = self.job_status()
            assert live, f"the job page does not update live (#job-status has no data-live):\n{self.text()[-2000:]}"
            assert self.driver.execute_script("return window.tcNotReloaded === true"), "the job page reloaded"
            if status in TERMINAL:
                return status, live
            time.sleep(0.1)
        raise AssertionError(f"the job page still says {self.job_status()[0]!r} after {timeout}s without a reload:\n"
                             f"{self.text()[-3000:]}\nconsole: {self.console()}")
