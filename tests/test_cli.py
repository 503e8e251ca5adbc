"""The management commands as a new user meets them: config before the first deploy, refused deploys
recorded, nothing printed that a user cannot act on, progress while following."""

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.models import Job
from tests.helpers import event_kinds
from toppcloud_site.records.models import App, AuditEntry, ConfigValue

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "apps"


def app_copy(tmp_path, name, *, extra="", fixture="hello"):
    """A fixture app (hello) as app `name` (its own location), with extra app.ini lines."""
    dest = tmp_path / name
    shutil.copytree(FIXTURES / fixture, dest)
    ini = (dest / "app.ini").read_text().replace(f"app_name = {fixture}", f"app_name = {name}")
    ini = ini.replace(f"default_location = {fixture}.test", f"default_location = {name}.test")
    (dest / "app.ini").write_text(ini + extra)
    return dest


def deploy(app_dir, node):
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command("deploy", str(app_dir), "--node", node.name, stdout=io.StringIO())
    return exit_info.value.code, Job.objects.filter(queued_at__gt=before, kind="deploy").order_by("queued_at").last()


# --- 4. config before the first deploy --------------------------------------------------------------------

@pytest.mark.hosts
@pytest.mark.worker
def test_it_deploys_first_time_after_the_refusals_advice(worker, ready_nodes, tmp_path):
    name = f"cfgfirst{os.getpid() % 10000}"
    app_dir = app_copy(tmp_path, name, extra="config.required = FIRST_TOKEN\n")
    with pytest.raises(CommandError) as refused:
        call_command("deploy", str(app_dir), "--node", ready_nodes[0].name)
    advice = re.search(r"`manage.py (config set KEY VALUE --app \S+)`", str(refused.value))
    assert advice, str(refused.value)
    argv = advice.group(1).replace("KEY VALUE", "FIRST_TOKEN first-value").split()
    call_command(*argv, stdout=io.StringIO())  # the advised command, as written, works
    assert ConfigValue.objects.get(app__name=name, key="FIRST_TOKEN").plain == "first-value"
    code, job = deploy(app_dir, ready_nodes[0])
    assert code == 0, job.error
    assert job.status == "succeeded" and job.params["app"] == name


def test_it_creates_an_app_to_set_its_config_before_any_deploy(live_db):
    name = f"early{os.getpid() % 10000}"
    with pytest.raises(CommandError, match=rf"there is no app '{name}': create it first with "
                                           rf"`manage.py app create {name}`"):
        call_command("config", "set", "EARLY_KEY", "v", "--app", name)
    out = io.StringIO()
    call_command("app", "create", name, "--as", "alice", stdout=out)
    assert f"app {name} created" in out.getvalue()
    call_command("config", "set", "EARLY_KEY", "v", "--app", name, stdout=io.StringIO())
    assert ConfigValue.objects.get(app__name=name, key="EARLY_KEY").plain == "v"
    entry = AuditEntry.objects.filter(model="app", object_repr=name).order_by("id").first()
    assert entry is not None and entry.actor == "user:alice" and entry.action == "create"
    assert not App.objects.get(name=name).releases.exists()


@pytest.mark.parametrize("name, message", [
    ("Shop", "app name 'Shop' is invalid: use 1 to 63 characters a-z"), ("../x", "app name '../x' is invalid"),
    ("", "app name '' is invalid"), ("a" * 64, "is invalid: use 1 to 63 characters"),
])
def test_it_refuses_a_bad_app_name(live_db, name, message):
    with pytest.raises(CommandError, match=re.escape(f"app {name!r} was not created: ") + ".*" + re.escape(message)):
        call_command("app", "create", name)
    assert not App.objects.filter(name=name).exists()


def test_it_refuses_an_app_that_exists_and_an_unknown_group(live_db):
    name = f"twice{os.getpid() % 10000}"
    call_command("app", "create", name, stdout=io.StringIO())
    with pytest.raises(CommandError, match=f"there is already an app '{name}'"):
        call_command("app", "create", name)
    with pytest.raises(CommandError, match="there is no server group 'nogroup'"):
        call_command("app", "create", name + "x", "--group", "nogroup")


# --- 8b. refused deploys leave a record -----------------------------------------------------------------

@pytest.mark.parametrize("case", ["config", "app.ini", "archive"])
def test_it_records_a_refused_deploy_as_a_failed_job_no_worker_runs(live_db, nodes, tmp_path, case):
    name = f"refused{case[0]}{os.getpid() % 10000}"
    if case == "config":
        app_dir = app_copy(tmp_path, name, extra="config.required = NEVER_SET\n")
        expected = "needs config that is not set: NEVER_SET"
    elif case == "app.ini":
        app_dir = app_copy(tmp_path, name, extra="processes = two\n")
        expected = "app.ini"
    else:
        app_dir = app_copy(tmp_path, name)
        os.symlink("/etc/passwd", app_dir / "passwd")
        expected = "passwd"
    before = timezone.now()
    with pytest.raises(CommandError) as refused:
        call_command("deploy", str(app_dir), "--node", nodes[0].name, "--as", "bob")
    [job] = Job.objects.filter(queued_at__gt=before, kind="deploy")
    assert f"(recorded as job {job.pk})" in str(refused.value)
    assert job.status == "failed" and expected in job.error and job.finished_at is not None
    assert job.error in str(refused.value)
    assert (job.actor_kind, job.actor) == ("user", "bob")
    assert job.target == (f"app:{name}@{nodes[0].name}" if case != "app.ini" else f"app:?@{nodes[0].name}")
    assert job.params["app_dir"] == str(app_dir) and job.params["nodes"] == [nodes[0].name]
    assert event_kinds(job) == ["job.queued", "job.failed"]  # never sent, never started
    failed = job.events.get(kind="job.failed")
    assert failed.data == {"error": job.error, "refused": True} and failed.actor == "user:bob"


def test_it_records_no_job_for_a_usage_mistake(live_db, nodes, tmp_path):
    before = Job.objects.count()
    with pytest.raises(CommandError, match="say where"):
        call_command("deploy", str(app_copy(tmp_path, "usage")))
    with pytest.raises(CommandError, match="there is no node"):
        call_command("deploy", str(tmp_path / "usage"), "--node", "no-such-node")
    assert Job.objects.count() == before


# --- 11. nothing on stderr on the embedded default -------------------------------------------------------

def test_it_prints_nothing_on_stderr_on_the_embedded_default(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TOPPCLOUD_VAR_DIR": str(tmp_path / "var"),
           "PYTHONPATH": str(ROOT)}  # make run's settings: SQLite and the filesystem broker under var/

    def manage(*argv):
        done = subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    manage("migrate", "--no-input", "-v", "0")
    for argv in (["app", "create", "quiet"], ["config", "set", "QUIET", "1", "--app", "quiet"],
                 ["disable", "quiet", "--no-wait"], ["config", "apply", "--app", "quiet", "--no-wait"]):
        done = manage(*argv)
        assert done.stderr == "", f"manage.py {' '.join(argv)}: {done.stderr}"
    assert len(list((tmp_path / "var" / "broker" / "queue").iterdir())) == 2  # both jobs were sent


# --- 12. progress while following ------------------------------------------------------------------------

def test_it_emits_a_few_progress_events_however_often_it_counts():
    from nodeops.progress import Progress

    now = [0.0]
    events = []
    progress = Progress(lambda kind, **data: events.append((kind, data)), "backup", "bytes", total=10_000,
                        clock=lambda: now[0])
    for _ in range(10_000):  # 10,000 chunks over 2 seconds
        now[0] += 0.0002
        progress.add(1)
    progress.finish()
    assert 4 <= len(events) <= 5, events  # one per half second, and the last
    assert events[-1] == ("progress", {"what": "backup", "unit": "bytes", "done": 10_000, "total": 10_000,
                                       "seconds": 2.0})
    assert [d["done"] for _, d in events] == sorted(d["done"] for _, d in events)


def test_it_renders_progress_as_plain_lines_or_one_live_line():
    from jobs.engine.follow import _Bar, progress_line

    line = progress_line({"what": "restore", "unit": "bytes", "done": 5 << 20, "total": 10 << 20, "seconds": 2.0})
    assert line.startswith("restore:  50%") and "5.00M/10.0M" in line and "<00:02" in line  # the estimate
    assert progress_line({"what": "venv", "unit": "packages", "done": 12, "seconds": 3.0}).startswith(
        "venv: 12 packages [00:03")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = _Bar(out, live=True)
    bar.write("venv: 1 packages", True)
    bar.write("venv: 2 packages", True)
    bar.write("step ok")
    assert out.getvalue() == "\rvenv: 1 packages\x1b[K\rvenv: 2 packages\x1b[K\nstep ok"


@pytest.mark.hosts
@pytest.mark.worker
def test_it_shows_packages_and_bytes_while_following(worker, ready_nodes, tmp_path):
    from jobs.models import JobEvent

    name = f"progress{os.getpid() % 10000}"
    app_dir = app_copy(tmp_path, name, fixture="notes")  # service.postgresql, service.files
    with open(app_dir / "requirements.txt", "a") as f:
        f.write(f"# {name} {time.time_ns()}: a venv of its own, built now\n")
    (app_dir / "data.bin").write_bytes(os.urandom(3_000_000))  # an upload worth counting
    out = io.StringIO()  # not a terminal: plain lines
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command("deploy", str(app_dir), "--node", ready_nodes[0].name, stdout=out)
    deploy_job = Job.objects.filter(queued_at__gt=before, kind="deploy").get()
    assert exit_info.value.code == 0, deploy_job.error
    *_, venv = [e.data for e in JobEvent.objects.filter(job=deploy_job, kind="progress").order_by("seq")
                if e.data["what"] == "venv"]
    assert venv["unit"] == "packages" and venv["done"] >= 2  # gunicorn, psycopg2-binary
    assert re.search(rf"venv: {venv['done']} packages \[", out.getvalue()), out.getvalue()
    *_, upload = [e.data for e in JobEvent.objects.filter(job=deploy_job, kind="progress").order_by("seq")
                  if e.data["what"] == "upload"]
    assert upload["unit"] == "bytes" and upload["total"] > 3_000_000 and 3_000_000 < upload["done"] <= upload["total"]
    assert re.search(r"upload: 100%", out.getvalue()), out.getvalue()
    insert = "import os, psycopg2; c = psycopg2.connect(os.environ['DATABASE_URL']); c.autocommit = True; " \
             "c.cursor().execute(\"INSERT INTO notes (body) SELECT 'n' || g FROM generate_series(1, 1234) g\")"
    with pytest.raises(SystemExit) as exit_info:
        call_command("run", name, "--", "python", "-c", insert, stdout=io.StringIO())
    assert exit_info.value.code == 0

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("backup", name, stdout=out)
    backup_job = Job.objects.filter(queued_at__gt=before, kind="backup").get()
    assert exit_info.value.code == 0, backup_job.error
    events = [e.data for e in JobEvent.objects.filter(job=backup_job, kind="progress").order_by("seq")]
    assert events and events[-1]["what"] == "backup" and events[-1]["unit"] == "bytes"
    assert events[-1]["done"] == sum(m["size"] for m in backup_job.events.filter(kind="backup.member")
                                     .values_list("data", flat=True))
    assert events[-1]["rows"] == 1234
    assert re.search(r"backup: [\d.]+k?B \[.*\], 1,234 rows", out.getvalue()), out.getvalue()

    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("restore", backup_job.result["backup"], name, stdout=out)
    restore_job = Job.objects.filter(queued_at__gt=before, kind="restore").get()
    assert exit_info.value.code == 0, restore_job.error
    restored = [e.data for e in JobEvent.objects.filter(job=restore_job, kind="progress").order_by("seq")]
    *_, sent = [d for d in restored if d["unit"] == "bytes"]
    assert sent["what"] == "restore" and sent["done"] == sent["total"] > 0
    assert "restore: 100%" in out.getvalue(), out.getvalue()
    [loaded] = [d for d in restored if d["unit"] == "rows"]  # the rows loaded: the 1,234 notes and no more
    assert loaded["what"] == "restore" and loaded["done"] == loaded["total"] == 1234
    assert re.search(r"restore: 100% 1234/1234 \[.* rows/s\]", out.getvalue()), out.getvalue()
    seconds = (restore_job.finished_at - restore_job.started_at).total_seconds()
    assert JobEvent.objects.filter(job=restore_job, kind="progress").count() <= seconds / 0.5 + 2  # rate-limited


# --- 10. a warm process: commands without the start-up ---------------------------------------------------

@pytest.fixture
def warm(live_db, tmp_path):
    """`manage.py warm` on this run's settings, and an environment whose commands it serves."""
    import signal

    from tests.workers import worker_env

    env = worker_env()  # this run's database, broker and var directory
    log = tmp_path / "warm.log"
    proc = subprocess.Popen([sys.executable, "manage.py", "warm"], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    sock = Path(os.environ["TOPPCLOUD_VAR_DIR"]) / "run" / "manage.sock"
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield env, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert not sock.exists()


def served(log):
    return [line for line in log.read_text().splitlines() if " runs manage.py" in line]


def test_it_runs_commands_from_the_warm_process_as_they_would_run(warm, tmp_path):
    env, log = warm
    name = f"warm{os.getpid() % 10000}"

    def manage(*argv, extra=None):
        return subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, env={**env, **(extra or {})},
                              capture_output=True, text=True, timeout=60)

    done = manage("app", "create", name, "--as", "carol")
    assert done.returncode == 0 and f"app {name} created" in done.stdout, done.stderr
    assert len(served(log)) == 1 and App.objects.filter(name=name).exists()
    warm_status, cold_status = manage("status", name, "--json"), manage("status", name, "--json",
                                                                       extra={"TOPPCLOUD_WARM": "off"})
    assert warm_status.stdout == cold_status.stdout != "" and warm_status.returncode == cold_status.returncode == 0
    assert len(served(log)) == 2  # the second one ran here, as asked
    missing = manage("status", "no-such-app")
    assert missing.returncode == 1 and "there is no app 'no-such-app'" in missing.stderr
    other = manage("status", name, extra={"TOPPCLOUD_LOG_KEY": "another-log-key-another-log-key-another-lo"})
    assert other.returncode == 0 and len(served(log)) == 3  # other settings: not the warm process's to run


def test_it_passes_ctrl_c_to_the_command(warm):
    import signal

    from jobs.engine import events

    env, log = warm
    job = events.new_job("noop", target="warm", params={}, actor_kind="system", actor="tests")  # never sent
    proc = subprocess.Popen([sys.executable, "manage.py", "jobs", "follow", str(job.pk)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not served(log):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "queued by system:tests" in out


def test_it_counts_the_rows_of_a_dump_however_it_is_cut():
    from nodeops.progress import CopyRows

    dump = (b"--\n-- toppcloud: rows, each table in primary-key order\n--\n"
            b"CREATE TABLE t (a text); -- COPY x FROM stdin; in a comment is no table\n"
            b"COPY public.notes (id, body) FROM stdin;\n1\tCOPY y FROM stdin;\n2\ta\\\\.\n3\t\\N\n\\.\n"
            b"COPY public.empty (id) FROM stdin;\n\\.\n"
            b"COPY public.more (id) FROM stdin;\n" + b"".join(b"%d\n" % i for i in range(100)) + b"\\.\n"
            b"SELECT pg_catalog.setval('notes_id_seq', 3, true);\n--\n")
    for size in (1, 2, 3, 5, 7, 64, len(dump)):
        rows = CopyRows()
        for start in range(0, len(dump), size):
            rows.feed(dump[start:start + size])
        assert rows.rows == 103, size
