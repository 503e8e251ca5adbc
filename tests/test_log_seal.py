"""The tamper-evident log: keyed chains and seals catch an edit, a deleted job, a job cut short, on PostgreSQL.

Each attack is done as someone with full database access would: on the
test's connection with `session_replication_role = replica`, so the
append-only triggers do not fire, and every hash they can compute (plain
sha256) recomputed to match. `manage.py jobs verify` must exit 1 and name
the job (or audit entry) and what is wrong.
"""

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from jobs.engine import events, reducer
from jobs.models import PROJECTED_FIELDS, Job, JobEvent, LogSeal
from jobs.engine.states import Kind
from tests.test_jobs_verify import finished_job, verify
from toppcloud_site.logchain import plain_hash
from toppcloud_site.records.models import AuditEntry, ServerGroup

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def seal_file(tmp_path, settings):
    """A seal file of this test alone (its database changes are rolled back, a file's lines would not be),
    starting as the session's: seal 1, the cut-over written by migration 0007."""
    path = tmp_path / "log.seals"
    shutil.copy(settings.TOPPCLOUD_LOG_SEAL_FILE, path)
    settings.TOPPCLOUD_LOG_SEAL_FILE = str(path)
    return path




def seal(capsys):
    call_command("jobs", "seal")
    return capsys.readouterr().out


@contextmanager
def triggers_off():
    """What someone with database access can do: writes that skip every trigger, the append-only guards too."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        try:
            yield cursor
        finally:
            cursor.execute("SET LOCAL session_replication_role = origin")


def rebuild_row(cursor, job_id):
    """Make the job row the projection of the events left, as verify's replay would."""
    rebuilt = reducer.replay(job_id, list(JobEvent.objects.filter(job_id=job_id).order_by("seq")))
    Job.objects.filter(pk=job_id).update(**{f: getattr(rebuilt, f) for f in PROJECTED_FIELDS})


def test_it_passes_a_clean_log_sealed_and_not_yet_sealed(capsys):
    sealed = finished_job()
    ServerGroup.objects.create(name="seal-clean")  # an audit entry
    assert seal(capsys).startswith("seal ")
    assert seal(capsys) == "nothing changed since the last seal\n"
    events.record(sealed.pk, Kind.LOG, "worker:w", text="a late line")  # past its sealed head: fine
    finished_job()  # newer than the last seal
    ServerGroup.objects.create(name="seal-clean-2")
    code, out = verify(capsys)
    assert code == 0, out
    assert " 0 with problems" in out and "audit entries: intact" in out and "seals: intact" in out
    last = LogSeal.objects.order_by("-number").first()
    assert [sealed.pk, 3, Job.objects.get(pk=sealed.pk).events.get(seq=3).hash] in last.jobs
    lines = [json.loads(line) for line in Path(settings.TOPPCLOUD_LOG_SEAL_FILE).read_text().splitlines()]
    assert [s["number"] for s in lines] == list(range(1, last.number + 1))
    assert lines[-1]["mac"] == last.mac


def test_it_catches_an_event_edited_and_its_chain_recomputed_with_plain_sha256(capsys):
    job = finished_job()
    with triggers_off() as cursor:
        prev = JobEvent.objects.get(job=job, seq=1).hash
        for event in JobEvent.objects.filter(job=job, seq__gte=2).order_by("seq"):
            data = {"summary": "nothing happened"} if event.seq == 3 else event.data
            new = events.event_hash(prev, job.pk, event.seq, event.at, event.kind, data, event.actor, keyed=False)
            cursor.execute("UPDATE jobs_jobevent SET data = %s, prev_hash = %s, hash = %s WHERE job_id = %s AND seq = %s",
                           [json.dumps(data), prev, new, job.pk, event.seq])
            prev = new
        rebuild_row(cursor, job.pk)
    code, out = verify(capsys)
    assert code == 1, out
    assert f"job {job.pk}: event 2 (job.started): content does not match its hash" in out
    assert f"job {job.pk}: event 3 (job.succeeded): content does not match its hash" in out


def test_it_catches_a_sealed_job_deleted_whole(capsys):
    job = finished_job()
    seal(capsys)
    number = LogSeal.objects.order_by("-number").first().number
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM jobs_jobevent WHERE job_id = %s", [job.pk])
        cursor.execute("DELETE FROM jobs_job WHERE id = %s", [job.pk])
    code, out = verify(capsys)
    assert code == 1, out
    assert f"job {job.pk}: seal {number} holds it at event 3, but the job does not exist: deleted" in out


def test_it_catches_a_sealed_job_whose_last_event_was_cut_off_and_its_row_rebuilt(capsys):
    job = finished_job()
    seal(capsys)
    number = LogSeal.objects.order_by("-number").first().number
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM jobs_jobevent WHERE job_id = %s AND seq = 3", [job.pk])
        rebuild_row(cursor, job.pk)
    assert Job.objects.get(pk=job.pk).status == "running"
    assert "nothing changed" in seal(capsys)  # the sealer does not seal a head that went back
    code, out = verify(capsys)
    assert code == 1, out
    assert (f"job {job.pk}: seal {number} holds it at event 3, but it has 2 events: its last events were cut off"
            in out)


def test_it_catches_an_event_that_does_not_carry_the_keyed_hash_though_its_chain_links(capsys):
    """A new event "downgraded" to plain sha256: only the cut-over seal's events may carry it."""
    job = finished_job()
    with triggers_off() as cursor:
        last = JobEvent.objects.get(job=job, seq=3)
        fields = {"job": job.pk, "seq": 4, "kind": Kind.LOG, "data": {"text": "forged"}, "actor": "worker:w",
                  "at": last.at.isoformat(timespec="microseconds")}
        cursor.execute("INSERT INTO jobs_jobevent (job_id, seq, at, kind, data, actor, prev_hash, hash) "
                       "VALUES (%s, 4, %s, %s, %s, %s, %s, %s)",
                       [job.pk, last.at, Kind.LOG, '{"text": "forged"}', "worker:w", last.hash,
                        plain_hash(last.hash, fields)])
        rebuild_row(cursor, job.pk)
    code, out = verify(capsys)
    assert code == 1, out
    assert f"job {job.pk}: event 4 (log): content does not match its hash" in out


def test_it_catches_an_audit_entry_edited(capsys):
    group = ServerGroup.objects.create(name="seal-audit-edit")
    entry = AuditEntry.objects.get(model="servergroup", object_id=str(group.pk), action="create")
    with triggers_off() as cursor:
        cursor.execute("UPDATE records_auditentry SET actor = 'user:nobody' WHERE id = %s", [entry.pk])
    code, out = verify(capsys)
    assert code == 1, out
    assert f"audit entry {entry.pk} (create servergroup 'seal-audit-edit'): content does not match its hash" in out


def test_it_catches_the_sealed_last_audit_entry_deleted(capsys):
    ServerGroup.objects.create(name="seal-audit-1")
    ServerGroup.objects.create(name="seal-audit-2")
    seal(capsys)
    last = AuditEntry.objects.order_by("-id").first()
    number = LogSeal.objects.order_by("-number").first().number
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM records_auditentry WHERE id = %s", [last.pk])
    code, out = verify(capsys)
    assert code == 1, out
    assert f"audit entry {last.pk}, sealed by seal {number}, is missing (deleted, or the log's end was cut off)" in out


def test_it_catches_a_deleted_audit_entry_between_two(capsys):
    for name in ("seal-gap-1", "seal-gap-2", "seal-gap-3"):
        ServerGroup.objects.create(name=name)
    first, middle, last = AuditEntry.objects.order_by("-id")[:3][::-1]
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM records_auditentry WHERE id = %s", [middle.pk])
    code, out = verify(capsys)
    assert code == 1, out
    assert f"audit entry {last.pk}: prev_hash does not match entry {first.pk}'s hash" in out


def test_it_catches_a_seal_removed_from_the_database_or_the_file(capsys, seal_file):
    finished_job()
    seal(capsys)
    finished_job()
    seal(capsys)
    last = LogSeal.objects.order_by("-number").first()
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM jobs_logseal WHERE number = %s", [last.number])
    code, out = verify(capsys)
    assert code == 1, out
    assert f"seals: seal {last.number} is in the seal file but not in the database (deleted?)" in out
    with pytest.raises(Exception, match=f"holds seal {last.number} but the database only up to {last.number - 1}"):
        call_command("jobs", "seal")


def test_it_writes_seals_the_file_lacks_from_the_database(capsys, seal_file):
    """A sealer stopped between its commit and its write: the next one writes the missing line."""
    finished_job()
    seal(capsys)
    lines = seal_file.read_bytes().splitlines(keepends=True)
    seal_file.write_bytes(b"".join(lines[:-1]))
    code, out = verify(capsys)
    assert code == 0, out  # a seal past the file's end is in the database, under its MAC
    finished_job()
    seal(capsys)
    assert len(seal_file.read_bytes().splitlines()) == LogSeal.objects.count()
    assert verify(capsys)[0] == 0


def test_it_seals_on_the_periodic_task():
    assert settings.CELERY_BEAT_SCHEDULE["toppcloud-seal-log"] == {
        "task": "jobs.seal", "schedule": settings.TOPPCLOUD_LOG_SEAL_INTERVAL}
    from jobs.tasks import seal as seal_task

    job = finished_job()
    number = seal_task.run()
    assert [job.pk, 3, job.events.get(seq=3).hash] in LogSeal.objects.get(number=number).jobs


def test_it_cuts_over_from_plain_sha256_without_reporting_old_jobs_and_refuses_a_downgrade(tmp_path):
    """An embedded database made before the key: its events verify after the upgrade; a new plain one does not."""
    tmp_path = tmp_path / "embedded"  # not the seal file of the fixture
    tmp_path.mkdir()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "toppcloud_site.settings", "DATABASE_URL": f"sqlite:///{tmp_path}/db",
           "CELERY_BROKER_URL": "filesystem://", "TOPPCLOUD_VAR_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("TOPPCLOUD_LOG_SEAL_FILE", None)
    manage = [sys.executable, str(ROOT / "manage.py")]

    def run(*argv):
        return subprocess.run(manage + list(argv), env=env, cwd=ROOT, capture_output=True, text=True)

    old_code = ("from django.db import connection, transaction; from jobs.engine import events; "
                "from toppcloud_site import logchain\n"
                "events.keyed_hash = logchain.plain_hash\n"  # what events were hashed with before the key
                "with transaction.atomic(): job = events.new_job('noop', target='t', params={}, "
                "actor_kind='user', actor='alice')\n"
                "events.record(job.pk, 'job.started', 'w', attempt=1, worker='w', hostname='h', pid=1)\n")
    assert run("migrate", "records", "0012", "-v0").returncode == 0
    assert run("migrate", "jobs", "0006", "-v0").returncode == 0
    made = run("shell", "-c", old_code + "events.record(job.pk, 'job.succeeded', 'w', summary='done')\n"
               "connection.cursor().execute(\"INSERT INTO records_auditentry (at, actor, action, model, object_id, "
               "object_repr, changes) VALUES ('2026-01-01 00:00:00', 'user:alice', 'create', 'app', '1', 'shop', "
               "'{}')\")")
    assert made.returncode == 0, made.stderr
    assert run("migrate", "-v0").returncode == 0
    verified = run("jobs", "verify")
    assert verified.returncode == 0 and "verified 1 jobs: 1 intact" in verified.stdout, verified.stdout + verified.stderr
    assert "1 audit entries: intact" in verified.stdout
    new = run("jobs", "seal")
    assert "nothing changed" in new.stdout, new.stdout + new.stderr
    # A job hashed the old way after the cut-over: not covered by it, so refused.
    assert run("shell", "-c", old_code).returncode == 0
    verified = run("jobs", "verify")
    assert verified.returncode == 1
    assert "job 2: event 1 (job.queued): content does not match its hash" in verified.stderr, verified.stderr
    assert "job 1:" not in verified.stderr
