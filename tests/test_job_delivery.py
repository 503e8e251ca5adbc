"""Jobs through a real Celery worker on RabbitMQ and PostgreSQL: the faults."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from jobs.engine import dispatch, sweeper
from jobs.models import Job, WorkerHeartbeat
from jobs.tasks import run_job
from tests.helpers import event_kinds, wait_for_job, wait_until

pytestmark = pytest.mark.worker


def submit_noop(**params):
    return dispatch.submit("noop", target="test", params=params, actor_kind="user", actor="tester")


def test_it_runs_a_job_end_to_end(worker):
    job = wait_for_job(submit_noop(mark=True).pk)
    assert job.status == "succeeded", job.error
    assert event_kinds(job) == ["job.queued", "job.started", "noop.ran", "job.succeeded"]
    started = job.events.get(kind="job.started")
    assert started.actor.startswith("worker:test-") and started.data["attempt"] == 1
    assert (job.worker_hostname, job.worker_pid) == (started.data["hostname"], started.data["pid"])
    assert WorkerHeartbeat.objects.filter(hostname=job.worker_hostname, pid=job.worker_pid).exists()


def test_it_does_nothing_twice_on_duplicate_delivery(worker):
    job = submit_noop(mark=True, seconds=1)
    same_message = {"args": [job.pk], "kwargs": {"queued_hash": job.events.get(seq=1).hash}, "queue": "jobs"}
    run_job.apply_async(**same_message)  # the broker delivers it a second time
    wait_for_job(job.pk)
    run_job.apply_async(**same_message)  # and a third, after it finished
    wait_until(lambda: job.events.filter(kind="job.delivery_ignored").count() == 2, what="two ignored deliveries")
    kinds = event_kinds(job)
    assert kinds.count("noop.ran") == 1 and kinds.count("job.started") == 1
    reasons = list(job.events.filter(kind="job.delivery_ignored").values_list("data__reason", flat=True))
    assert reasons[0].startswith("already running on test-") and reasons[1] == "job already succeeded"
    assert Job.objects.get(pk=job.pk).status == "succeeded"


def test_it_resends_a_job_whose_message_was_lost(worker, monkeypatch):
    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: None)  # the broker drops the message
    job = submit_noop(mark=True)
    monkeypatch.undo()
    time.sleep(0.5)
    assert Job.objects.get(pk=job.pk).status == "queued"
    assert job.pk not in sweeper.sweep()["resent"]  # not yet: it may just be waiting in the queue
    result = sweeper.sweep(now=timezone.now() + timedelta(seconds=5))
    assert job.pk in result["resent"]
    job = wait_for_job(job.pk)
    assert job.status == "succeeded" and job.resends == 1
    assert event_kinds(job) == ["job.queued", "job.resent", "job.started", "noop.ran", "job.succeeded"]
    assert "sending it again" in job.events.get(kind="job.resent").data["reason"]


def test_a_job_due_later_starts_then_and_no_early_message_starts_it(worker):
    due = timezone.now() + timedelta(seconds=3)
    job = dispatch.submit("noop", target="test", params={"mark": True}, actor_kind="user", actor="tester",
                          run_after=due)
    assert Job.objects.get(pk=job.pk).run_after == due
    run_job.apply_async(args=[job.pk], queue="jobs")  # an early duplicate of its message
    wait_until(lambda: job.events.filter(kind="job.delivery_ignored").exists(), what="the early message ignored")
    assert job.events.get(kind="job.delivery_ignored").data["reason"] == f"not due until {due.isoformat()}"
    # The sweeper does not call a message late before its job is due (JOBS_RESEND_AFTER is 2 s here).
    assert job.pk not in sweeper.sweep(now=due - timedelta(seconds=0.5))["resent"]
    job = wait_for_job(job.pk, timeout=30)
    assert job.status == "succeeded" and job.started_at >= due
    assert event_kinds(job) == ["job.queued", "job.delivery_ignored", "job.started", "noop.ran", "job.succeeded"]


def test_a_job_due_in_hours_is_parked_and_sent_by_the_sweeper_once_near(live_db, monkeypatch):
    sent = []
    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: sent.append((args, kwargs)))
    due = timezone.now() + timedelta(hours=3)
    job = dispatch.submit("noop", target="parked", actor_kind="user", actor="tester", run_after=due)
    assert sent == []  # a worker would hold it unacknowledged for 3 hours: RabbitMQ's consumer_timeout is 30 min
    assert job.pk not in sweeper.sweep()["sent"]
    assert job.pk not in sweeper.sweep(now=due - dispatch.PARK_AFTER - timedelta(seconds=5))["sent"]
    assert job.pk in sweeper.sweep(now=due - dispatch.PARK_AFTER + timedelta(seconds=5))["sent"]
    assert sent == [((job.pk, "noop", None), {"run_after": due, "target": "parked"})]
    job = Job.objects.get(pk=job.pk)
    assert (job.status, job.resends) == ("queued", 0) and event_kinds(job) == ["job.queued", "job.sent"]


def test_it_retries_a_job_whose_worker_process_was_killed(worker):
    job = submit_noop(mark=True, seconds=4)
    # Killed once the flow has run (it then sleeps): a kill before noop.ran would change the events.
    wait_until(lambda: job.events.filter(kind="noop.ran").exists(), what="the flow to run")
    started = job.events.get(kind="job.started")
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
    assert sweeper.sweep()["lost"] == []  # alive and well
    worker.kill_group()  # main process and pool children, no goodbye
    try:
        wait_until(lambda: sweeper.sweep()["lost"] == [job.pk], timeout=10, what="sweeper to mark it lost")
        job = Job.objects.get(pk=job.pk)
        assert job.status == "lost" and job.finished_at is not None
        lost = job.events.get(kind="job.lost")
        assert lost.actor == "system:sweeper"
        assert lost.data["reason"] == (f"worker process {started.data['pid']} on {started.data['hostname']} "
                                       "died during attempt 1")
    finally:
        worker.start()
    # RabbitMQ hands the unacked message to the restarted worker, which must not run it again.
    wait_until(lambda: job.events.filter(kind="job.delivery_ignored").exists(), what="redelivery")
    assert job.events.get(kind="job.delivery_ignored").data["reason"] == "job already lost"
    assert event_kinds(job).count("noop.ran") == 1


def test_it_ends_a_job_whose_worker_lost_its_database_mid_job(worker):
    job = submit_noop(mark=True, seconds=2)
    wait_until(lambda: job.events.filter(kind="noop.ran").exists(), what="job start")
    with connection.cursor() as cursor:  # PostgreSQL drops the worker's connections (restart, failover)
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    # The worker cannot record the end; its process lives on and its heartbeat shows it gave the job up.
    wait_until(lambda: job.pk in sweeper.sweep()["lost"], timeout=30, what="sweeper to end the job")
    job = Job.objects.get(pk=job.pk)
    assert job.status == "lost"
    assert job.events.get(kind="job.lost").data["reason"].endswith("is alive but gave attempt 1 up without "
                                                                   "recording its end")
    assert wait_for_job(submit_noop().pk).status == "succeeded"  # and the worker carries on


@pytest.mark.django_db
def test_the_sweeper_judges_a_worker_on_another_host_by_its_heartbeat(settings):
    from django.db import transaction

    from jobs.engine import events

    with transaction.atomic():
        job = events.new_job("noop", target="t", params={}, actor_kind="user", actor="tester")
    events.record(job.pk, "job.started", "worker:far", attempt=1, worker="far@elsewhere", hostname="elsewhere",
                  pid=4242)
    now = timezone.now()
    beat = WorkerHeartbeat.objects.create(hostname="elsewhere", pid=4242, worker="far@elsewhere", started_at=now,
                                          seen_at=now, job_id=job.pk)
    assert sweeper.sweep(now=now + timedelta(seconds=settings.JOBS_LEASE_SECONDS - 1))["lost"] == []
    assert sweeper.sweep(now=now + timedelta(seconds=settings.JOBS_LEASE_SECONDS + 2))["lost"] == [job.pk]
    reason = Job.objects.get(pk=job.pk).events.get(kind="job.lost").data["reason"]
    assert reason == (f"worker process 4242 on elsewhere vanished: no heartbeat for "
                      f"{settings.JOBS_LEASE_SECONDS + 2:.0f}s during attempt 1")
    beat.delete()


def test_a_stale_write_outside_any_transaction_is_redone_on_the_current_job(live_db):
    """As in a worker: no surrounding transaction, so the write is one statement that the database refuses."""
    from jobs.engine import events

    job = events.new_job("noop", target="t", params={}, actor_kind="user", actor="tester")
    events.record(job.pk, "job.started", "worker:w", attempt=1, worker="w", hostname="h", pid=1)
    seen = Job.objects.get(pk=job.pk)
    events.record(job.pk, "job.lost", "system:sweeper", reason="thought it dead")
    written = events.write_as_known(seen, "worker:w", lambda current: ("log", {"text": current.status}))
    assert list(job.events.order_by("seq").values_list("kind", flat=True)) == [
        "job.queued", "job.started", "job.lost", "log"]
    assert job.events.get(seq=4).data["text"] == "lost" and written.last_seq == 4
