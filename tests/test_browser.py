"""The admin in a real browser (issue 15, point 9): headless chromium against the control plane's real web
server (gunicorn), a real worker and real test hosts. Log in, deploy by uploading an archive, watch the job
page until the job succeeds, roll back from the App page, see the dashboard change. Screenshots of each page
are written to var/screenshots/ (tests/browser.py)."""

import os
import secrets
import shutil
import tarfile
import zipfile

import pytest

from jobs.models import Job, LiveRelease
from selenium.webdriver.support.ui import Select

from tests.browser import SCREENSHOTS, Browser
from tests.helpers import wait_for_job
from tests.test_deploy_flow import app_copy, get

pytestmark = [pytest.mark.hosts, pytest.mark.worker]
APP = "browserhello"


@pytest.fixture
def admin_login(live_db):
    """A superuser with a password, committed: the web server's processes see it."""
    from django.contrib.auth.models import User

    username, password = f"browser-{os.getpid()}", secrets.token_urlsafe(16)
    user = User.objects.create_superuser(username, f"{username}@example.test", password)
    yield username, password
    user.delete()


@pytest.fixture
def browser(control_web):
    b = Browser(control_web)
    yield b
    b.quit()


def packed(app_dir, kind, dest):
    """The app directory as a person would pack it: the directory itself in a .tar.gz, or its files in a .zip."""
    if kind == "tar.gz":
        path = dest / f"{app_dir.name}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(app_dir, arcname=app_dir.name)
    else:
        path = dest / f"{app_dir.name}.zip"
        with zipfile.ZipFile(path, "w") as z:
            for f in sorted(app_dir.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(app_dir).as_posix())
    return path


def upload_and_follow(browser, archive, node):
    """Deploy an archive from the admin; the deploy job once its page says it ended."""
    browser.open("/records/app/")
    browser.css("#deploy-archive").click()
    browser.wait(lambda: browser.all("#id_archive"), what="the upload form")
    browser.css("#id_archive").send_keys(str(archive))
    browser.css(f'input[name=nodes][value="{node.pk}"]').click()
    browser.css("#upload-deploy").click()
    browser.wait(lambda: "/jobs/job/" in browser.driver.current_url, what="the deploy job's page")
    return follow(browser)


def follow(browser):
    job_id = int(browser.driver.current_url.rstrip("/").split("/")[-2])
    status, live = browser.wait_for_job()
    return Job.objects.get(pk=job_id), status, live


def test_it_deploys_an_upload_watches_the_job_rolls_back_and_the_dashboard_follows(
        browser, admin_login, ready_nodes, test_hosts, tmp_path):
    node, host = ready_nodes[0], test_hosts[0]  # conftest's nodes: one per test host, in order
    browser.log_in(*admin_login)
    assert browser.all("#dash-apps") and browser.all("#dash-nodes")  # the dashboard
    browser.screenshot("01-dashboard-before")

    # 1. Deploy version 1 by uploading the app directory packed as a .tar.gz.
    v1 = packed(app_copy(tmp_path, "hello", name=APP, version="1"), "tar.gz", tmp_path)
    job1, status, live = upload_and_follow(browser, v1, node)
    browser.screenshot("02-job-page-deploy-v1")
    assert (job1.kind, status, job1.status, job1.actor) == ("deploy", "succeeded", "succeeded", admin_login[0]), \
        job1.error
    assert get(host, f"{APP}.test")[1].count("hello version 1") == 1

    # 2. Version 2, this time as a .zip of its files.
    v2 = packed(app_copy(tmp_path, "hello", name=APP, version="2"), "zip", tmp_path)
    job2, status, _ = upload_and_follow(browser, v2, node)
    assert status == "succeeded", job2.error
    assert "hello version 2" in get(host, f"{APP}.test")[1]
    release1, release2 = job1.params["release"], job2.params["release"]
    assert release1 != release2

    # 3. The dashboard says version 2 is live there.
    browser.open("/")
    row = f'tr.live-row[data-app="{APP}"][data-node="{node.name}"]'
    assert browser.css(row).get_attribute("data-release") == release2
    assert "healthy" in browser.css(row).text

    # 4. Roll back to version 1 from the App page.
    browser.css(f'{row} th a').click()
    browser.wait(lambda: browser.all(f"#release-{release1}"), what="the App page's releases")
    browser.screenshot("03-app-page")
    browser.css(f"#release-{release1} .rollback-btn").click()
    browser.wait(lambda: "/jobs/job/" in browser.driver.current_url, what="the rollback job's page")
    rollback, status, _ = follow(browser)
    browser.screenshot("04-job-page-rollback")
    assert (rollback.kind, status, rollback.params["release"]) == ("rollback", "succeeded", release1), rollback.error
    assert "hello version 1" in get(host, f"{APP}.test")[1]
    assert LiveRelease.objects.get(app__name=APP, node=node).release.name == release1

    # 5. Ping the node from the node list: its load, disk and memory reach the dashboard.
    browser.open("/records/node/")
    browser.css(f'input[name=_selected_action][value="{node.pk}"]').click()
    Select(browser.css("select[name=action]")).select_by_value("ping_nodes")
    browser.css("button[name=index]").click()
    ping = wait_for_job(browser.wait(lambda: Job.objects.filter(kind="ping_node", target=f"node:{node.name}")
                                     .order_by("-queued_at").first(), what="the ping job").pk)
    assert ping.status == "succeeded" and ping.result["disk_total_bytes"] > 0, ping.error

    # 6. The dashboard changed with all of it.
    browser.open("/")
    assert browser.css(row).get_attribute("data-release") == release1
    assert f"job {rollback.pk}" in browser.css(row).text
    node_row = browser.css(f'#dash-nodes tr[data-node="{node.name}"]').text
    assert "up" in node_row and f"{ping.result['load1']}, {ping.result['load5']}" in node_row, node_row
    assert "free" in node_row and "%" in node_row
    browser.screenshot("05-dashboard-after")

    # A hostile archive is refused on the form, naming the member; nothing is deployed.
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(app_copy(tmp_path, "hello", name=APP, version="3") / "app.ini", arcname="app.ini")
        tar.add(v1, arcname="../../outside.tar.gz")
    before = list(Job.objects.filter(kind="deploy").values_list("pk", flat=True))
    browser.open("/records/app/upload/")
    browser.css("#id_archive").send_keys(str(evil))
    browser.css(f'input[name=nodes][value="{node.pk}"]').click()
    browser.css("#upload-deploy").click()
    refusal = browser.wait(lambda: browser.all("#upload-refused"), what="the refusal")[0].text
    browser.screenshot("06-upload-refused")
    assert "nothing was deployed: archive member '../../outside.tar.gz' would be written outside" in refusal
    refused = Job.objects.filter(kind="deploy").exclude(pk__in=before).get()  # the attempt, recorded as refused
    assert refused.status == "failed" and "would be written outside" in refused.error
    assert live  # every job page above followed its job without a reload
    print(f"\nscreenshots in {SCREENSHOTS}")
    shutil.rmtree(tmp_path, ignore_errors=True)

