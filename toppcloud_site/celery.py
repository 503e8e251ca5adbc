"""The Celery app. Queues: `jobs` (orchestration), `nodeops` (touches hosts) and `cron` (scheduled runs:
beat's sends and the cron_run jobs, on workers of their own so a long deploy never delays a minute's run)."""

import os

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "toppcloud_site.settings")

app = Celery("toppcloud")
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
