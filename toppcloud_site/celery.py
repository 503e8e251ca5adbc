"""The Celery app. Queues: `jobs` (orchestration) and `nodeops` (touches hosts)."""

import os

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "toppcloud_site.settings")

app = Celery("toppcloud")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [
    Queue("jobs", Exchange("jobs", type="direct", durable=True), routing_key="jobs", durable=True),
    Queue("nodeops", Exchange("nodeops", type="direct", durable=True), routing_key="nodeops", durable=True),
]
# Celery's Django fixup closes the database connection around every task
# unless told to reuse it: a new PostgreSQL connection per job cost more than
# the job. Reuse it for this many tasks; jobs.run drops a broken connection
# and retries when the database fails under it.
app.conf.CELERY_DB_REUSE_MAX = 1000
app.autodiscover_tasks()
