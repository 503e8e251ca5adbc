"""Small helpers shared by tests."""

import secrets
import time

from jobs.models import Job
from jobs.engine.states import TERMINAL

# A secret config value every app deployed in a test session gets (conftest's canary_secret);
# tests/test_redaction.py checks, last, that it is nowhere a secret must not be.
CANARY = f"canary-{secrets.token_hex(12)}"


def wait_for_job(job_id, timeout=60, statuses=TERMINAL):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.status in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s: {list(job.events.values_list('kind', 'data'))}")


def event_kinds(job):
    return list(job.events.order_by("seq").values_list("kind", flat=True))


def wait_until(predicate, timeout=30, what="condition"):
    """predicate()'s first true value, polled every 50 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
