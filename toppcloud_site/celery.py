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
app.autodiscover_tasks()
