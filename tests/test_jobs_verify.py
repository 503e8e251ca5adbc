"""`manage.py jobs verify` replays events and catches any tampering."""

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from jobs.engine import events
from jobs.engine import triggers
from jobs.engine.states import Kind

pytestmark = pytest.mark.django_db


def finished_job():
    with transaction.atomic():
        job = events.new_job("noop", target="t", params={}, actor_kind="user", actor="alice")
    events.record(job.pk, Kind.STARTED, "worker:w", attempt=1, worker="w", hostname="h", pid=1)
    events.record(job.pk, Kind.SUCCEEDED, "worker:w", summary="done")
    return job


def verify(capsys):
    with pytest.raises(SystemExit) as exit_info:
        call_command("jobs", "verify")
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out + out.err


def run_without_trigger(sql, params):
    """What someone with database access could do: drop the guard, edit, restore it."""
    with connection.cursor() as cursor:
        for statement in triggers.POSTGRESQL_REMOVE:
            cursor.execute(statement)
        cursor.execute(sql, params)
        for statement in triggers.POSTGRESQL_INSTALL:
            cursor.execute(statement)


def test_it_passes_intact_jobs(capsys):
    finished_job()
    code, out = verify(capsys)
    assert code == 0, out
    assert "with problems" in out and " 0 with problems" in out


def test_it_catches_an_event_edited_behind_its_back(capsys):
    job = finished_job()
    run_without_trigger("UPDATE jobs_jobevent SET data = %s WHERE job_id = %s AND seq = 3",
                        ['{"summary": "something else"}', job.pk])
    code, out = verify(capsys)
    assert code == 1
    assert f"job {job.pk}: event 3 (job.succeeded): content does not match its hash" in out


def test_it_catches_a_deleted_event(capsys):
    job = finished_job()
    run_without_trigger("DELETE FROM jobs_jobevent WHERE job_id = %s AND seq = 2", [job.pk])
    code, out = verify(capsys)
    assert code == 1
    assert f"job {job.pk}: event seq 3 where 2 was expected" in out


def test_it_catches_a_projection_that_disagrees_with_the_events(capsys):
    job = finished_job()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE jobs_job SET status = 'failed' WHERE id = %s", [job.pk])
    code, out = verify(capsys)
    assert code == 1
    assert f"job {job.pk}: projection field status: row has 'failed', events give 'succeeded'" in out


def test_it_catches_events_of_a_job_that_does_not_exist(capsys):
    job = finished_job()
    missing = job.pk + 1_000_000
    run_without_trigger("INSERT INTO jobs_jobevent (job_id, seq, at, kind, data, actor, prev_hash, hash) "
                        "SELECT %s, seq, at, kind, data, actor, prev_hash, hash FROM jobs_jobevent WHERE job_id = %s",
                        [missing, job.pk])
    code, out = verify(capsys)
    assert code == 1
    assert f"events of jobs that do not exist: {missing}" in out
