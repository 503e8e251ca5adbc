"""Celery tasks: thin, like views. They pass job ids; PostgreSQL holds the rest."""

from celery import shared_task
from celery.signals import task_prerun
from django.db import close_old_connections

from jobs import dispatch, runner


@shared_task(name="jobs.run", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id):
    runner.run(int(job_id), worker=self.request.hostname or "unknown")


@shared_task(name="jobs.sweep", acks_late=True)
def sweep():
    return dispatch.sweep()


@task_prerun.connect
def _fresh_connection(**kwargs):
    # Like a Django request: drop a broken or too old connection, keep a good one.
    close_old_connections()
