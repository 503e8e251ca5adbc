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
# the job. Reuse it for this many tasks; jobs/tasks.py still drops connections
# that are broken or older than CONN_MAX_AGE before each task.
app.conf.CELERY_DB_REUSE_MAX = 1000
app.autodiscover_tasks()
