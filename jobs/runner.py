"""Running one job on a worker: claim it, run its flow, record the end.

The claim is the guard against duplicate delivery: under the Job's row lock
only a queued job is started. A job found running is either still running
elsewhere (the delivery is ignored) or was running on a worker that died
(acks_late + reject_on_worker_lost delivered it again): then the attempt is
recorded as lost and the job starts again, up to JOBS_MAX_ATTEMPTS.
"""

import os
import socket
import threading
import time
import traceback
from contextlib import contextmanager

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs import events
from jobs.context import FlowFailed, JobContext
from jobs.flows import FLOWS
from jobs.models import JobLease
from jobs.states import Kind, Status
from nodeops.transport import CommandFailed, TransportError

# Failures that explain themselves: recorded without a traceback.
EXPLAINED = (FlowFailed, TransportError, CommandFailed)


def run(job_id, worker):
    job = claim(job_id, worker)
    if job is None:
        return None
    ctx = JobContext(job, worker)
    with _leases.held(job_id):
        try:
            outcome = FLOWS[job.kind].run(ctx, **job.params)
        except EXPLAINED as exc:
            return _finish(job_id, ctx.actor, Kind.FAILED, error=str(exc))
        except Exception as exc:
            return _finish(job_id, ctx.actor, Kind.FAILED, error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc())
    summary, result = outcome if isinstance(outcome, tuple) else (outcome, None)
    return _finish(job_id, ctx.actor, Kind.SUCCEEDED, summary=summary or "", result=result)


def claim(job_id, worker):
    """Start the job on this worker, or return None when it must not run here."""
    actor = f"worker:{worker}"
    with transaction.atomic():
        job = events.lock(job_id)
        if job.status == Status.RUNNING:
            lease = JobLease.objects.filter(job_id=job_id).first()
            why = _previous_attempt_lost(lease, job)
            if why is None:
                events.append(job, Kind.DELIVERY_IGNORED, actor,
                              {"reason": f"already running on {lease.worker} (attempt {job.attempt})"})
                return None
            if job.attempt >= settings.JOBS_MAX_ATTEMPTS or not FLOWS[job.kind].retry_when_worker_lost:
                events.append(job, Kind.LOST, actor, {"reason": why + "; no attempt left"})
                JobLease.objects.filter(job_id=job_id).delete()
                return None
            events.append(job, Kind.RETRYING, actor, {"reason": why})
            JobLease.objects.filter(job_id=job_id).delete()
        elif job.status != Status.QUEUED:
            events.append(job, Kind.DELIVERY_IGNORED, actor, {"reason": f"job already {job.status}"})
            return None
        hostname, pid = socket.gethostname(), os.getpid()
        events.append(job, Kind.STARTED, actor, {
            "attempt": job.attempt + 1, "worker": worker, "hostname": hostname, "pid": pid,
        })
        JobLease(job_id=job_id, worker=worker, hostname=hostname, pid=pid,
                 renewed_at=timezone.now()).save(force_insert=True)
        return job


def _previous_attempt_lost(lease, job):
    """Why the running attempt is known to be dead, or None if it may be alive."""
    if lease is None:
        return f"attempt {job.attempt} left no lease"
    if lease.hostname == socket.gethostname() and not _pid_alive(lease.pid):
        return (f"worker process {lease.pid} on {lease.hostname} died during attempt {job.attempt}; "
                "the broker delivered the job again")
    silent = (timezone.now() - lease.renewed_at).total_seconds()
    if silent > settings.JOBS_LEASE_SECONDS:
        return f"worker {lease.worker} stopped renewing its lease {silent:.0f}s ago during attempt {job.attempt}"
    return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finish(job_id, actor, kind, **data):
    with transaction.atomic():
        job = events.lock(job_id)
        if job.status != Status.RUNNING:  # the sweeper declared it lost meanwhile
            events.append(job, Kind.LOG, actor, {"text": f"attempt ended after the job was {job.status}: {kind}",
                                                 "error": data.get("error", "")})
            return job
        events.append(job, kind, actor, data)
        JobLease.objects.filter(job_id=job_id).delete()
        return job


class _Leases:
    """Renews the leases of the jobs this process runs, from one thread.

    One long-lived thread per worker process rather than one per job: a
    no-op job then costs no thread start.
    """

    def __init__(self):
        self.running = set()
        self.lock = threading.Lock()
        self.thread = None

    @contextmanager
    def held(self, job_id):
        with self.lock:
            self.running.add(job_id)
            if self.thread is None or not self.thread.is_alive() or self.thread_pid != os.getpid():
                # After a fork the parent's thread does not exist in the child.
                self.thread_pid = os.getpid()
                self.thread = threading.Thread(target=self._loop, name="job-leases", daemon=True)
                self.thread.start()
        try:
            yield
        finally:
            with self.lock:
                self.running.discard(job_id)

    def _loop(self):
        while True:
            time.sleep(settings.JOBS_LEASE_SECONDS / 3)
            with self.lock:
                ids = list(self.running)
            if ids:
                try:
                    JobLease.objects.filter(job_id__in=ids).update(renewed_at=timezone.now())
                finally:
                    connection.close()


_leases = _Leases()
