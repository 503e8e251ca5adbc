"""Flower tells the truth: a real Flower on the test broker, a real worker, real beat.

A job that fails or is lost is a FAILURE with its error, one that succeeds a SUCCESS; the raise after the
job's end is acknowledged (no redelivery, no second run) and logged in one line; housekeeping (the sweep,
the seal, reconciles) is not in Flower's task list at all.
"""

import os
import signal
import time
from pathlib import Path

import pytest
from celery import current_app
from django.conf import settings

from jobs.engine import dispatch
from jobs.models import Job, LogSeal
from jobs.tasks import JobFailed
from tests import workers
from tests.helpers import event_kinds, wait_for_job, wait_until

pytestmark = pytest.mark.worker
HOUSEKEEPING = {"jobs.sweep", "jobs.seal", "jobs.reconcile_nodes", "jobs.balancer_health"}


def submit_noop(target="flower", **params):
    return dispatch.submit("noop", target=target, params=params, actor_kind="user", actor="tester")


def ended_in_flower(api, job, timeout=20):
    """The one task Flower lists for the job, once it is in a final state."""
    def ended():
        tasks = api.of_job(job.pk)
        return tasks if tasks and all(t["state"] in ("SUCCESS", "FAILURE") for t in tasks) else None
    tasks = wait_until(ended, timeout=timeout, what=f"Flower to show job {job.pk} ended")
    assert len(tasks) == 1, tasks
    return tasks[0]


def worker_log_since(offset):
    return (Path(settings.VAR_DIR) / "worker.log").read_bytes()[offset:].decode(errors="replace")


def test_a_failed_deploy_is_a_failure_with_its_error_and_a_succeeded_job_a_success(ready_nodes, flower, tmp_path):
    from tests.test_deploy_flow import app_copy, deploy

    log_offset = (Path(settings.VAR_DIR) / "worker.log").stat().st_size
    code, failed = deploy(app_copy(tmp_path, "unhealthy", name=f"sick{os.getpid() % 10000}"), ready_nodes[0])
    assert code == 1 and failed.status == "failed" and "answered 500" in failed.error, failed.error
    succeeded = wait_for_job(submit_noop().pk)
    assert succeeded.status == "succeeded"

    task = ended_in_flower(flower, failed)
    first_line = failed.error.strip().splitlines()[0]
    assert (task["name"], task["state"]) == ("jobs.run:deploy", "FAILURE")
    assert task["exception"] == repr(JobFailed(f"job {failed.pk} deploy failed: {first_line}"))
    task = ended_in_flower(flower, succeeded)
    assert (task["name"], task["state"]) == ("jobs.run:noop", "SUCCESS")
    assert task["result"] == repr(f"job {succeeded.pk} noop succeeded: nothing done, as asked")

    # The raise came after the end was recorded and was acknowledged: no redelivery, no second run.
    time.sleep(3)
    kinds = event_kinds(Job.objects.get(pk=failed.pk))
    assert kinds.count("job.started") == 1 and "job.delivery_ignored" not in kinds and kinds[-1] == "job.failed"
    assert [t["state"] for t in flower.of_job(failed.pk)] == ["FAILURE"]
    # One line at INFO in the worker's log, no traceback: an expected error (throws=).
    log = worker_log_since(log_offset)
    [line] = [line for line in log.splitlines() if f"job {failed.pk} deploy failed" in line]
    assert ": INFO/" in line and "raised expected: JobFailed(" in line, line
    assert "Traceback" not in log, log[-3000:]


def test_a_job_lost_with_no_attempt_left_is_a_failure_with_the_reason(flower):
    job = submit_noop(mark=True, seconds=60)
    for attempt in range(1, settings.JOBS_MAX_ATTEMPTS + 1):
        started = wait_until(lambda: job.events.filter(kind="job.started", data__attempt=attempt).first(),
                             timeout=30, what=f"attempt {attempt} to start")
        wait_until(lambda: job.events.filter(kind="noop.ran", seq__gt=started.seq).exists(), what="the flow to run")
        os.kill(started.data["pid"], signal.SIGKILL)  # its pool process dies (OOM killer), each attempt
    job = wait_for_job(job.pk, timeout=60)
    assert job.status == "lost" and job.error.endswith("no attempt left"), job.error

    task = ended_in_flower(flower, job)  # every delivery was the one message, redelivered
    assert task["state"] == "FAILURE"
    assert task["exception"] == repr(JobFailed(f"job {job.pk} noop lost: {job.error}"))


def test_housekeeping_is_not_in_flowers_task_list(worker, flower, tmp_path, monkeypatch):
    """Beat sweeps and seals every second here (the flood of JOBS_SWEEP_INTERVAL, 15 times faster):
    they run, the sweeper still resends a lost message, and Flower lists none of them."""
    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: None)  # the broker drops this job's message
    lost_message = submit_noop(mark=True, target="message-lost")
    monkeypatch.undo()
    seals = LogSeal.objects.count()
    log_offset = (Path(settings.VAR_DIR) / "worker.log").stat().st_size
    beat = workers.beat(tmp_path, extra_env={"JOBS_SWEEP_INTERVAL": "1", "TOPPCLOUD_LOG_SEAL_INTERVAL": "1"}).start()
    try:
        job = wait_for_job(lost_message.pk, timeout=30)  # resent by a sweep that beat sent
        time.sleep(5)
        # The periodic reconcile's send, as beat sends it (beat sends no task-sent events).
        with monkeypatch.context() as patch:
            patch.setitem(current_app.conf, "task_send_sent_event", False)
            reconcile = current_app.send_task("jobs.reconcile_nodes", queue="jobs")
        wait_until(lambda: f"jobs.reconcile_nodes[{reconcile.id}] succeeded" in worker_log_since(log_offset),
                   what="the worker to run jobs.reconcile_nodes")
    finally:
        beat.stop()
    assert job.status == "succeeded" and job.events.get(kind="job.resent").actor == "system:sweeper"
    assert LogSeal.objects.count() > seals  # beat's seals ran too
    log = worker_log_since(log_offset)
    sweeps = log.count("Task jobs.sweep[")
    assert log.count("Task jobs.seal[") >= 2 and sweeps >= 5, log[-3000:]

    listed = flower.tasks().values()
    assert {t["name"] for t in listed} & HOUSEKEEPING == set(), [t["name"] for t in listed]
    assert ended_in_flower(flower, job)["state"] == "SUCCESS"  # while the job the sweeper resent is there
