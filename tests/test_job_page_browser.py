"""The job page in a real browser (tests/browser.py): it follows a running job without a reload, counts a
running step's time up, closes the step with its duration, and never scrolls sideways for long text."""

import time

import pytest
from django.db import transaction

from jobs.engine import events
from jobs.engine.states import Kind
from nodeops import hostside
from tests import test_browser

W = "worker:browser-w1"
# The browser tests' fixtures: a superuser with a password, a headless chromium on the control plane's gunicorn.
admin_login, browser = test_browser.admin_login, test_browser.browser


@pytest.fixture
def running_job(live_db):
    with transaction.atomic():
        job = events.new_job("run", target="app:browser-live", params={"app": "browser-live"},
                             actor_kind="user", actor="alice")
    events.record(job.pk, Kind.STARTED, W, attempt=1, worker="w1", hostname="h", pid=1)
    events.record(job.pk, "step.started", W, step="venv")
    return job


def test_it_follows_a_running_job_until_it_ends_without_a_reload(browser, admin_login, running_job):
    b = browser
    b.log_in(*admin_login)
    b.open(f"/jobs/job/{running_job.pk}/change/")
    b.driver.execute_script("window.tcNotReloaded = true")
    assert b.job_status() == ("running", True)
    elapsed = b.css("#event-3 .tl-duration")
    b.wait(lambda: elapsed.text.startswith("running ") and elapsed.text != "running 0.00s", what="the step's clock")
    first = elapsed.text

    events.record(running_job.pk, "command", W, step="venv", rc=0, stdout="installed 12 packages", stderr="",
                  seconds=3.5, argv=["python3", "-I", "-c", hostside.source("release_venv_key"), "key"])
    b.wait(lambda: b.all("#event-4"), what="the command's row")
    row = b.css("#event-4")
    assert "node: release.venv_key key" in row.text and "import" not in row.text
    assert "tl-depth-1" in row.get_attribute("class")  # inside the open step
    assert elapsed.text != first  # still counting

    error = "pip failed: " + "no-matching-distribution-for-this-long-requirement-" * 30
    events.record(running_job.pk, "step.finished", W, step="venv", ok=False, seconds=4.25, error=error)
    events.record(running_job.pk, Kind.FAILED, W, error=error)
    status, live = b.wait_for_job(timeout=30)
    assert (status, live) == ("failed", True)
    b.wait(lambda: b.all("#event-6"), what="the last row")
    assert b.css("#event-3 .tl-duration").text == "4.25s"  # the step's start row got its duration
    assert "tl-failed" in b.css("#event-3").get_attribute("class")
    assert b.driver.execute_script("return window.tcNotReloaded === true")
    width, page = b.driver.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth]")
    assert page <= width, "the long error made the page scroll sideways"
    b.screenshot("job-page-live")
    time.sleep(1.5)  # polling has stopped: no request errors, the page as it was
    assert b.job_status() == ("failed", True) and len(b.all("tr[id^=event-]")) == 6
