"""Getting jobs to workers: the transactional outbox and the sweeper.

submit() commits the Job and its job.queued event first and hands the
message to Celery only after commit; if the message is lost on the way, the
sweeper sends it again. The sweeper also ends jobs whose worker vanished.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from jobs.engine import events, fan_out, runner
from jobs.flows import FLOWS
from jobs.models import Job, WorkerHeartbeat
from jobs.engine.states import Kind, Status

log = logging.getLogger(__name__)
SWEEPER = "system:sweeper"
# A job due later than this is not sent with a countdown at once: the worker
# would hold the unacknowledged message all that time, and RabbitMQ closes a
# channel whose delivery stays unacknowledged past its consumer_timeout
# (30 minutes by default). The sweeper sends it once it is this near.
PARK_AFTER = timedelta(minutes=10)


class UnknownJobKind(ValueError):
    pass


def submit(kind, *, target="", params=None, actor_kind, actor, parent_id=None, run_after=None):
    """Create a queued job; its Celery message is sent when the transaction commits.

    A job with run_after (a datetime) is not started before then: its message
    carries that countdown (or, due more than PARK_AFTER ahead, the sweeper
    sends it once it is that near), and the sweeper never resends it early.
    """
    if kind not in FLOWS:
        raise UnknownJobKind(f"unknown job kind {kind!r}; known: {', '.join(sorted(FLOWS))}")
    job = events.new_job(kind, target=target, params=params or {}, actor_kind=actor_kind,
                         actor=actor, parent_id=parent_id, run_after=run_after)
    _send_on_commit(job)  # at once if that committed it, else when the caller's transaction commits
    return job


def _send_on_commit(job):
    """Send the job's message once the transaction commits, unless it is due too far ahead (parked)."""
    if not parked(job):
        _send_after_commit(job)


def _send_after_commit(job):
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
    from jobs.tasks import run_job

    countdown = None
    if run_after is not None:
        countdown = max(0.0, (run_after - timezone.now()).total_seconds())
    run_job.apply_async(args=[job_id], kwargs={"queued_hash": queued_hash} if queued_hash else {},
                        queue=FLOWS[kind].queue, countdown=countdown or None, shadow=f"jobs.run:{kind}",
                        argsrepr=f"[{job_id}] {kind} {target}".rstrip(), kwargsrepr="{}")


def sweep(now=None):
    """Send parked jobs that are near; re-send queued jobs whose message looks lost; end jobs whose worker vanished."""
    now = now or timezone.now()
    resent, lost, sent = [], [], []
    near = now + PARK_AFTER
    for job_id in Job.objects.filter(status=Status.QUEUED, run_after__lte=near,
                                     run_after__gt=F("sent_at") + PARK_AFTER).values_list("pk", flat=True):
        with transaction.atomic():
            job = events.lock(job_id)
            if job.status != Status.QUEUED or job.run_after > near or job.run_after <= job.sent_at + PARK_AFTER:
                continue
            events.append(job, Kind.SENT, SWEEPER, {
                "reason": f"due at {job.run_after.isoformat()}: its message goes to the broker now, with that countdown"})
            _send_after_commit(job)
        sent.append(job_id)
    cutoff = now - timedelta(seconds=settings.JOBS_RESEND_AFTER)
    # A job waiting for its run_after was sent with that countdown: it is late only once that has passed.
    late = Q(run_after__isnull=True) | Q(run_after__lt=cutoff)
    for job_id in Job.objects.filter(late, status=Status.QUEUED, sent_at__lt=cutoff).values_list("pk", flat=True):
        with transaction.atomic():
            job = events.lock(job_id)
            if job.status != Status.QUEUED or job.sent_at >= cutoff or (job.run_after and job.run_after >= cutoff):
                continue
            waited = (now - max(job.sent_at, job.run_after or job.sent_at)).total_seconds()
            events.append(job, Kind.RESENT, SWEEPER, {
                "reason": f"not started {waited:.0f}s after its message was sent; sending it again",
                "resends": job.resends + 1,
            })
            _send_on_commit(job)
        resent.append(job_id)

    for job_id in Job.objects.filter(status=Status.RUNNING).values_list("pk", flat=True):
        if runner.previous_attempt_lost(Job.objects.get(pk=job_id), now) is None:
            continue
        with transaction.atomic():
            job = events.lock(job_id)
            why = runner.previous_attempt_lost(job, now) if job.status == Status.RUNNING else None
            if why is None:
                continue
            events.append(job, Kind.LOST, SWEEPER, {"reason": why})
        lost.append(job_id)
    for parent_id in Job.objects.filter(status=Status.WAITING).values_list("pk", flat=True):
        fan_out.child_ended(parent_id)  # ends (or moves on) a parent whose last child's call was lost
    WorkerHeartbeat.objects.filter(seen_at__lt=now - timedelta(days=1)).delete()  # processes long gone
    if resent or lost or sent:
        log.info("sweep: sent %s, resent %s, lost %s", sent, resent, lost)
    return {"sent": sent, "resent": resent, "lost": lost}
