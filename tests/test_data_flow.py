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

from jobs import data
from jobs.models import Job
from tests.helpers import event_kinds, wait_for_job
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
    # The checkpoint comes after the health check, right before the database updates.
    steps = [e.data["step"] for e in job.events.filter(kind="step.started").order_by("seq")]
    assert steps.index("health") < steps.index("checkpoint") < steps.index("update_fetch") < steps.index("activate")
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
    assert "\\restrict" not in sql and f"COPY public.notes (id, body, created) FROM stdin;" in sql
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
