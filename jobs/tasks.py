"""Celery tasks: thin, like views. They pass job ids; PostgreSQL holds the rest."""

from celery import shared_task
from celery.exceptions import Retry
from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs import actions, beat
from jobs.engine import runner, seal as sealing, sweeper
from jobs.engine.states import ActorKind, Status
from jobs.models import Job
from jobs.steps import cron
from jobs.steps.data import SCHEDULE_TASK


class JobFailed(Exception):
    """The job ended failed, lost or cancelled. jobs.run raises it once that end is recorded, so Flower
    (any Celery monitor) shows FAILURE with the first line of the job's error, as redacted in its events."""


class JobRetried(Exception):
    """This attempt of the job failed and the job is queued again: its next attempt is another message."""


# jobs.run: acks_late + reject_on_worker_lost, so a job is delivered again only when its worker process
# died under it. An exception raised after the job's end is recorded is acknowledged like a return
# (acks_on_failure_or_timeout) and never retried by Celery: no second run. `throws` makes JobFailed
# an expected error, logged in one line at INFO, without a traceback.
@shared_task(name="jobs.run", bind=True, acks_late=True, reject_on_worker_lost=True, acks_on_failure_or_timeout=True,
             throws=(JobFailed,))
def run_job(self, job_id, queued_hash=None):
    job_id = int(job_id)
    try:
        job = runner.run(job_id, worker=self.request.hostname or "unknown", queued_hash=queued_hash)
    except DatabaseError:
        # The database failed under the job, so its end could not be recorded:
        # drop the broken connection. Still queued, the sweeper sends it again;
        # running, the next heartbeat shows it given up and the sweeper ends it.
        close_old_connections()
        raise
    return report(job_id, job)


def report(job_id, job):
    """What this delivery's Celery state says: the job's end (FAILURE raised, RETRY, or SUCCESS with its summary).

    A delivery that did not run the job (a duplicate, or a message redelivered after its worker died)
    reports the job as it stands, so each of a job's messages shows how the job ended.
    """
    ran = job is not None
    if not ran:
        job = Job.objects.get(pk=job_id)
    line = f"job {job_id} {job.kind}"
    if job.status in (Status.FAILED, Status.LOST, Status.CANCELLED):
        raise JobFailed(f"{line} {job.status}: {first_line(job.error)}")
    if ran and job.status == Status.QUEUED:  # RetryLater: its next attempt is queued as another message
        raise Retry(exc=JobRetried(f"{line} attempt {job.attempt} failed, queued again: {first_line(job.error)}"),
                    when=job.run_after)
    if job.status == Status.RUNNING:
        return f"{line} is running on {job.worker} (attempt {job.attempt}): this delivery did nothing"
    if job.status == Status.QUEUED:
        return f"{line} is queued: this delivery was early and did nothing"
    return f"{line} {job.status}: {first_line(job.summary)}"


def first_line(text):
    return (text or "").strip().split("\n", 1)[0][:500]


# Housekeeping sends no task events (send_events=False; beat sends no task-sent events, toppcloud_site/celery.py):
# Flower's task list is the jobs, not a sweep every JOBS_SWEEP_INTERVAL seconds. Their work shows in the
# jobs' events and the worker's log.
@shared_task(name="jobs.sweep", acks_late=True, send_events=False)
def sweep():
    return sweeper.sweep()


@shared_task(name="jobs.reconcile_nodes", acks_late=True, send_events=False)
def reconcile_nodes():
    """Beat's toppcloud-reconcile-nodes: a reconcile_node job per node (the jobs touch the hosts, not this)."""
    return actions.reconcile_nodes()


@shared_task(name="jobs.balancer_health", acks_late=True, send_events=False)
def balancer_health():
    """Beat's toppcloud-balancer-health: a balancer_health job per lb node whose servers' health changed."""
    return [job.pk for job in actions.balancer_health()]


@shared_task(name="jobs.seal", acks_late=True, send_events=False)
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
