"""Celery tasks: thin, like views. They pass job ids; PostgreSQL holds the rest."""

from celery import shared_task
from django.db import DatabaseError, close_old_connections

from jobs import dispatch, runner


@shared_task(name="jobs.run", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id, queued_hash=None):
    try:
        runner.run(int(job_id), worker=self.request.hostname or "unknown", queued_hash=queued_hash)
    except DatabaseError:
        # The database failed under the job, so its end could not be recorded:
        # drop the broken connection. Still queued, the sweeper sends it again;
        # running, the next heartbeat shows it given up and the sweeper ends it.
        close_old_connections()
        raise


@shared_task(name="jobs.sweep", acks_late=True)
def sweep():
    return dispatch.sweep()


@shared_task(name="jobs.reconcile_nodes", acks_late=True)
def reconcile_nodes():
    """Beat's toppcloud-reconcile-nodes: a reconcile_node job per node (the jobs touch the hosts, not this)."""
    from jobs import reconcile

    return reconcile.submit_periodic()


@shared_task(name="jobs.submit_backup", acks_late=True)
def submit_backup(app):
    """A scheduled backup (django-celery-beat entry `backup APP`): queue the backup job."""
    from jobs.states import ActorKind

    job = dispatch.submit("backup", target=f"app:{app}", params={"app": app}, actor_kind=ActorKind.SCHEDULE,
                          actor=f"backup {app}")
    return job.pk


@shared_task(name="jobs.submit_cron", acks_late=True)
def submit_cron(app, entry):
    """A scheduled cron run (django-celery-beat entry `cron APP ENTRY`): queue its cron_run job."""
    from django.utils import timezone

    from jobs import cron
    from jobs.states import ActorKind

    try:
        job = cron.submit_run(app, entry, actor_kind=ActorKind.SCHEDULE, actor=cron.task_name(app, entry),
                              scheduled_at=timezone.now())
    except cron.CronRefused:
        return None  # the entry went away after beat read its schedule
    return job.pk
