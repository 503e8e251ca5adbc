"""Celery task names and beat entries are the strings of before the engine moved (issue 14).

Messages already queued, and django-celery-beat PeriodicTask rows, name tasks
by string: a renamed task would leave them unrunnable after an upgrade.
"""

import pytest
from celery import current_app
from django.conf import settings

from jobs import tasks  # noqa: F401 (registers toppcloud's tasks in this process)
from jobs.engine import events
from jobs.models import LogSeal
from tests.helpers import wait_for_job, wait_until

# As on main before jobs/engine/ existed (8c7ff04).
# Since: jobs.balancer_health (issue 16: the balancers' health changes on record).
TASK_NAMES = {"jobs.run", "jobs.sweep", "jobs.seal", "jobs.reconcile_nodes", "jobs.submit_backup", "jobs.submit_cron",
              "jobs.balancer_health"}
BEAT = {"toppcloud-sweep-jobs": "jobs.sweep", "toppcloud-seal-log": "jobs.seal",
        "toppcloud-reconcile-nodes": "jobs.reconcile_nodes", "toppcloud-balancer-health": "jobs.balancer_health"}


def test_the_task_names_and_beat_entries_are_those_of_before():
    assert {name for name in current_app.tasks if name.startswith("jobs.")} == TASK_NAMES
    assert {name: entry["task"] for name, entry in settings.CELERY_BEAT_SCHEDULE.items()} == BEAT


@pytest.mark.worker
def test_messages_sent_by_the_old_names_run(worker):
    # A job queued before the upgrade: its row and job.queued event, and a message naming "jobs.run" with its id.
    job = events.new_job("noop", target="old-message", params={"mark": True}, actor_kind="user", actor="tester")
    current_app.send_task("jobs.run", args=[job.pk], queue="jobs")
    done = wait_for_job(job.pk)
    assert done.status == "succeeded", done.error
    assert list(done.events.values_list("kind", flat=True)) == ["job.queued", "job.started", "noop.ran",
                                                                "job.succeeded"]
    # Beat's entry for the seal, as a message by name: the new job's head is sealed.
    before = LogSeal.objects.order_by("-number").values_list("number", flat=True).first() or 0
    current_app.send_task("jobs.seal", queue="jobs")
    wait_until(lambda: LogSeal.objects.filter(number__gt=before, jobs__contains=[[job.pk, done.last_seq,
                                                                                   done.last_hash]]).exists(),
               timeout=30, what="a seal holding the job's head")
