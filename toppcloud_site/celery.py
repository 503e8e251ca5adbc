"""The Celery app. Queues: `jobs` (orchestration), `nodeops` (touches hosts) and `cron` (scheduled runs:
beat's sends and the cron_run jobs, on workers of their own so a long deploy never delays a minute's run)."""

import os

from celery import Celery
from celery.app.amqp import AMQP
from celery.signals import beat_init
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "toppcloud_site.settings")


class ShadowNamedAMQP(AMQP):
    """A task-sent event names the task as the worker's events do: by its shadow name (`jobs.run:deploy`).

    Flower merges every field of a task-sent event that arrives after the worker's (another process
    sends it), so with Celery's own it showed a job as `jobs.run` or `jobs.run:deploy` by chance.
    """

    def as_task_v2(self, *args, **kwargs):
        message = super().as_task_v2(*args, **kwargs)
        if message.sent_event and message.headers.get("shadow"):
            message.sent_event["name"] = message.headers["shadow"]
        return message


app = Celery("toppcloud", amqp="toppcloud_site.celery:ShadowNamedAMQP")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [
    Queue("jobs", Exchange("jobs", type="direct", durable=True), routing_key="jobs", durable=True),
    Queue("nodeops", Exchange("nodeops", type="direct", durable=True), routing_key="nodeops", durable=True),
    Queue("cron", Exchange("cron", type="direct", durable=True), routing_key="cron", durable=True),
]
# Beat sends by task name; this puts its cron sends on the cron queue.
app.conf.task_routes = {"jobs.submit_cron": {"queue": "cron"}}
# Celery's Django fixup closes the database connection around every task
# unless told to reuse it: a new PostgreSQL connection per job cost more than
# the job. Reuse it for this many tasks; jobs.run drops a broken connection
# and retries when the database fails under it.
app.conf.CELERY_DB_REUSE_MAX = 1000
app.autodiscover_tasks()


@beat_init.connect
def _beat_sends_no_task_sent_events(sender, **kwargs):
    """Beat's sends are housekeeping (the sweep, the seal, reconciles) and schedules (cron runs, backups):
    no `task-sent` event for them, so Flower lists no sweep every JOBS_SWEEP_INTERVAL seconds. The jobs a
    schedule starts are sent by the worker (dispatch) and show; a cron run's submit task shows once a
    worker receives it. The housekeeping tasks send no worker events either (jobs/tasks.py)."""
    sender.app.conf.task_send_sent_event = False
