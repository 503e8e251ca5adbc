"""The sweeper: jobs whose message is due, lost, or whose worker vanished.

Run by beat's `jobs.sweep` every JOBS_SWEEP_INTERVAL seconds. It sends parked
jobs once they are near, sends again a queued job whose message looks lost,
records as lost a running job whose worker is gone, and moves on a parent
whose last child's end was not seen.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from jobs.engine import events, fan_out, runner
from jobs.engine.dispatch import PARK_AFTER, send_after_commit, send_on_commit
from jobs.engine.states import Kind, Status
from jobs.models import Job, WorkerHeartbeat

log = logging.getLogger(__name__)
SWEEPER = "system:sweeper"


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
            send_after_commit(job)
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
            send_on_commit(job)
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
