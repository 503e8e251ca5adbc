"""The redaction canary: a secret every app of the session has (CANARY_SECRET, conftest's canary_secret) is
nowhere it must not be once the whole suite has run: not in the database, not in logs fetched from nodes,
not in rendered admin pages, not in Flower's task list.

This test runs last (the `last` mark). It first sends the canary everywhere a secret goes: an app
gets it, prints it, writes it to its logs, fails with it in the message; config is applied; logs are
fetched; all of it while Flower watches. Each path has a positive check too (the canary is really in the
app's environment and in the node's own log file), so a scan that finds nothing means something.
"""

import base64
import io
import json
import os
import time
import urllib.request

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client, RequestFactory
from django.urls import reverse

from jobs.engine import dispatch
from jobs.models import Job
from tests import workers
from tests.helpers import CANARY, wait_until
from tests.test_data_flow import run_command
from tests.test_deploy_flow import app_copy, deploy, get
from toppcloud_site.records.models import ConfigValue

pytestmark = [pytest.mark.hosts, pytest.mark.worker, pytest.mark.last]
NAME = f"canary{os.getpid() % 10000}"
MASK = "********"


@pytest.fixture
def flower(tmp_path):
    port = int(settings.TOPPCLOUD_API_URL.rsplit(":", 1)[1]) + 2
    process = workers.flower(tmp_path, port, "admin:flower-canary").start()
    auth = base64.b64encode(b"admin:flower-canary").decode()

    def tasks():
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks", headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()
    try:
        yield tasks
    finally:
        process.stop()


def test_the_canary_secret_is_in_no_event_log_page_or_flower_task(canary_secret, ready_nodes, test_hosts, tmp_path,
                                                                   flower):
    host, hostname = test_hosts[0], f"{NAME}.test"
    def flower_lists(text):
        return text in flower()

    def flower_listens():  # Flower sees only what happens once its receiver is connected: probe until it does
        probe = dispatch.submit("noop", target="canary-probe", actor_kind="user", actor="tester")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if flower_lists(f"[{probe.pk}] noop canary-probe"):
                return True
            time.sleep(0.1)
        return False
    wait_until(flower_listens, timeout=30, what="Flower to list a probe job")

    # --- the canary goes everywhere a secret goes -------------------------------------------------------
    code, deployed = deploy(app_copy(tmp_path, "chores", name=NAME), ready_nodes[0])
    assert code == 0, deployed.error
    status, body = get(host, hostname, "/env")
    assert json.loads(body)["CANARY_SECRET"] == canary_secret == CANARY  # the app really has it
    assert get(host, hostname, f"/log?marker={CANARY}") == (200, "logged")  # stderr, wsgi.errors, logging
    error_log = os.path.join(host.root, "logs", NAME, "error.log")
    wait_until(lambda: open(error_log).read().count(CANARY) >= 3, timeout=10, what="the canary in the node's log")

    code, printed = run_command("run", NAME, "--", "python", "-c", "import os; print(os.environ['CANARY_SECRET'])")
    # One output event, or several when the line and its newline arrive apart (a loaded machine).
    output = "".join(e.data["output"] for e in printed.events.filter(kind="output").order_by("seq"))
    assert code == 0 and output == MASK + "\n"
    code, failed = run_command("run", NAME, "--", "python", "-c",
                               "import os, sys; sys.exit('failed with ' + os.environ['CANARY_SECRET'])")
    assert code == 1 and f"failed with {MASK}" in failed.error, failed.error
    code, applied = run_command("config", "apply", "--app", NAME)
    assert code == 0, applied.error

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("logs", NAME, "--lines", "50", "--log", "error", stdout=out)
    fetched = out.getvalue()
    assert exit_info.value.code == 0, fetched
    assert f"stderr {MASK}" in fetched and f"INFO chores: logging {MASK}" in fetched  # the lines, masked
    assert CANARY not in fetched

    jobs = [deployed, printed, failed, applied, Job.objects.filter(kind="logs").latest("queued_at")]
    wait_until(lambda: all(flower_lists(f"[{job.pk}] ") for job in jobs), timeout=20,
               what="Flower to list the jobs that handled the canary")

    # --- and it is nowhere ------------------------------------------------------------------------------
    assert CANARY not in flower()

    assert connection.vendor == "postgresql"
    hits, name_hits = {}, 0
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT count(*) FROM {quoted} AS t WHERE t::text LIKE %s", [f"%{CANARY}%"])
            count = cursor.fetchone()[0]
            if count:
                hits[table] = count
            cursor.execute(f"SELECT count(*) FROM {quoted} AS t WHERE t::text LIKE %s", [f"%{NAME}%"])
            name_hits += cursor.fetchone()[0]
    assert hits == {}, f"the canary is stored in plain text: {hits} (table: rows)"
    assert name_hits > 20  # the scan reads the rows: the app's name is in many of them

    superuser = User.objects.create_superuser(f"{NAME}-admin", password=None)
    request = RequestFactory().get("/")
    request.user = superuser
    pages = [reverse("admin:index")]
    for model, model_admin in admin.site._registry.items():  # every list, the newest 10 change pages of each
        info = model._meta.app_label, model._meta.model_name
        pages.append(reverse("admin:%s_%s_changelist" % info))
        for pk in model_admin.get_queryset(request).order_by("-pk").values_list("pk", flat=True)[:10]:
            pages.append(reverse("admin:%s_%s_change" % info, args=[pk]))
    canary_record = ConfigValue.objects.get(scope="global", key="CANARY_SECRET")
    pages.append(reverse("admin:records_configvalue_change", args=[canary_record.pk]))
    pages += [reverse("admin:jobs_job_change", args=[job.pk]) for job in jobs]
    admin_client = Client()  # not pytest-django's admin_client: its transaction would hold back the jobs
    admin_client.force_login(superuser)
    seen = 0
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, (page, response.status_code)
        content = response.content.decode()
        assert CANARY not in content, f"the canary is shown on {page}"
        seen += "CANARY_SECRET" in content
    assert seen >= 2  # the pages list the secret's name (set, not shown)
    assert len(pages) > 40
