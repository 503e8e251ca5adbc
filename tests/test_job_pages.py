"""The job list and the job page: outcomes, a timeline with durations, host programs by name, live updates."""

import json
import re

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from jobs import job_page
from jobs.engine import events
from jobs.engine.redact import register_secret
from jobs.engine.states import Kind
from nodeops import hostside

pytestmark = pytest.mark.django_db

W = "worker:w1"
LONG_ERROR = "health check failed: GET /health answered 500\n" + "Traceback line " * 200


def new_job(kind="deploy", target="app:pages"):
    with transaction.atomic():
        return events.new_job(kind, target=target, params={"app": "pages"}, actor_kind="user", actor="alice")


def started(job):
    events.record(job.pk, Kind.STARTED, W, attempt=1, worker="w1", hostname="h", pid=1)
    return job


@pytest.fixture
def deploy_job():
    """A failed deploy: a step with a host program (sent with its whole source, as events of before carry it),
    an old program no file here has any more, and a long error."""
    job = started(new_job())
    events.record(job.pk, "step.started", W, step="start release")
    events.record(job.pk, "command", W, step="start release", rc=0, stdout="started", stderr="", seconds=0.25,
                  argv=["python3", "-I", "-c", hostside.source("release_stop"), "/srv/sock", "pages-r1", "/x.conf"])
    events.record(job.pk, "command", W, step="start release", rc=1, stdout="", stderr="boom", seconds=0.5,
                  argv=["python3", "-I", "-c", '"""An old host program."""\nimport sys\nprint(sys.argv)\n', "a1"])
    events.record(job.pk, "step.finished", W, step="start release", ok=True, seconds=1.25)
    events.record(job.pk, "step.started", W, step="health")
    events.record(job.pk, "step.finished", W, step="health", ok=False, seconds=62.5, error=LONG_ERROR)
    events.record(job.pk, Kind.FAILED, W, error=LONG_ERROR)
    return job


def page_of(client, job, query=""):
    response = client.get(reverse("admin:jobs_job_change", args=[job.pk]) + query)
    assert response.status_code == 200
    return response.content.decode()


def row(page, seq):
    match = re.search(rf'<tr id="event-{seq}".*?</tr>', page, re.S)
    assert match, f"no row for event {seq}"
    return match.group(0)


def test_it_lists_each_job_with_its_errors_first_line_or_its_summary(admin_client, deploy_job):
    ok = started(new_job("backup", "app:listed"))
    events.record(ok.pk, Kind.SUCCEEDED, W, summary="backup pages-1 (3 files, 12 kB)\nsecond line")
    page = admin_client.get(reverse("admin:jobs_job_changelist")).content.decode()
    assert "Summary or error" in page
    error_cell = re.search(r'<span class="job-error" title="([^"]*)"[^>]*>([^<]*)</span>', page, re.S)
    assert error_cell.group(2) == "health check failed: GET /health answered 500"
    assert error_cell.group(1).startswith("health check failed") and "Traceback line Traceback" in error_cell.group(1)
    assert '<span class="job-summary" title="backup pages-1 (3 files, 12 kB)\nsecond line">' \
           'backup pages-1 (3 files, 12 kB)</span>' in page


def test_the_list_counts_at_most_a_capped_number_of_jobs_and_reads_no_distinct_kinds_or_dates(admin_client,
                                                                                               deploy_job):
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(reverse("admin:jobs_job_changelist") + "?status__exact=failed").content.decode()
    assert "app:pages" in page  # (committed jobs of other tests may be listed too)
    assert "_facets" not in page  # no "Show counts": a COUNT per filter choice over every job
    sql = [q["sql"] for q in queries.captured_queries]
    counts = [s for s in sql if "COUNT(" in s.upper()]
    assert len(counts) == 1 and "LIMIT 10001" in counts[0]  # never the whole table, and no second full count
    assert not [s for s in sql if "DISTINCT" in s.upper() or "DATE_TRUNC" in s.upper()]
    assert len(sql) <= 6
    for kind in ("deploy", "backup", "setup_node"):  # the kind filter lists the registry's kinds
        assert f"?kind={kind}" in page


def test_the_job_page_shows_steps_with_durations_and_host_programs_by_name(admin_client, deploy_job):
    page = page_of(admin_client, deploy_job)
    start, command, old, end, health = (row(page, seq) for seq in (3, 4, 5, 6, 7))
    assert 'class="tl-duration">1.25s</td>' in start and "tl-step" in start  # started → finished, on the start row
    assert 'class="tl-duration">1m02s</td>' in health and "tl-failed" in health
    assert "tl-depth-1" in command and "0.25s" in command
    assert "node: release.stop /srv/sock pages-r1 /x.conf" in command
    assert "&lt;program of 4 lines: An old host program.&gt; a1" in old
    for line in hostside.source("release_stop").splitlines():
        if len(line.strip()) > 25:
            assert line.strip() not in page  # no line of a program's source on the page, not even under data
    assert "import sys" not in page
    assert 'id="job-status"' in page and ">failed</b>" in page and "data-live=" in page
    assert "job-live-note" not in page and "fetch(" not in page  # an ended job is not polled


def test_long_text_wraps_instead_of_scrolling(admin_client, deploy_job):
    page = page_of(admin_client, deploy_job)
    assert "table-layout: fixed" in page
    assert re.search(r"\.toppcloud-timeline pre, \.toppcloud-timeline code \{ white-space: pre-wrap; "
                     r"overflow-wrap: anywhere;", page)
    assert "Traceback line " * 50 in row(page, 8)  # all of it, in a cell that wraps


def test_the_page_masks_a_secret_registered_after_the_event_was_written(admin_client):
    job = started(new_job())
    events.record(job.pk, "log", W, text="token is page-secret-4f9a2b")
    register_secret("page-secret-4f9a2b")
    page = page_of(admin_client, job)
    assert "page-secret-4f9a2b" not in page and "token is ********" in page


def test_a_running_job_shows_its_open_step_elapsed_and_polls_for_new_events(admin_client):
    job = started(new_job())
    events.record(job.pk, "step.started", W, step="venv")
    page = page_of(admin_client, job)
    live_url = reverse("admin:jobs_job_events", args=[job.pk])
    assert f'id="job-status" class="job-status job-status-running" data-live="{live_url}" data-last-seq="3"' in page
    assert 'data-running-since="' in row(page, 3) and "fetch(" in page and "job-live-note" in page

    answer = admin_client.get(live_url + "?after=3").json()
    assert (answer["status"], answer["terminal"], answer["last_seq"], answer["rows"].strip()) == (
        "running", False, 3, "")
    events.record(job.pk, "command", W, step="venv", rc=0, stdout="installed", stderr="", seconds=3.5,
                  argv=["python3", "-I", "-c", hostside.source("release_venv_key"), "x"])
    events.record(job.pk, "step.finished", W, step="venv", ok=True, seconds=4.0)
    events.record(job.pk, Kind.SUCCEEDED, W, summary="deployed r2")
    answer = admin_client.get(live_url + "?after=3").json()
    assert (answer["status"], answer["terminal"], answer["more"], answer["last_seq"]) == ("succeeded", True, False, 6)
    assert [int(s) for s in re.findall(r'<tr id="event-(\d+)"', answer["rows"])] == [4, 5, 6]
    assert "node: release.venv_key x" in answer["rows"] and "import " not in answer["rows"]
    assert 'data-step-close="venv" data-duration="4.00s" data-ok="true"' in answer["rows"]
    assert answer["summary"] == "deployed r2"


def test_the_endpoint_is_permission_checked_like_the_page(client, deploy_job):
    from tests.test_admin import staff_client

    url = reverse("admin:jobs_job_events", args=[deploy_job.pk])
    response = client.get(url + "?after=0")
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert staff_client("no-jobs", "view_app").get(url).status_code == 403
    viewer = staff_client("job-viewer", "view_job")
    answer = json.loads(viewer.get(url + "?after=6").content)
    assert answer["status"] == "failed" and answer["last_seq"] == 9
    assert viewer.get(reverse("admin:jobs_job_change", args=[deploy_job.pk])).status_code == 200
    assert viewer.get(reverse("admin:jobs_job_events", args=[10 ** 9])).status_code == 404


def test_a_huge_job_shows_its_last_events_with_links_to_earlier_ones_and_to_all(admin_client):
    job = started(new_job())
    extra = job_page.PAGE_SIZE + 50
    with transaction.atomic():
        locked = events.lock(job.pk)
        for i in range(extra):
            events.append(locked, "log", W, {"text": f"line {i}"})
    total = extra + 2
    page = page_of(admin_client, job)
    seqs = [int(s) for s in re.findall(r'<tr id="event-(\d+)"', page)]
    assert seqs == list(range(total - job_page.PAGE_SIZE + 1, total + 1))
    assert f"Events {total - job_page.PAGE_SIZE + 1}–{total} of {total}." in re.sub(r"<[^>]+>", "", page)
    assert f'href="?before={total - job_page.PAGE_SIZE + 1}"' in page and "show all" in page
    earlier = page_of(admin_client, job, f"?before={total - job_page.PAGE_SIZE + 1}")
    assert [int(s) for s in re.findall(r'<tr id="event-(\d+)"', earlier)] == list(
        range(1, total - job_page.PAGE_SIZE + 1))
    assert "fetch(" not in earlier  # only the newest page grows
    everything = page_of(admin_client, job, "?events=all")
    assert len(re.findall(r'<tr id="event-(\d+)"', everything)) == total


def test_the_job_page_reads_the_same_few_rows_whatever_the_jobs_size(admin_client, django_assert_max_num_queries):
    small = started(new_job())
    big = started(new_job())
    with transaction.atomic():
        locked = events.lock(big.pk)
        for i in range(600):
            events.append(locked, "step.started" if i % 3 == 0 else "log", W, {"step": f"s{i}", "text": "x"})
    counts = []
    for job in (small, big):
        with CaptureQueriesContext(connection) as queries:
            page_of(admin_client, job)
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 6
    with django_assert_max_num_queries(6):
        admin_client.get(reverse("admin:jobs_job_events", args=[big.pk]) + "?after=100")


def test_the_list_of_failures_and_its_count_read_the_partial_index_of_failed_jobs(deploy_job):
    from jobs.admin import CappedPaginator
    from jobs.models import Job

    failed = Job.objects.filter(status="failed")
    queries = [failed.order_by("-queued_at", "-id")[:50], failed.order_by()[:CappedPaginator.CAP + 1]]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a test's few rows: the planner would scan the table
        for qs in queries:
            sql, params = qs.values("id").query.sql_with_params()
            cursor.execute(f"EXPLAIN {sql}", params)
            assert "jobs_job_failed_idx" in " ".join(row[0] for row in cursor.fetchall())


def test_show_all_stops_at_its_limit_and_names_the_command_for_the_rest(admin_client, monkeypatch):
    job = started(new_job())
    with transaction.atomic():
        locked = events.lock(job.pk)
        for i in range(30):
            events.append(locked, "log", W, {"text": f"line {i}"})
    monkeypatch.setattr(job_page, "PAGE_SIZE", 10)
    monkeypatch.setattr(job_page, "ALL_LIMIT", 20)
    page = page_of(admin_client, job, "?events=all")
    assert len(re.findall(r'<tr id="event-(\d+)"', page)) == 10  # not all 32: the newest 10, as without it
    assert "?events=all" not in page and f"manage.py jobs show {job.pk}" in page


def test_a_dead_letters_page_has_the_same_timeline_and_live_status(admin_client):
    job = started(new_job("task", "task:pages:send_mail"))
    events.record(job.pk, Kind.FAILED, W, error="SMTP refused\nsecond line")
    page = admin_client.get(reverse("admin:jobs_deadletter_change", args=[job.pk])).content.decode()
    live_url = reverse("admin:jobs_deadletter_events", args=[job.pk])
    assert f'data-live="{live_url}"' in page and 'id="event-3"' in page
    assert admin_client.get(live_url + "?after=2").json()["status"] == "failed"
    listing = admin_client.get(reverse("admin:jobs_deadletter_changelist")).content.decode()
    assert 'title="SMTP refused\nsecond line" style="color:#c62828">SMTP refused</span>' in listing


def test_the_page_polls_even_when_events_came_between_reading_the_job_and_its_events(rf, admin_user):
    from jobs.models import Job

    job = new_job()
    stale = Job.objects.get(pk=job.pk)  # the row as the page read it: queued, one event
    started(job)  # then the worker's job.started, before the page reads the events
    request = rf.get("/")
    request.user = admin_user
    html = job_page.timeline(request, stale, live_url="/live/")
    assert 'id="event-2"' in html and "fetch(" in html  # shown, and the page keeps polling for the status
    assert "Events 1–<span class=\"tl-last\">2</span> of <span class=\"tl-last\">2</span>." in html
