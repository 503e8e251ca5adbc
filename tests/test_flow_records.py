"""A flow given a record name that does not exist fails with one line naming it, and no traceback."""

import pytest

from jobs.engine import dispatch
from tests.helpers import event_kinds, wait_for_job

pytestmark = pytest.mark.worker


def submit(kind, **params):
    return dispatch.submit(kind, target="test", params=params, actor_kind="user", actor="tester")


@pytest.mark.parametrize("kind, params, error", [
    ("backup", {"app": "nosuchapp"}, "no app named 'nosuchapp'"),
    ("deploy", {"app": "nosuchapp", "release": "r1", "node": "web1"}, "no app named 'nosuchapp'"),
    ("ping_node", {"node": "nosuchnode"}, "no node named 'nosuchnode'"),
])
def test_it_fails_a_job_whose_record_is_missing_in_one_line(worker, kind, params, error):
    job = wait_for_job(submit(kind, **params).pk)
    assert job.status == "failed" and job.error == error
    assert event_kinds(job) == ["job.queued", "job.started", "job.failed"]
    failed = job.events.get(kind="job.failed").data
    assert failed["error"] == error and "traceback" not in failed
