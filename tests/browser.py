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
        if found:
            return found[0].text.strip().lower(), found[0].get_attribute("data-live") is not None
        # The job page before it updated live (no #job-status yet): the status field of its read-only form,
        # by its label ("Succeeded").
        field = self.all(".field-status .readonly")
        return (field[0].text.strip().lower() if field else ""), False

    def wait_for_job(self, timeout=180, stall=30):
        """Watch the job page until its job ends; (status, whether it changed live without a reload).

        The page is reloaded while #job-status lacks data-live (the job page of before issue 15's live
        updates). A page that says it is live is only watched; if its status and events stand still for
        `stall` seconds it is reloaded once more and the answer says it was not live (a page that claims to
        be live and is not must not hang the test; the caller decides whether live was required).
        """
        self.driver.execute_script("window.tcNotReloaded = true")
        reloaded = False
        deadline = time.monotonic() + timeout
        seen, changed_at = None, time.monotonic()
        while time.monotonic() < deadline:
            try:
                status, live = self.job_status()
                shown = (status, len(self.all("#job-timeline tbody tr, .toppcloud-timeline tbody tr")))
            except StaleElementReferenceException:
                continue
            if status in TERMINAL:
                stayed = self.driver.execute_script("return window.tcNotReloaded === true")
                return status, live and stayed and not reloaded
            if shown != seen:
                seen, changed_at = shown, time.monotonic()
            if not live or time.monotonic() - changed_at > stall:
                time.sleep(0.5)
                self.driver.refresh()
                reloaded, changed_at = True, time.monotonic()
            else:
                time.sleep(0.1)
        raise AssertionError(f"the job page still says {self.job_status()[0]!r} after {timeout}s:\n"
                             f"{self.text()[-3000:]}\nconsole: {self.console()}")
