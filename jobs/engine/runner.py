"""Running one job on a worker: claim it, run its flow, record the end.

The claim is the guard against duplicate delivery. A first delivery of a job
still as it was queued starts it at once (events.start_as_queued); anything
else is decided under the Job's row lock: only a queued job is started. A
job found running is either still running elsewhere (the delivery is
ignored) or was running in a worker process that is gone or gave it up
(acks_late + reject_on_worker_lost delivered it again): then the attempt is
recorded as lost and the job starts again, up to JOBS_MAX_ATTEMPTS.
"""

import logging
import os
import socket
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from jobs.engine import dispatch, events, fan_out, registry
from jobs.engine.context import FlowFailed, JobContext, RetryLater, WaitForChildren
from jobs.engine.states import Kind, Status
from jobs.models import WorkerHeartbeat
from nodeops.errors import NodeOpError
from nodeops.hostside.node_data import DataError  # a host program (stdlib only): it cannot derive from NodeOpError

log = logging.getLogger(__name__)
# A message this early for a job's run_after is early, not clock jitter.
EARLY = timedelta(seconds=1)
# Failures that explain themselves: recorded as the job's error, one line, without a traceback.
EXPLAINED = (FlowFailed, NodeOpError, DataError)


def run(job_id, worker, queued_hash=None):
    heartbeat.start(worker)
    job = _run(job_id, worker, queued_hash)
    if job is not None and job.parent_id is not None:
        fan_out.child_ended(job.parent_id)
    return job


def _run(job_id, worker, queued_hash):
    with heartbeat.running(job_id):
        job = claim(job_id, worker, queued_hash)
        if job is None:
            return None
        ctx = JobContext(job, worker)
        try:
            outcome = registry.entry(job.kind).run(ctx, **job.params)
        except RetryLater as exc:
            return _retry_later(ctx, exc)
        except EXPLAINED as exc:
            return _finish(ctx, Kind.FAILED, error=str(exc))
        except ObjectDoesNotExist as exc:  # a record named in the job's params is gone: say which
            return _finish(ctx, Kind.FAILED, error=missing_record(exc, job.params))
        except Exception as exc:
            return _finish(ctx, Kind.FAILED, error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc())
        if isinstance(outcome, WaitForChildren):
            return _finish(ctx, Kind.WAITING, summary=outcome.summary)
        summary, result = outcome if isinstance(outcome, tuple) else (outcome, None)
        return _finish(ctx, Kind.SUCCEEDED, summary=summary or "", result=result)


def missing_record(exc, params):
    """One line for a flow that looked up a record that does not exist: `no app named 'shop'`."""
    model = type(exc).__qualname__.removesuffix(".DoesNotExist")
    key = model.lower()
    if model != type(exc).__qualname__ and key in params:
        value = params[key]
        return f"no {key} named {value!r}" if isinstance(value, str) else f"no {key} with id {value!r}"
    return f"a record this job needs does not exist: {exc}"


def claim(job_id, worker, queued_hash=None):
    """Start the job on this worker, or return None when it must not run here."""
    actor = f"worker:{worker}"
    started = {"worker": worker, "hostname": socket.gethostname(), "pid": os.getpid()}
    if queued_hash is not None:  # the usual case, a first delivery: one statement
        job = events.start_as_queued(job_id, queued_hash, actor, {"attempt": 1, **started})
        if job is not None:
            return job
    with transaction.atomic():
        job = events.lock(job_id)
        if job.status == Status.RUNNING:
            why = previous_attempt_lost(job)
            if why is None:
                events.append(job, Kind.DELIVERY_IGNORED, actor,
                              {"reason": f"already running on {job.worker} (attempt {job.attempt})"})
                return None
            if job.attempt >= attempts_allowed(job) or not registry.entry(job.kind).retry_when_worker_lost:
                events.append(job, Kind.LOST, actor, {"reason": why + "; no attempt left"})
                return None
            events.append(job, Kind.RETRYING, actor, {"reason": why})
        elif job.status != Status.QUEUED:
            events.append(job, Kind.DELIVERY_IGNORED, actor, {"reason": f"job already {job.status}"})
            return None
        elif job.run_after and job.run_after > timezone.now() + EARLY:
            # A duplicate or early message: the one sent with the countdown (or the sweeper) starts it.
            events.append(job, Kind.DELIVERY_IGNORED, actor, {"reason": f"not due until {job.run_after.isoformat()}"})
            return None
        events.append(job, Kind.STARTED, actor, {"attempt": job.attempt + 1, **started})
        return job


def attempts_allowed(job):
    """How many times the job may start: its own max_attempts (tasks), else JOBS_MAX_ATTEMPTS."""
    return int(job.params.get("max_attempts") or settings.JOBS_MAX_ATTEMPTS)


def previous_attempt_lost(job, now=None):
    """Why the running attempt's worker process is known to be gone, or None if it may be alive."""
    where = f"worker process {job.worker_pid} on {job.worker_hostname}"
    if job.worker_hostname == socket.gethostname() and not _pid_alive(job.worker_pid):
        return f"{where} died during attempt {job.attempt}"
    beat = WorkerHeartbeat.objects.filter(hostname=job.worker_hostname, pid=job.worker_pid).first()
    if beat is None:
        return f"{where} left no heartbeat during attempt {job.attempt}"
    silent = ((now or timezone.now()) - beat.seen_at).total_seconds()
    if silent > settings.JOBS_LEASE_SECONDS:
        return f"{where} vanished: no heartbeat for {silent:.0f}s during attempt {job.attempt}"
    if beat.seen_at > job.attempt_started_at and beat.job_id != job.pk:
        # A process runs one job at a time; since this attempt began it said it runs another, or none.
        return f"{where} is alive but gave attempt {job.attempt} up without recording its end"
    return None


def _pid_alive(pid):
    """True if the process runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _retry_later(ctx, exc):
    """Queue the job again for its next attempt, due after exc.delay seconds (its message waits that long)."""
    run_after = timezone.now() + timedelta(seconds=exc.delay)
    job = _finish(ctx, Kind.RETRYING, reason=exc.reason, delay=round(exc.delay, 3), run_after=run_after.isoformat())
    if job.status == Status.QUEUED and not dispatch.parked(job):  # else the sweeper sends it when near
        dispatch.send(job.pk, job.kind, run_after=run_after, target=job.target)
    return job


def _finish(ctx, kind, **data):
    def decide(job):
        if job.status != Status.RUNNING:  # the sweeper declared it lost meanwhile
            return Kind.LOG, {"text": f"attempt ended after the job was {job.status}: {kind}",
                              "error": data.get("error", "")}
        return kind, data

    return events.write_as_known(ctx.job, ctx.actor, decide)


class _Heartbeat:
    """This worker process's heartbeat: one row, renewed from one thread.

    Each renewal also says which job the process is running (prefork runs
    one at a time), so a job the process gave up shows even while the
    process lives on; and a job costs no database writes for it. The first
    job a process runs writes the row before it is claimed.
    """

    def __init__(self):
        self.pid = None
        self.current = None
        self.lock = threading.Lock()

    def start(self, worker):
        with self.lock:
            if self.pid == os.getpid():  # this process's thread already renews it
                return
            self.pid = os.getpid()  # after a fork, the parent's thread does not exist here
            self.current = None
        self._renew(worker)
        threading.Thread(target=self._loop, args=(worker,), name="heartbeat", daemon=True).start()

    @contextmanager
    def running(self, job_id):
        # Set before the claim: a renewal that reads it cannot predate the attempt.
        with self.lock:
            self.current = job_id
        try:
            yield
        finally:
            with self.lock:
                self.current = None

    def _renew(self, worker):
        with self.lock:  # the time and the job it ran then, read together
            now, job_id = timezone.now(), self.current
        WorkerHeartbeat.objects.update_or_create(
            hostname=socket.gethostname(), pid=os.getpid(),
            defaults={"worker": worker, "seen_at": now, "job_id": job_id},
            create_defaults={"worker": worker, "started_at": now, "seen_at": now, "job_id": job_id})

    def _loop(self, worker):
        while True:
            time.sleep(settings.JOBS_LEASE_SECONDS / 3)
            try:
                self._renew(worker)
            except DatabaseError:
                log.exception("heartbeat not renewed; trying again")
            finally:
                connection.close()


heartbeat = _Heartbeat()
