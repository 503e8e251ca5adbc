"""Getting jobs to workers: the transactional outbox.

submit() commits the Job and its job.queued event first and hands the
message to Celery only after commit; if the message is lost on the way, the
sweeper (jobs/engine/sweeper.py) sends it again. Only jobs/actions.py calls
submit() (and fan_out, for a parent's children).
"""

from datetime import timedelta

from celery import current_app
from django.db import transaction
from django.utils import timezone

from jobs.engine import events, registry
from jobs.engine.registry import UnknownJobKind  # noqa: F401 (raised by submit)

# A job due later than this is not sent with a countdown at once: the worker
# would hold the unacknowledged message all that time, and RabbitMQ closes a
# channel whose delivery stays unacknowledged past its consumer_timeout
# (30 minutes by default). The sweeper sends it once it is this near.
PARK_AFTER = timedelta(minutes=10)


def submit(kind, *, target="", params=None, actor_kind, actor, parent_id=None, run_after=None):
    """Create a queued job; its Celery message is sent when the transaction commits.

    A job with run_after (a datetime) is not started before then: its message
    carries that countdown (or, due more than PARK_AFTER ahead, the sweeper
    sends it once it is that near), and the sweeper never resends it early.
    """
    registry.entry(kind)  # an unknown kind is refused before any job exists
    job = events.new_job(kind, target=target, params=params or {}, actor_kind=actor_kind,
                         actor=actor, parent_id=parent_id, run_after=run_after)
    send_on_commit(job)  # at once if that committed it, else when the caller's transaction commits
    return job


def send_on_commit(job):
    """Send the job's message once the transaction commits, unless it is due too far ahead (parked)."""
    if not parked(job):
        send_after_commit(job)


def send_after_commit(job):
    # robust: a broker that is down must not undo or hide the committed job;
    # the sweeper sends it again later.
    # A first delivery of a job due now may start it in one statement (queued_hash);
    # one that must wait goes the locked way, which checks run_after.
    queued_hash = job.last_hash if job.last_seq == 1 and job.run_after is None else None
    transaction.on_commit(lambda: send(job.pk, job.kind, queued_hash, run_after=job.run_after, target=job.target),
                          robust=True)


def parked(job):
    """True for a job due too far ahead for its message to wait at a worker (PARK_AFTER)."""
    return job.run_after is not None and job.run_after - timezone.now() > PARK_AFTER


def send(job_id, kind, queued_hash=None, run_after=None, target=""):
    """Hand the job's message to the broker.

    Flower shows it as `jobs.run:<kind>` (once a worker received it) with
    args `[<job id>] <kind> <target>`: the job's id, what it is and what it
    acts on, never its parameters.
    """
    countdown = None
    if run_after is not None:
        countdown = max(0.0, (run_after - timezone.now()).total_seconds())
    # By name, so the engine needs no import of the task module (jobs/tasks.py defines "jobs.run").
    current_app.send_task("jobs.run", args=[job_id], kwargs={"queued_hash": queued_hash} if queued_hash else {},
                          queue=registry.entry(kind).queue, countdown=countdown or None, shadow=f"jobs.run:{kind}",
                          argsrepr=f"[{job_id}] {kind} {target}".rstrip(), kwargsrepr="{}")

