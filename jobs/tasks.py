"""Celery tasks: thin, like views. They pass job ids; PostgreSQL holds the rest."""

from celery import shared_task
from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs import actions, beat
from jobs.engine import runner, seal as sealing, sweeper
from jobs.engine.states import ActorKind
from jobs.steps import cron
from jobs.steps.data import SCHEDULE_TASK


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
    return sweeper.sweep()


@shared_task(name="jobs.reconcile_nodes", acks_late=True)
def reconcile_nodes():
    """Beat's toppcloud-reconcile-nodes: a reconcile_node job per node (the jobs touch the hosts, not this)."""
    return actions.reconcile_nodes()


@shared_task(name="jobs.seal", acks_late=True)
def seal():
    """Seal the log: every job head and the audit head that changed since the last seal (jobs/engine/seal.py)."""
    made = sealing.seal()
    return made and made.number


@shared_task(name="jobs.submit_backup", bind=True, acks_late=True)
def submit_backup(self, app):
    """A scheduled backup (django-celery-beat entry `backup APP`): queue the backup job, if that entry sent it."""
    schedule = PeriodicTask.objects.filter(name=f"backup {app}", task=SCHEDULE_TASK).first()
    try:
        beat.check_origin(self.request, schedule)
    except beat.NotOurs as exc:
        beat.refused(self.request, self.name, {"app": app}, str(exc))
        return None
    job = actions.backup(app, actor_kind=ActorKind.SCHEDULE, actor=f"backup {app}")
    return job.pk


@shared_task(name="jobs.submit_cron", bind=True, acks_late=True)
def submit_cron(self, app, entry):
    """A scheduled cron run (django-celery-beat entry `cron APP ENTRY`): queue its cron_run job, if the
    entry is one the app's live release defines and its own schedule sent this."""
    try:
        _, record = cron.check_entry(app, entry)
        beat.check_origin(self.request, record.periodic_task)
        job = actions.cron_run(app, entry, actor_kind=ActorKind.SCHEDULE, actor=cron.task_name(app, entry),
                               scheduled_at=timezone.now())
    except (cron.CronRefused, beat.NotOurs) as exc:  # e.g. the entry went away after beat read its schedule
        beat.refused(self.request, self.name, {"app": app, "entry": entry}, str(exc))
        return None
    return job.pk
