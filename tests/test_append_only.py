"""The database itself refuses to change or remove events, on both backends."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from jobs.engine import events
from jobs.models import JobEvent

ROOT = Path(__file__).resolve().parent.parent


def make_job():
    with transaction.atomic():
        return events.new_job("noop", target="t", params={}, actor_kind="user", actor="alice")


@pytest.mark.django_db
@pytest.mark.parametrize("sql", [
    "UPDATE jobs_jobevent SET kind = 'edited' WHERE job_id = %s",
    "UPDATE jobs_jobevent SET data = '{}' WHERE job_id = %s",
    "DELETE FROM jobs_jobevent WHERE job_id = %s",
])
def test_it_refuses_update_and_delete_on_postgresql(sql):
    assert connection.vendor == "postgresql"
    job = make_job()
    with pytest.raises(DatabaseError, match="jobs_jobevent is append-only: (UPDATE|DELETE) refused"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [job.pk])
    assert JobEvent.objects.get(job=job).kind == "job.queued"


@pytest.mark.django_db
@pytest.mark.parametrize("sql", ["DELETE FROM jobs_job WHERE id = %s", "TRUNCATE jobs_job CASCADE"])
def test_it_keeps_job_rows_on_postgresql(sql):
    job = make_job() if "DELETE" in sql else None  # TRUNCATE refuses rows written in the same transaction anyway
    with pytest.raises(DatabaseError, match="jobs_job rows are kept with their events: (DELETE|TRUNCATE) refused"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [job.pk] if "%s" in sql else None)


@pytest.mark.django_db
def test_it_refuses_truncate_on_postgresql():
    with pytest.raises(DatabaseError, match="append-only: TRUNCATE refused"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("TRUNCATE jobs_jobevent CASCADE")


def test_it_writes_verifies_and_refuses_changes_on_sqlite(tmp_path):
    db = tmp_path / "embedded.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "toppcloud_site.settings", "DATABASE_URL": f"sqlite:///{db}",
           "CELERY_BROKER_URL": "filesystem://", "TOPPCLOUD_VAR_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run(manage + ["migrate", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run(manage + ["shell", "-c", "from django.db import transaction; from jobs.engine import events\n"
                             "with transaction.atomic(): job = events.new_job('noop', target='t', params={}, "
                             "actor_kind='user', actor='alice')\n"
                             "events.record(job.pk, 'job.started', 'w', attempt=1, worker='w', hostname='h', pid=1)\n"
                             "events.record(job.pk, 'job.succeeded', 'w', summary='done', result={'a': [1]})"],
                   env=env, check=True, cwd=ROOT)
    # The same writer and the same replay hold on the embedded database.
    verify = subprocess.run(manage + ["jobs", "verify"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert verify.returncode == 0 and "verified 1 jobs: 1 intact" in verify.stdout, verify.stdout + verify.stderr
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM jobs_jobevent").fetchone() == (3,)
    assert con.execute("SELECT status, summary FROM jobs_job").fetchone() == ("succeeded", "done")
    with pytest.raises(sqlite3.IntegrityError, match="jobs_jobevent is append-only: UPDATE refused"):
        con.execute("UPDATE jobs_jobevent SET kind = 'edited'")
    with pytest.raises(sqlite3.IntegrityError, match="jobs_jobevent is append-only: DELETE refused"):
        con.execute("DELETE FROM jobs_jobevent")
    with pytest.raises(sqlite3.IntegrityError, match="jobs_job rows are kept with their events: DELETE refused"):
        con.execute("DELETE FROM jobs_job")
    assert [k for (k,) in con.execute("SELECT kind FROM jobs_jobevent ORDER BY seq")] == [
        "job.queued", "job.started", "job.succeeded"]
