"""Data services, backups, restores and checkpoint-and-revert: a real app with a real PostgreSQL
cluster on each test host, through a real worker."""

import difflib
import glob
import hashlib
import http.client
import io
import json
import os
import subprocess
import tarfile
import time

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.steps import data
from jobs.models import Job
from tests.helpers import event_kinds, wait_for_job, wait_until
from tests.test_deploy_flow import app_copy, deploy, get
from toppcloud_site.records.models import Backup, Service

pytestmark = [pytest.mark.hosts, pytest.mark.worker]


def request(host, hostname, method, path, body=b""):
    conn = http.client.HTTPConnection(host.address, host.http_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": hostname})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def notes(host, name):
    status, body = request(host, f"{name}.test", "GET", "/notes")
    assert status == 200, body
    return body.decode().splitlines()


def add_note(host, name, text):
    status, body = request(host, f"{name}.test", "POST", "/notes", text.encode())
    assert status == 201, body


def put_file(host, name, filename, content):
    status, body = request(host, f"{name}.test", "PUT", f"/files/{filename}", content)
    assert status == 201, body


def get_file(host, name, filename):
    return request(host, f"{name}.test", "GET", f"/files/{filename}")


def psql(node, db, sql):
    """SQL as the cluster's superuser, straight on the test host's cluster (the test is on the same machine)."""
    [conf] = glob.glob(f"/etc/postgresql/*/{node.pg_cluster}")
    r = subprocess.run(["runuser", "-u", "postgres", "--", f"/usr/lib/postgresql/{conf.split('/')[3]}/bin/psql",
                        "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-p", str(node.pg_port), "-d", db, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def run_command(name, *args):
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command(name, *args)
    job = Job.objects.filter(queued_at__gt=before).order_by("queued_at").last()
    return exit_info.value.code, job


def members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


@pytest.fixture(scope="module")
def notes_app(tmp_path_factory, ready_nodes, test_hosts):
    """The notes fixture deployed on the first test host, with two notes and a file."""
    name = f"notes{os.getpid() % 100000}"
    app_dir = app_copy(tmp_path_factory.mktemp("notes"), "notes", name=name, version="1")
    code, job = deploy(app_dir, ready_nodes[0])
    assert code == 0, job.error
    add_note(test_hosts[0], name, "first note")
    add_note(test_hosts[0], name, "second note")
    put_file(test_hosts[0], name, "report.txt", b"quarterly numbers\n")
    return name, app_dir, job


def test_it_installs_the_services_and_keeps_the_data_across_redeploys(notes_app, ready_nodes, test_hosts, tmp_path):
    name, app_dir, first = notes_app
    host, node = test_hosts[0], ready_nodes[0]
    finished = {e.data["step"]: e.data for e in first.events.filter(kind="step.finished")}
    assert finished["services"]["ok"] and finished["services"]["changed"] is True
    installed = first.events.get(kind="service.postgresql").data
    assert installed["cluster"] == node.pg_cluster and installed["dbname"] == name
    assert "created database" in installed["changed"] and "created role" in installed["changed"]
    assert first.events.get(kind="service.files").data["dir"] == f"{node.root}/apps/{name}/files"
    # The app reads its services from the environment.
    services = json.loads(request(host, f"{name}.test", "GET", "/services")[1])
    assert services["CONFIG_PG_HOST"] == node.address and services["CONFIG_PG_PORT"] == str(node.pg_port)
    assert services["CONFIG_PG_DBNAME"] == name and services["CONFIG_PG_USER"] == name
    assert services["CONFIG_FILES"] == f"{node.root}/apps/{name}/files" and services["CONFIG_PG_PASSWORD set"]
    # The password is in no event; the node stores only its SCRAM verifier.
    password = Service.objects.get(app__name=name, kind="postgresql").password
    assert len(password) >= 30
    for job in Job.objects.filter(target__contains=name):
        assert password not in json.dumps(list(job.events.values_list("data", flat=True)))
    assert psql(node, "postgres", f"SELECT rolpassword FROM pg_authid WHERE rolname = '{name}'").startswith(
        "SCRAM-SHA-256$4096:")

    before = notes(host, name)
    assert [line.split("\t")[1] for line in before] == ["first note", "second note"]
    code, job = deploy(app_copy(tmp_path, "notes", name=name, version="2"), node)
    assert code == 0, job.error
    assert get(host, f"{name}.test")[1] == "notes version 2\n"
    assert notes(host, name) == before
    assert get_file(host, name, "report.txt") == (200, b"quarterly numbers\n")
    kinds = event_kinds(job)
    # The checkpoint comes right before the database updates; the health check after them, before activation.
    steps = [e.data["step"] for e in job.events.filter(kind="step.started").order_by("seq")]
    assert (steps.index("wait until it answers") < steps.index("checkpoint") < steps.index("update_fetch")
            < steps.index("health") < steps.index("activate"))
    assert "backup.created" in kinds
    again = next(e.data for e in job.events.filter(kind="service.postgresql"))
    assert again["changed"] == []  # installed once; a redeploy finds it as wanted


def backup_now(name, *args):
    code, job = run_command("backup", name, *args)
    assert code == 0, job.error
    return Backup.objects.get(name=job.result["backup"]), job


def test_it_backs_up_the_same_data_to_the_same_bytes_and_a_changed_row_to_a_changed_line(notes_app, ready_nodes):
    name = notes_app[0]
    first, job = backup_now(name)
    second, _ = backup_now(name)
    assert first.name != second.name and first.services == ["postgresql", "files"]
    a, b = members(data.archive_path(first)), members(data.archive_path(second))
    assert list(a) == ["postgresql.sql", "files.tar", "manifest.json"]
    assert a["postgresql.sql"] == b["postgresql.sql"] and a["files.tar"] == b["files.tar"]
    ma, mb = json.loads(a["manifest.json"]), json.loads(b["manifest.json"])
    assert ma.pop("created_at") != mb.pop("created_at")  # the one field allowed to differ
    assert ma == mb and ma["app"] == name and ma["services"] == ["postgresql", "files"]
    assert ma["files"]["postgresql.sql"]["sha256"] == hashlib.sha256(a["postgresql.sql"]).hexdigest()
    sql = a["postgresql.sql"].decode()
    assert "\\restrict" not in sql and "COPY public.notes (id, body, created) FROM stdin;" in sql
    with tarfile.open(fileobj=io.BytesIO(a["files.tar"])) as files:
        [report] = files.getmembers()
        assert (report.name, report.mtime, report.uid, report.uname) == ("report.txt", 0, 0, "")
    finished = {e.data["step"] for e in job.events.filter(kind="step.finished")}
    assert {"dump", "retention"} <= finished

    node = ready_nodes[0]
    psql(node, name, "UPDATE notes SET body = 'second note, edited' WHERE id = (SELECT max(id) FROM notes)")
    third, _ = backup_now(name)
    c = members(data.archive_path(third))
    diff = [line for line in difflib.ndiff(sql.splitlines(), c["postgresql.sql"].decode().splitlines())
            if line[:2] in ("- ", "+ ")]
    assert len(diff) == 2 and diff[0].startswith("- ") and diff[1].startswith("+ ")
    assert diff[0][2:].split("\t")[:2] == [diff[1][2:].split("\t")[0], "second note"]
    assert diff[1][2:].split("\t")[1] == "second note, edited"


def set_ini(app_dir, key, value):
    ini = (app_dir / "app.ini").read_text()
    lines = [line for line in ini.splitlines() if not line.startswith(f"{key} =")]
    (app_dir / "app.ini").write_text("\n".join(lines + [f"{key} = {value}"]) + "\n")


def test_a_health_url_reading_what_update_fetch_makes_deploys_first_time(ready_nodes, test_hosts, tmp_path):
    host, node = test_hosts[0], ready_nodes[0]
    name = f"first{os.getpid() % 100000}"
    app_dir = app_copy(tmp_path, "notes", name=name, version="1")
    set_ini(app_dir, "health_check", "/notes")  # reads the table migrate.py creates: 500 until it ran
    code, job = deploy(app_dir, node)
    assert code == 0, job.error
    steps = [e.data["step"] for e in job.events.filter(kind="step.started").order_by("seq")]
    assert steps.index("update_fetch") < steps.index("health") < steps.index("activate")
    health = job.events.get(kind="health").data
    assert (health["path"], health["status"]) == ("/notes", 200)
    # The early check saw the process answer before the table existed; health, after update_fetch, a 200.
    assert job.events.get(kind="step.finished", data__step="wait until it answers").data["answer"][0] == 500
    assert notes(host, name) == []


def test_a_health_failure_after_update_fetch_puts_the_checkpoint_back(notes_app, ready_nodes, test_hosts, tmp_path):
    name = notes_app[0]
    host, node = test_hosts[0], ready_nodes[0]
    before, live_version = notes(host, name), get(host, f"{name}.test")[1]
    assert before
    bad = app_copy(tmp_path, "notes", name=name, version="8")
    with open(bad / "migrate.py", "a") as f:
        f.write("conn = psycopg2.connect(os.environ['DATABASE_URL'])\n"
                "with conn, conn.cursor() as cur:\n"
                "    cur.execute(\"INSERT INTO notes (body) VALUES ('written by release 8')\")\n")
    set_ini(bad, "health_check", "/no-such-page")  # answers (404) at once, unhealthy after the update too
    code, job = deploy(bad, node)
    assert code == 1 and job.status == "failed"
    assert "health check /no-such-page" in job.error and "answered 404" in job.error
    assert "the data were restored from checkpoint" in job.error
    steps = [(e.data["step"], e.data["ok"]) for e in job.events.filter(kind="step.finished").order_by("seq")]
    names = [s for s, _ in steps]
    assert names[names.index("checkpoint"):] == ["checkpoint", "update_fetch", "health", "revert", "stop new release"]
    assert dict(steps)["update_fetch"] is True and dict(steps)["health"] is False and dict(steps)["revert"] is True
    assert "release.activated" not in event_kinds(job)
    assert notes(host, name) == before  # the row release 8's update wrote is gone with the checkpoint put back
    assert get(host, f"{name}.test")[1] == live_version


def all_rows(node, name):
    return psql(node, name, "SELECT * FROM notes ORDER BY id").splitlines()


def columns(node, name):
    return psql(node, name, "SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = 'notes' ORDER BY ordinal_position").split()


def test_it_restores_a_failed_migration_from_its_checkpoint(notes_app, ready_nodes, test_hosts, tmp_path):
    name = notes_app[0]
    host, node = test_hosts[0], ready_nodes[0]
    live_version = get(host, f"{name}.test")[1]
    rows, cols = all_rows(node, name), columns(node, name)
    put_file(host, name, "kept.txt", b"kept\n")
    bad = app_copy(tmp_path, "notes", name=name, version="9")
    (bad / "migrate.py").write_text(
        "import os, sys, psycopg2\n"
        "conn = psycopg2.connect(os.environ['DATABASE_URL'])\n"
        "conn.autocommit = True\n"
        "cur = conn.cursor()\n"
        "cur.execute('ALTER TABLE notes ADD COLUMN priority integer')\n"
        "cur.execute(\"UPDATE notes SET body = 'clobbered'\")\n"
        "cur.execute('DELETE FROM notes WHERE id > (SELECT min(id) FROM notes)')\n"
        "open(os.path.join(os.environ['CONFIG_FILES'], 'kept.txt'), 'w').write('overwritten')\n"
        "sys.exit('migration 0007 failed half-way')\n")
    code, job = deploy(bad, node)
    assert code == 1
    assert "migration 0007 failed half-way" in job.error and "the data were restored from checkpoint" in job.error

    assert all_rows(node, name) == rows and columns(node, name) == cols  # row by row, and the schema
    assert get_file(host, name, "kept.txt") == (200, b"kept\n")
    assert get(host, f"{name}.test")[1] == live_version  # the old release never stopped serving
    steps = [(e.data["step"], e.data["ok"]) for e in job.events.filter(kind="step.finished").order_by("seq")]
    names = [s for s, _ in steps]
    assert names[names.index("checkpoint"):] == ["checkpoint", "update_fetch", "revert", "stop new release"]
    assert dict(steps)["update_fetch"] is False and dict(steps)["revert"] is True
    revert = job.events.get(kind="step.finished", data__step="revert").data
    checkpoint = Backup.objects.get(name=revert["restored"])
    failed = Backup.objects.get(name=revert["failed_state"])
    assert checkpoint.kind == failed.kind == "checkpoint" and checkpoint.job_id == failed.job_id == job.pk
    assert "clobbered" in members(data.archive_path(failed))["postgresql.sql"].decode()  # nothing is lost
    assert job.events.filter(kind="restore.swapped").count() == 1
    kinds = event_kinds(job)
    assert kinds.index("backup.verified") < kinds.index("restore.staged") < kinds.index("restore.swapped")


@pytest.fixture(scope="module")
def second_app(notes_app, ready_nodes, test_hosts, tmp_path_factory):
    """Another notes app, on the second test host, with data of its own."""
    name = notes_app[0] + "b"
    code, job = deploy(app_copy(tmp_path_factory.mktemp("second"), "notes", name=name), ready_nodes[1])
    assert code == 0, job.error
    add_note(test_hosts[1], name, "a note of the second app")
    put_file(test_hosts[1], name, "own.txt", b"own\n")
    return name


def test_it_restores_a_backup_into_another_app_on_another_host(notes_app, second_app, ready_nodes, test_hosts):
    name, other = notes_app[0], second_app
    source, _ = backup_now(name)
    code, job = run_command("restore", source.name, other)
    assert code == 0, job.error
    assert notes(test_hosts[1], other) == notes(test_hosts[0], name)
    assert get_file(test_hosts[1], other, "report.txt") == (200, b"quarterly numbers\n")
    assert get_file(test_hosts[1], other, "own.txt")[0] == 404  # the files directory was replaced, not merged
    # The restored sequence goes on where the source's was.
    add_note(test_hosts[1], other, "after the restore")
    ids = [int(line.split("\t")[0]) for line in notes(test_hosts[1], other)]
    assert ids[-1] == max(ids[:-1]) + 1
    # What was replaced is kept.
    kept = Backup.objects.get(name=job.result["checkpoint"])
    assert "a note of the second app" in members(data.archive_path(kept))["postgresql.sql"].decode()
    assert psql(ready_nodes[1], other, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'").strip() == other


def corrupted(tmp_path, source, how):
    """A copy of an archive, damaged in one way, with a manifest that still looks right."""
    parts = members(data.archive_path(source))
    path = tmp_path / f"{how}.tar"
    if how == "flipped byte":
        raw = bytearray(data.archive_path(source).read_bytes())
        raw[512 + 100] ^= 0x01  # inside postgresql.sql, the first member
        path.write_bytes(bytes(raw))
        return path
    if how == "missing file":
        del parts["files.tar"]
    if how == "path outside":
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as t:
            evil = tarfile.TarInfo("../../evil.txt")
            evil.size = 4
            t.addfile(evil, io.BytesIO(b"evil"))
        parts["files.tar"] = inner.getvalue()
        manifest = json.loads(parts["manifest.json"])
        manifest["files"]["files.tar"] = {"sha256": hashlib.sha256(parts["files.tar"]).hexdigest(),
                                          "size": len(parts["files.tar"])}
        parts["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as t:
        for member, content in parts.items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize("how, message", [
    ("flipped byte", "'postgresql.sql' does not match its sha256 in manifest.json"),
    ("missing file", "manifest.json lists 'files.tar' but the archive has no such member"),
    ("path outside", "files.tar member '../../evil.txt' is not allowed"),
])
def test_it_refuses_a_corrupted_archive_before_anything_changes(notes_app, ready_nodes, tmp_path, how, message):
    name = notes_app[0]
    source = Backup.objects.filter(app__name=name, kind="backup").first() or backup_now(name)[0]
    rows = all_rows(ready_nodes[0], name)
    jobs_before = Job.objects.count()
    with pytest.raises(CommandError) as refused:
        call_command("restore", str(corrupted(tmp_path, source, how)), name)
    assert message in str(refused.value) and "nothing was changed" in str(refused.value)
    assert Job.objects.count() == jobs_before and all_rows(ready_nodes[0], name) == rows


@pytest.mark.parametrize("where", ["manifest", "rows"])
def test_a_stored_archive_damaged_later_is_refused_before_the_swap(notes_app, ready_nodes, where):
    name, node = notes_app[0], ready_nodes[0]
    source, _ = backup_now(name)
    rows = all_rows(node, name)
    path = data.archive_path(source)
    raw = bytearray(path.read_bytes())
    offset = raw.rindex(b'"format"') if where == "manifest" else 512 + raw[512:].index(b"second note")
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    code, job = run_command("restore", source.name, name, "--no-checkpoint")
    assert code == 1, job.error
    steps = [e.data["step"] for e in job.events.filter(kind="step.started")]
    if where == "manifest":  # the recorded manifest checksum: refused at once, here
        assert f"backup {source.name} is corrupted" in job.error and "nothing was changed" in job.error
        assert steps == ["verify"]
    else:  # a member's checksum: the node refuses before it swaps anything in
        assert "'postgresql.sql' does not match its sha256 in manifest.json" in job.error
        assert steps == ["verify", "restore"] and not job.events.filter(kind="restore.staged").exists()
    assert all_rows(node, name) == rows
    assert psql(node, "postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{name}\\_\\_%'").strip() == "0"


def test_a_restore_whose_worker_is_killed_midway_leaves_the_data_as_they_were(notes_app, ready_nodes, test_hosts):
    name, node = notes_app[0], ready_nodes[0]
    # Enough rows that loading them takes a while.
    psql(node, name, "INSERT INTO notes (body) SELECT repeat('bulk ', 40) || g FROM generate_series(1, 500000) g")
    big, _ = backup_now(name)
    psql(node, name, "DELETE FROM notes WHERE body LIKE 'bulk %'")
    rows = all_rows(node, name)
    before = timezone.now()
    call_command("restore", big.name, name, "--no-checkpoint", "--no-wait")
    job = Job.objects.filter(queued_at__gt=before, kind="restore").get()
    started = wait_until(lambda: job.events.filter(kind="restore.received").first(), what="the archive on the node")
    pid = job.events.get(kind="job.started").data["pid"]
    time.sleep(0.2)  # the node is loading the rows now
    assert not job.events.filter(kind="restore.staged").exists(), "the restore was too quick to interrupt"
    os.kill(pid, 9)  # the worker process running it dies mid-restore
    job = wait_for_job(job.pk, timeout=90)
    assert job.status in ("failed", "lost") and "died during attempt 1" in job.error, job.error
    assert started and not job.events.filter(kind="restore.swapped").exists()
    assert all_rows(node, name) == rows
    # The node dropped what it had staged.
    wait_until(lambda: psql(node, "postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE "
                                              f"'{name}\\_\\_%'").strip() == "0", what="staging dropped")
    assert notes(test_hosts[0], name) == ["\t".join(line.split("|")[:2]) for line in rows]  # and the app serves them


def test_clear_needs_confirmation_and_keeps_a_checkpoint(second_app, ready_nodes, test_hosts):
    name = second_app
    rows = all_rows(ready_nodes[1], name)
    with pytest.raises(CommandError, match="--yes-delete-data"):
        call_command("clear", name)
    assert all_rows(ready_nodes[1], name) == rows
    code, job = run_command("clear", name, "--yes-delete-data")
    assert code == 0, job.error
    assert psql(ready_nodes[1], name, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").strip() == "0"
    assert os.listdir(f"{ready_nodes[1].root}/apps/{name}/files") == []
    kept = Backup.objects.get(name=job.result["checkpoint"])
    assert kept.kind == "checkpoint" and "after the restore" in members(data.archive_path(kept))["postgresql.sql"].decode()
    assert job.actor_kind == "user" and "cleared" in job.summary


def test_backups_are_scheduled_with_beat_and_old_ones_pruned(notes_app):
    from django_celery_beat.models import PeriodicTask

    from jobs.tasks import submit_backup

    name = notes_app[0]
    with pytest.raises(CommandError, match=f"backups of {name}: minute '61' is invalid: 61 is out of range 0-59"):
        call_command("backup", name, "--schedule", "61 3 * * *")
    call_command("backup", name, "--schedule", "0 3 * * *")
    task = PeriodicTask.objects.get(name=f"backup {name}")
    assert task.task == "jobs.submit_backup" and json.loads(task.kwargs) == {"app": name}
    assert (task.crontab.minute, task.crontab.hour) == ("0", "3")
    # What beat runs at 03:00: a backup job whose actor is the schedule.
    for _ in range(6):
        job = wait_for_job(submit_backup(name), timeout=120)
        assert job.status == "succeeded", job.error
    assert (job.actor_kind, job.actor) == ("schedule", f"backup {name}")
    kept = list(Backup.objects.filter(app__name=name, kind="backup"))
    assert len(kept) == 5  # keep_backups = 5 in the app's app.ini
    assert sorted(p.name for p in data.backup_dir(name).glob(f"{name}-*-backup-*.tar")) == sorted(
        f"{b.name}.tar" for b in kept)
    call_command("backup", name, "--unschedule")
    assert not PeriodicTask.objects.filter(name=f"backup {name}").exists()


def test_a_backup_can_be_written_to_a_file_and_copied_to_another_node(notes_app, ready_nodes, tmp_path):
    name, other = notes_app[0], ready_nodes[1]
    out = tmp_path / "notes.tar"
    code, job = run_command("backup", name, "--output", str(out), "--copy-to", other.name)
    assert code == 0, job.error
    backup = Backup.objects.get(name=job.result["backup"])
    copy = f"{other.root}/backups/{name}/{backup.name}.tar"
    assert out.read_bytes() == data.archive_path(backup).read_bytes() == open(copy, "rb").read()
    assert backup.uploaded_to == f"{other.name}:{copy}"


def test_a_group_keeps_its_apps_databases_on_its_database_node(ready_nodes, test_hosts, tmp_path):
    from toppcloud_site.records.models import App, ServerGroup

    db_node, app_node = ready_nodes
    group = ServerGroup.objects.create(name=f"grp{os.getpid()}", database_node=db_node)
    name = f"grouped{os.getpid() % 100000}"
    App.objects.create(name=name, group=group)
    code, job = deploy(app_copy(tmp_path, "notes", name=name), app_node)
    assert code == 0, job.error
    add_note(test_hosts[1], name, "kept on the database node")
    services = json.loads(request(test_hosts[1], f"{name}.test", "GET", "/services")[1])
    assert services["CONFIG_PG_HOST"] == db_node.address and services["CONFIG_PG_PORT"] == str(db_node.pg_port)
    assert services["CONFIG_FILES"].startswith(app_node.root)
    assert psql(db_node, name, "SELECT body FROM notes").strip() == "kept on the database node"
    backup, _ = backup_now(name)
    dumps = {e.data["step"]: e.data["argv"] for e in
             Job.objects.get(pk=backup.job_id).events.filter(kind="command")}
    assert str(db_node.pg_port) in dumps["dump-sql"][2] and app_node.root in dumps["dump-files"][2]
