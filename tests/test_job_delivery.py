"""Jobs through a real Celery worker on RabbitMQ and PostgreSQL: the faults."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import dispatch
from jobs.models import Job, JobLease
from jobs.tasks import run_job
from tests.helpers import event_kinds, wait_for_job

pytestmark = pytest.mark.worker


def submit_noop(**params):
    return dispatch.submit("noop", target="test", params=params, actor_kind="user", actor="tester")


def wait_until(predicate, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_it_runs_a_job_end_to_end(worker):
    job = wait_for_job(submit_noop(mark=True).pk)
    assert job.status == "succeeded", job.error
    assert event_kinds(job) == ["job.queued", "job.started", "noop.ran", "job.succeeded"]
    started = job.events.get(kind="job.started")
    assert started.actor.startswith("worker:test-") and started.data["attempt"] == 1
    assert not JobLease.objects.filter(job=job).exists()


def test_it_does_nothing_twice_on_duplicate_delivery(worker):
    job = submit_noop(mark=True, seconds=1)
    run_job.apply_async(args=[job.pk], queue="jobs")  # the broker delivers it a second time
    wait_for_job(job.pk)
    run_job.apply_async(args=[job.pk], queue="jobs")  # and a third, after it finished
    wait_until(lambda: job.events.filter(kind="job.delivery_ignored").count() == 2, what="two ignored deliveries")
    kinds = event_kinds(job)
    assert kinds.count("noop.ran") == 1 and kinds.count("job.started") == 1
    reasons = list(job.events.filter(kind="job.delivery_ignored").values_list("data__reason", flat=True))
    assert reasons[0].startswith("already running on test-") and reasons[1] == "job already succeeded"
    assert Job.objects.get(pk=job.pk).status == "succeeded"


def test_it_resends_a_job_whose_message_was_lost(worker, monkeypatch):
    monkeypatch.setattr(dispatch, "send", lambda job_id, kind: None)  # the broker drops the message
    job = submit_noop(mark=True)
    monkeypatch.undo()
    time.sleep(0.5)
    assert Job.objects.get(pk=job.pk).status == "queued"
    assert job.pk not in dispatch.sweep()["resent"]  # not yet: it may just be waiting in the queue
    result = dispatch.sweep(now=timezone.now() + timedelta(seconds=5))
    assert job.pk in result["resent"]
    job = wait_for_job(job.pk)
    assert job.status == "succeeded" and job.resends == 1
    assert event_kinds(job) == ["job.queued", "job.resent", "job.started", "noop.ran", "job.succeeded"]
    assert "sending it again" in job.events.get(kind="job.resent").data["reason"]


def test_it_retries_a_job_whose_worker_process_was_killed(worker):
    job = submit_noop(mark=True, seconds=4)
    started = wait_until(lambda: job.events.filter(kind="job.started").first(), what="job start")
    os.kill(started.data["pid"], signal.SIGKILL)  # the pool process running it dies (OOM killer, segfault)
    job = wait_for_job(job.pk, timeout=60)
    assert job.status == "succeeded" and job.attempt == 2
    kinds = event_kinds(job)
    assert kinds == ["job.queued", "job.started", "noop.ran", "job.retrying", "job.started", "noop.ran",
                     "job.succeeded"]
    reason = job.events.get(kind="job.retrying").data["reason"]
    assert f"worker process {started.data['pid']}" in reason and "died during attempt 1" in reason


def test_it_marks_lost_a_job_whose_whole_worker_vanished(worker):
    job = submit_noop(mark=True, seconds=30)
    started = wait_until(lambda: job.events.filter(kind="job.started").first(), what="job start")
    worker.kill_group()  # main process and pool children, no goodbye
    try:
        time.sleep(0.5)
        assert dispatch.sweep()["lost"] == []  # lease still fresh: it could be alive
        wait_until(lambda: job.pk in dispatch.sweep()["lost"], timeout=20, what="sweeper to mark it lost")
        job = Job.objects.get(pk=job.pk)
        assert job.status == "lost" and job.finished_at is not None
        lost = job.events.get(kind="job.lost")
        assert lost.actor == "system:sweeper"
        assert f"pid {started.data['pid']}" in lost.data["reason"] and "no lease renewal" in lost.data["reason"]
    finally:
        worker.start()
    # RabbitMQ hands the unacked message to the restarted worker, which must not run it again.
    wait_until(lambda: job.events.filter(kind="job.delivery_ignored").exists(), what="redelivery")
    assert job.events.get(kind="job.delivery_ignored").data["reason"] == "job already lost"
    assert event_kinds(job).count("noop.ran") == 1
