"""Deploy and rollback of real WSGI apps onto real test hosts, through a real worker, under load."""

import http.client
import os
import shutil
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.models import Job, LiveRelease
from toppcloud_site.records.models import Release
from tests.helpers import event_kinds
from tests.load import LoadThreads

pytestmark = [pytest.mark.hosts, pytest.mark.worker]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apps"


def app_copy(tmp_path, fixture, *, name, version="1", location=None):
    """A fixture app in a fresh directory, renamed so each test has its own app."""
    dest = tmp_path / f"{name}-{version}"
    shutil.copytree(FIXTURES / fixture, dest)
    ini = (dest / "app.ini").read_text()
    ini = ini.replace(f"app_name = {fixture}", f"app_name = {name}")
    ini = ini.replace(f"default_location = {fixture}.test", f"default_location = {location or name + '.test'}")
    (dest / "app.ini").write_text(ini)
    (dest / "VERSION").write_text(version + "\n")
    return dest


def deploy(app_dir, node):
    before = timezone.now()  # job ids come in blocks per process: not in creation order
    with pytest.raises(SystemExit) as exit_info:
        call_command("deploy", str(app_dir), "--node", node.name)
    return exit_info.value.code, Job.objects.filter(queued_at__gt=before, kind="deploy").order_by("queued_at").last()


def rollback(app, node):
    before = timezone.now()  # job ids come in blocks per process: not in creation order
    with pytest.raises(SystemExit) as exit_info:
        call_command("rollback", app, "--node", node.name)
    return exit_info.value.code, Job.objects.filter(queued_at__gt=before, kind="rollback").order_by("queued_at").last()


def get(host, hostname, path="/"):
    conn = http.client.HTTPConnection(host.address, host.http_port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": hostname})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class Load(LoadThreads):
    """Steady requests to each host while a deploy runs; counts every failure."""

    def __init__(self, hosts, hostname, threads_per_host=2, path="/", expect="hello version"):
        self.hosts, self.hostname, self.path, self.expect = hosts, hostname, path, expect
        self.ok = 0
        self.failures = []
        super().__init__([(h,) for h in hosts for _ in range(threads_per_host)])

    def _loop(self, host):
        deadline = time.monotonic() + 300  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                status, body = get(host, self.hostname, self.path)
                failed = None if status == 200 and self.expect in body else f"{status} {body[:80]!r}"
            except OSError as exc:
                failed = f"{type(exc).__name__}: {exc}"
            with self.lock:
                if failed:
                    self.failures.append(failed)
                else:
                    self.ok += 1
            time.sleep(0.01)



def test_it_deploys_redeploys_and_rolls_back_two_hosts_without_a_failed_request(worker, test_hosts, ready_nodes,
                                                                               tmp_path):
    nodes = ready_nodes
    name = f"hello{os.getpid() % 10000}"
    v1, v2 = (app_copy(tmp_path, "hello", name=name, version=v) for v in ("1", "2"))
    for host, node in zip(test_hosts, nodes):
        code, job = deploy(v1, node)
        assert code == 0, job.error
        status, page = get(host, f"{name}.test")
        assert status == 200 and "hello version 1" in page
        assert get(host, f"{name}.test", "/static/style.css")[0] == 200

    with Load(test_hosts, f"{name}.test") as load:
        for node in nodes:
            code, job = deploy(v2, node)
            assert code == 0, job.error
        time.sleep(0.5)
        for host in test_hosts:
            assert "hello version 2" in get(host, f"{name}.test")[1]
        for node in nodes:
            code, job = rollback(name, node)
            assert code == 0, job.error
        time.sleep(0.5)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50
    for host in test_hosts:
        assert "hello version 1" in get(host, f"{name}.test")[1]
    live = LiveRelease.objects.filter(app__name=name).select_related("release")
    assert {lr.release.version for lr in live} == {"1"} and live.count() == 2
    kinds = event_kinds(job)
    assert kinds.index("release.activated") < kinds.index("step.finished", kinds.index("release.activated"))


def test_a_failing_release_leaves_the_old_one_serving(worker, test_hosts, ready_nodes, tmp_path):
    host, node = test_hosts[0], ready_nodes[0]
    name = f"guard{os.getpid() % 10000}"
    assert deploy(app_copy(tmp_path, "hello", name=name, version="1"), node)[0] == 0

    broken = app_copy(tmp_path, "hello", name=name, version="2")
    shutil.copy(FIXTURES / "unhealthy" / "app.py", broken / "app.py")
    code, job = deploy(broken, node)
    assert code == 1 and job.status == "failed"
    assert "health check /health of" in job.error and "answered 500" in job.error and "still live" in job.error
    assert "release.activated" not in event_kinds(job)
    assert "hello version 1" in get(host, f"{name}.test")[1]

    badreq = app_copy(tmp_path, "hello", name=name, version="3")
    shutil.copy(FIXTURES / "badreq" / "requirements.txt", badreq / "requirements.txt")
    code, job = deploy(badreq, node)
    assert code == 1 and "requirements failed to install" in job.error
    assert "hello version 1" in get(host, f"{name}.test")[1]


def test_two_deploys_of_one_app_never_interleave(worker, test_hosts, ready_nodes, tmp_path):
    from jobs.engine import dispatch
    from jobs.steps.releases import pack_release

    node = ready_nodes[0]
    name = f"twice{os.getpid() % 10000}"
    first, _ = pack_release(app_copy(tmp_path, "hello", name=name, version="1"))
    second, _ = pack_release(app_copy(tmp_path, "hello", name=name, version="2"))
    jobs = [dispatch.submit("deploy", target=f"app:{name}", actor_kind="user", actor="tester",
                            params={"app": name, "release": r.name, "node": node.name}) for r in (first, second)]
    from tests.helpers import wait_for_job

    done = [wait_for_job(j.pk, timeout=180) for j in jobs]
    assert sorted(j.status for j in done) == ["failed", "succeeded"]
    refused = next(j for j in done if j.status == "failed")
    assert f"{name} is being changed by job" in refused.error and "this job did nothing" in refused.error
    assert "lock.taken" not in event_kinds(refused)


@pytest.mark.parametrize("edit, message", [
    (lambda ini: ini.replace("runner = app:application\n", ""),
     "app.ini: [production] has no runner (the WSGI callable, e.g. runner = app:application)"),
    (lambda ini: ini.replace("default_location = ", "default_location = exa mple.test/"),
     "app.ini line 4: default_location 'exa mple.test/"),
    (lambda ini: ini.replace("processes = 2", "processes = two"), "app.ini line 8: processes 'two' is not a whole number"),
    (lambda ini: ini.replace("app_name = bad", "app_name = ../bad"), "app.ini line 2: app_name '../bad"),
])
def test_bad_app_ini_is_refused_before_any_job_runs(live_db, nodes, tmp_path, edit, message):
    app_dir = app_copy(tmp_path, "hello", name=f"bad{os.getpid() % 10000}")
    (app_dir / "app.ini").write_text(edit((app_dir / "app.ini").read_text()))
    before = timezone.now()
    with pytest.raises(CommandError) as error:
        call_command("deploy", str(app_dir), "--node", nodes[0].name)
    assert str(error.value).startswith(f"nothing was deployed: {app_dir}/{message}"), str(error.value)
    [refused] = Job.objects.filter(queued_at__gt=before)  # the attempt, recorded; never sent (tests/test_cli.py)
    assert event_kinds(refused) == ["job.queued", "job.failed"]


def test_a_symlink_out_of_the_app_is_refused_before_any_job(live_db, nodes, tmp_path):
    app_dir = app_copy(tmp_path, "hello", name=f"link{os.getpid() % 10000}")
    os.symlink("/etc/passwd", app_dir / "passwd")
    before = timezone.now()
    with pytest.raises(CommandError) as error:
        call_command("deploy", str(app_dir), "--node", nodes[0].name)
    assert "nothing was deployed" in str(error.value) and "passwd" in str(error.value)
    [refused] = Job.objects.filter(queued_at__gt=before)  # the attempt, recorded; never sent (tests/test_cli.py)
    assert event_kinds(refused) == ["job.queued", "job.failed"]


def test_a_slow_starting_release_goes_live_without_a_failed_request(worker, test_hosts, ready_nodes, tmp_path):
    host, node = test_hosts[1], ready_nodes[1]
    name = f"slow{os.getpid() % 10000}"
    assert deploy(app_copy(tmp_path, "hello", name=name, version="1"), node)[0] == 0
    slow = app_copy(tmp_path, "hello", name=name, version="2")
    shutil.copy(FIXTURES / "slowstart" / "app.py", slow / "app.py")  # sleeps 3 s at import
    with Load([host], f"{name}.test") as load:
        code, job = deploy(slow, node)
        time.sleep(0.3)
    assert code == 0, job.error
    assert load.failures == [] and load.ok > 20
    assert "hello version 2" in get(host, f"{name}.test")[1]
    waited = job.events.get(kind="step.finished", data__step="wait until it answers").data["seconds"]
    assert waited >= 2.5  # it really was slow, and the old release served meanwhile


def test_a_group_deploy_runs_one_child_per_node_under_one_parent(worker, test_hosts, ready_nodes, tmp_path, capsys):
    from toppcloud_site.records.models import ServerGroup

    name = f"group{os.getpid() % 10000}"
    group = ServerGroup.objects.create(name=f"g{os.getpid()}")
    for node in ready_nodes:
        node.group = group
        node.save(update_fields=["group"])
    app_dir = app_copy(tmp_path, "hello", name=name, version="7")
    before = timezone.now()  # job ids come in blocks per process: not in creation order
    with pytest.raises(SystemExit) as exit_info:
        call_command("deploy", str(app_dir), "--group", group.name, "--max-parallel", "1")
    assert exit_info.value.code == 0
    parent = Job.objects.get(queued_at__gt=before, kind="deploy_many")
    children = list(Job.objects.filter(parent=parent).order_by("pk"))
    assert parent.status == "succeeded" and parent.summary == "2 of 2 child jobs succeeded"
    assert [c.status for c in children] == ["succeeded", "succeeded"]
    assert all(c.actor_kind == "parent" and c.actor == str(parent.pk) for c in children)
    assert children[1].started_at >= children[0].finished_at  # --max-parallel 1: one after the other
    assert event_kinds(parent) == ["job.queued", "job.started", "lock.taken", "job.waiting", "job.succeeded"]
    for host in test_hosts:
        assert "hello version 7" in get(host, f"{name}.test")[1]

    # The same directory again is the same release (stored once), already live: nothing to do.
    from jobs.steps.releases import pack_release
    assert pack_release(app_dir)[0].name == children[0].params["release"]

    call_command("status", name)
    out = capsys.readouterr().out
    for node in ready_nodes:
        assert f"{name}  {node.name}" in out and f"{name}.test/" in out and children[0].params["release"] in out


def test_update_fetch_runs_in_the_release_and_a_failure_keeps_the_old_one(worker, test_hosts, ready_nodes,
                                                                         tmp_path):
    host, node = test_hosts[0], ready_nodes[0]
    name = f"upd{os.getpid() % 10000}"
    good = app_copy(tmp_path, "hello", name=name, version="1")
    with open(good / "app.ini", "a") as f:
        f.write("update_fetch =\n    /health\n    script: python3 -c \"import os; open(os.environ['HOME'] + '/migrated', 'w').write(os.environ['TOPPCLOUD_RELEASE'])\"\n")
    code, job = deploy(good, node)
    assert code == 0, job.error
    release = job.params["release"]
    # Same env as web; run as the app's user, which may write its home but not its release.
    assert Path(host.root, "apps", name, "home", "migrated").read_text() == release

    bad = app_copy(tmp_path, "hello", name=name, version="2")
    with open(bad / "app.ini", "a") as f:
        f.write("update_fetch = script: python3 -c \"import sys; sys.exit('migration 0042 failed')\"\n")
    code, job = deploy(bad, node)
    assert code == 1 and "migration 0042 failed" in job.error
    assert "hello version 1" in get(host, f"{name}.test")[1]
    assert "release.activated" not in event_kinds(job)


def get_static(host, hostname, path):
    conn = http.client.HTTPConnection(host.address, host.http_port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": hostname})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_static_files_are_served_with_the_time_they_reached_the_node_and_stay_hard_links(worker, test_hosts,
                                                                                        ready_nodes, tmp_path):
    from email.utils import parsedate_to_datetime

    host, node = test_hosts[0], ready_nodes[0]
    name = f"mtime{os.getpid() % 10000}"
    started = time.time()
    code, job = deploy(app_copy(tmp_path, "hello", name=name, version="1"), node)
    assert code == 0, job.error
    first = job.params["release"]
    status, headers, body = get_static(host, f"{name}.test", f"/static/{first}/style.css")
    assert status == 200 and body == (FIXTURES / "hello" / "static" / "style.css").read_bytes()
    served = parsedate_to_datetime(headers["Last-Modified"]).timestamp()
    assert started - 2 <= served <= time.time() + 1, headers["Last-Modified"]  # not Thu, 01 Jan 1970

    code, job = deploy(app_copy(tmp_path, "hello", name=name, version="2"), node)
    assert code == 0, job.error
    second = job.params["release"]
    releases = Path(host.root, "apps", name, "releases")
    old, new = (releases / r / "static" / "style.css" for r in (first, second))
    assert os.stat(old).st_ino == os.stat(new).st_ino  # unchanged: still a hard link, its first time kept
    assert get_static(host, f"{name}.test", f"/static/{second}/style.css")[1]["Last-Modified"] == headers["Last-Modified"]
    assert os.stat(releases / second / "VERSION").st_mtime >= served  # changed: the time it arrived


def test_build_commands_write_the_static_files_that_are_served_and_published(worker, test_hosts, ready_nodes,
                                                                            tmp_path):
    from jobs.steps.releases import pack_release
    from toppcloud_site.records.models import App, ServerGroup

    host, node = test_hosts[0], ready_nodes[0]
    name = f"build{os.getpid() % 10000}"
    origin = tmp_path / "origin"
    group = ServerGroup(name=f"buildgroup{os.getpid() % 10000}", static_publish=str(origin),
                        static_publish_url=f"http://{name}.test/cdn/")
    group.full_clean()
    group.save()
    good = app_copy(tmp_path, "hello", name=name, version="1")
    with open(good / "app.ini", "a") as f:
        f.write("build =\n"
                "    python3 -c \"import os; open('static/built.css', 'w').write(os.environ['TOPPCLOUD_RELEASE'])\"\n"
                "    script: python3 -c \"print('compiled 2 assets')\"\n")
    release, _ = pack_release(good)
    App.objects.filter(name=name).update(group=group)
    code, job = deploy(good, node)
    assert code == 0, job.error
    steps = [e.data["step"] for e in job.events.filter(kind="step.started").order_by("seq")]
    assert steps.index("env") < steps.index("build") < steps.index("static publish") < steps.index("start")
    assert any("compiled 2 assets" in e.data["output"] for e in job.events.filter(kind="output"))
    assert [e.data["rc"] for e in job.events.filter(kind="build.finished")] == [0, 0]
    status, headers, body = get_static(host, f"{name}.test", f"/static/{release.name}/built.css")
    assert (status, body) == (200, release.name.encode())
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    built = Path(host.root, "apps", name, "releases", release.name, "static", "built.css")
    assert (built.stat().st_uid, oct(built.stat().st_mode & 0o777)) == (0, "0o644")  # the app cannot change it now
    assert (origin / name / release.name / "built.css").read_text() == release.name  # published as built
    assert (origin / name / release.name / "style.css").exists()
    App.objects.filter(name=name).update(group=None)

    bad = app_copy(tmp_path, "hello", name=name, version="2")
    with open(bad / "app.ini", "a") as f:
        f.write("build =\n"
                "    python3 -c \"open('static/style.css', 'w').write('overwritten')\"\n"
                "    python3 -c \"import sys; print('compiling'); sys.exit(3)\"\n")
    code, job = deploy(bad, node)
    assert code == 1 and job.status == "failed"
    assert "build 'python3 -c \"import sys; print(\\'compiling\\'); sys.exit(3)\"' exited 3" in job.error, job.error
    assert f"the release was not started; {release.name} is still live" in job.error
    assert "start" not in [e.data["step"] for e in job.events.filter(kind="step.started")]
    assert "hello version 1" in get(host, f"{name}.test")[1]
    # The build wrote its own copy: the live release's file, hard-linked before, is as it was.
    assert get_static(host, f"{name}.test", f"/static/{release.name}/style.css")[2] == (
        FIXTURES / "hello" / "static" / "style.css").read_bytes()


def with_python(app_dir, version):
    with open(app_dir / "app.ini", "a") as f:
        f.write(f"python = {version}\n")
    return app_dir


def test_python_in_app_ini_picks_the_interpreter_and_one_the_node_lacks_is_refused_before_anything_changes(
        worker, test_hosts, ready_nodes, tmp_path):
    from django.conf import settings

    host, node = test_hosts[0], ready_nodes[0]
    # tests/settings.py: this machine's two 3.12s, which /usr/bin lacks: pyenv's under /root, and one app users can run
    root_only, standalone = settings.TOPPCLOUD_PYTHON_DIRS
    name = f"py{os.getpid() % 10000}"
    apps = Path(host.root, "apps")

    # Asked for on a node that has none: refused before anything reaches it.
    fresh = f"nopy{os.getpid() % 10000}"
    code, job = deploy(with_python(app_copy(tmp_path, "hello", name=fresh), "3.99"), node)
    assert code == 1 and job.status == "failed"
    assert (f"app.ini asks for python = 3.99: no Python 3.99 on the node (it has: 3.11 (/usr/bin/python3.11), "
            f"3.12 ({standalone}/python3.12); not runnable by an app's user: {root_only}/python3.12), and no uv to "
            f"install it with; nothing was changed on {node.name}" == job.error), job.error
    assert [e.data["step"] for e in job.events.filter(kind="step.started")] == ["reconcile", "python"]
    assert not (apps / fresh).exists()

    code, job = deploy(with_python(app_copy(tmp_path, "hello", name=name, version="1"), "3.11"), node)
    assert code == 0, job.error
    found = job.events.get(kind="step.finished", data__step="python").data
    assert (found["python"], found["version"][:5]) == ("/usr/bin/python3.11", "3.11.")
    version, executable = get(host, f"{name}.test", "/python")[1].splitlines()[:2]
    assert version.startswith("3.11.") and executable.startswith(f"{apps}/{name}/venvs/")
    venv_311 = Path(executable).parent.parent

    code, job = deploy(with_python(app_copy(tmp_path, "hello", name=name, version="2"), "3.12"), node)
    assert code == 0, job.error
    found = job.events.get(kind="step.finished", data__step="python").data
    assert found["python"] == f"{standalone}/python3.12" and found["version"].startswith("3.12.")
    version, executable = get(host, f"{name}.test", "/python")[1].splitlines()[:2]
    assert version.startswith(found["version"]) and Path(executable).parent.parent != venv_311  # a venv of its own
    assert f"home = {standalone}\n" in (Path(executable).parent.parent / "pyvenv.cfg").read_text()

    code, job = deploy(with_python(app_copy(tmp_path, "hello", name=name, version="3"), "3.99"), node)
    assert code == 1 and "no Python 3.99 on the node" in job.error
    assert sorted(p.name for p in (apps / name / "releases").iterdir()) == sorted(
        r.name for r in Release.objects.filter(app__name=name, version__in=["1", "2"]))
    assert "hello version 2" in get(host, f"{name}.test")[1]
