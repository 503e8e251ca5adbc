"""Interrupted deploys leave nothing behind: a real worker killed at each deploy step, then one more deploy.

At each step, a deploy whose pool process dies there, then a deploy whose
whole worker (its process group) dies there, then one more deploy of the
app. After it: one supervisor program and one gunicorn master of the app
on the node, `status` naming the release whose page nginx serves, no
unpack directory left on this machine; and each deploy's reconcile (a
node.reconciled event) names what the kill before it left running.
"""

import glob
import json
import os
import re
import signal
import subprocess
import time
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import transaction

from jobs.engine import dispatch, sweeper
from jobs.models import Job
from jobs.engine.states import TERMINAL
from tests.helpers import wait_for_job, wait_until
from tests.test_deploy_flow import app_copy, deploy, get

pytestmark = [pytest.mark.hosts, pytest.mark.worker]

# Every step of a deploy of hello (no data services, no CDN; one update_fetch command, so the health step
# after it asks the new release again), in order.
STEPS = ["reconcile", "services", "upload", "venv", "env", "start", "wait until it answers", "update_fetch",
         "health", "activate", "cron", "stop old release", "prune"]


class Chain:
    """One app on one node, deployed again and again: each case starts with a live release."""

    def __init__(self, host, node, name, tmp):
        self.host, self.node, self.name, self.tmp, self.version = host, node, name, tmp, 0

    def next_dir(self):
        self.version += 1
        app_dir = app_copy(self.tmp, "hello", name=self.name, version=str(self.version))
        # One sync worker: it boots and stops in a fraction of gthread's second, so the cases stay short.
        ini = (app_dir / "app.ini").read_text().replace("processes = 2", "processes = 1")
        ini = ini.replace("threads = 2", "threads = 1") + "update_fetch = script: python -c pass\n"
        (app_dir / "app.ini").write_text(ini)
        return app_dir


@pytest.fixture(scope="module")
def chain(worker, test_hosts, ready_nodes, tmp_path_factory):
    c = Chain(test_hosts[0], ready_nodes[0], f"rec{os.getpid() % 10000}", tmp_path_factory.mktemp("reconcile"))
    code, job = deploy(c.next_dir(), c.node)
    assert code == 0, job.error
    return c


def programs(host, name):
    """{program: state} of the app's programs in the node's supervisord."""
    r = subprocess.run(["supervisorctl", "-c", f"{host.root}/run/supervisor/supervisord.conf", "status"],
                       capture_output=True, text=True, timeout=30)
    return {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line.startswith(f"app-{name}-")}


def gunicorn_masters(name):
    """The app's gunicorn master processes on this machine (the test hosts' too): {pid: program name}."""
    mark = re.compile(rf"app-{name}-[a-z0-9-]+".encode())
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        m = mark.search(cmdline)
        if m and b"gunicorn" in cmdline and not mark.search(parent):  # a worker's parent is its master
            found[int(pid)] = m.group(0).decode()
    return found


def program_files(host, name):
    return {os.path.basename(p).split(".conf")[0]
            for p in glob.glob(f"{host.root}/run/supervisor/programs/app-{name}-*.conf*")}


def status_release(name):
    out = StringIO()
    call_command("status", name, "--json", stdout=out)
    live = json.loads(out.getvalue())["live"]
    assert len(live) == 1, live
    return live[0]["release"]


def served_release(host, name):
    status, page = get(host, f"{name}.test")
    assert status == 200, page
    return re.search(r"<p>release ([a-z0-9-]+)</p>", page).group(1)


def unpack_dirs(name):
    return glob.glob(os.path.join(settings.VAR_DIR, "unpack", f"toppcloud-{name}-*"))


def site_names(host, release):
    """True once the node's front door serves `release` (its static files are the live ones)."""
    try:
        return f"/{release}/static/" in Path(host.root, "run/nginx/sites/toppcloud.conf").read_text()
    except FileNotFoundError:
        return False


def kill_at(job, step, host, kill):
    """kill() once the job is at `step`: it started the step, or (start) its program is written, or
    (activate) nginx serves the release and its release.activated is not committed yet."""
    release, app = job.params["release"], job.params["app"]
    if step not in ("start", "activate"):
        return kill_in_step(job, step, kill)

    def there():
        current = Job.objects.get(pk=job.pk)
        assert current.status not in TERMINAL, f"job {job.pk} ended ({current.status}) before {step}"
        if step == "start":  # the new release's program is written: it runs whatever happens next
            return Path(host.root, f"run/supervisor/programs/app-{app}-{release}.conf").exists()
        return current.events.filter(kind="step.started", data__step=step).exists()
    wait_until(there, timeout=90, what=f"job {job.pk} to reach {step}")
    if step == "start":
        return kill()
    deadline = time.monotonic() + 30
    while not site_names(host, release):  # polled without the database: the push is on its way
        assert time.monotonic() < deadline, "the front door was never given the release"
        time.sleep(0.001)
    with transaction.atomic():
        # Holding the job's row, the worker's next event (the push's `command`, before release.activated)
        # waits: nginx reloads and serves the release while the records still say the old one is live.
        Job.objects.select_for_update().get(pk=job.pk)
        wait_until(lambda: served_release(host, app) == release, timeout=30, what="nginx to serve it")
        kill()


def kill_in_step(job, step, kill, timeout=90):
    """kill() once the job has started `step`, with the job's row locked here: the worker is then inside
    the step, however short the step is, unless the step wrote no event after its start.

    Every event the worker writes takes that row lock first, so while it is held here the worker cannot
    get past its next event; asked again at once after each look, the lock goes to the worker for about
    one event at a time (a polling look without the lock let a quick step, as health or prune are, end
    and the next begin before the kill).
    """
    deadline = time.monotonic() + timeout
    while True:
        with transaction.atomic():
            current = Job.objects.select_for_update().get(pk=job.pk)
            assert current.status not in TERMINAL, f"job {job.pk} ended ({current.status}) before {step}"
            # Inside the step, or (a step with nothing to do, events written in one transaction) just past
            # its start: as close to it as the worker's events can be seen.
            if current.events.filter(kind="step.started", data__step=step).exists():
                return kill()
        assert time.monotonic() < deadline, f"job {job.pk} did not reach {step} in {timeout}s"


def leftovers(host, name):
    """The app's programs (running or only written) other than the live release's."""
    return (set(programs(host, name)) | program_files(host, name)) - {f"app-{name}-{status_release(name)}"}


def killed_deploy(chain, step, how, worker):
    """A deploy of the next version whose worker dies at `step` (how: "pool process" or "whole worker")."""
    from jobs.steps.releases import pack_release

    release, _ = pack_release(chain.next_dir())
    job = dispatch.submit("deploy", target=f"app:{chain.name}", actor_kind="user", actor="tester",
                          params={"app": chain.name, "release": release.name, "node": chain.node.name})
    wait_until(lambda: job.events.filter(kind="job.started").exists(), what=f"job {job.pk} to start")
    if how == "whole worker":
        kill_at(job, step, chain.host, worker.kill_group)  # main process and pool children at once, no goodbye
        worker.start()
    else:  # the pool process running it dies (OOM killer, segfault)
        pid = job.events.get(kind="job.started").data["pid"]
        kill_at(job, step, chain.host, lambda: os.kill(pid, signal.SIGKILL))
    ended = wait_until(lambda: sweeper.sweep() and Job.objects.get(pk=job.pk).status in TERMINAL
                       and Job.objects.get(pk=job.pk), timeout=60, what=f"job {job.pk} to end")
    assert ended.status == "lost", (ended.status, ended.error)
    served, live = served_release(chain.host, chain.name), status_release(chain.name)
    if step == "activate":
        # Killed between nginx's reload and release.activated's commit: nginx serves what the
        # records do not call live, until a reconcile puts it right.
        assert served == release.name != live
    else:
        assert served == live
    return ended, release.name


def stopped_by(job):
    return {p["program"] for p in job.events.get(kind="node.reconciled").data["stopped"]}


def check_reconciled(job, step, name, left, victim):
    """What `job`'s reconcile stopped: of what the kill before it left, the release it was starting."""
    stopped = stopped_by(job)
    assert stopped <= left  # a stop the killed job was doing may have finished on the node meanwhile
    if step in ("start", "wait until it answers", "health", "update_fetch", "activate"):
        assert f"app-{name}-{victim}" in stopped  # started, never live: the stray
    # At cron (a step of milliseconds) the kill may land during the killed job's own "stop old release",
    # which can still finish on the node after it: what is left there is asserted after the next deploy.
    if step == "activate":
        assert job.events.get(kind="node.reconciled").data["front_door_changed"] is True


# One kill point of each kind runs in `make test`: before anything starts (upload), a stray being started
# (start), nginx ahead of the records (activate), the old release left running (cron). Every step runs in
# `make test-kills`, a step of its own in .ci/run (about 13 three-deploy cases).
QUICK = {"upload", "start", "activate", "cron"}


@pytest.mark.parametrize("step", [s if s in QUICK else pytest.param(s, marks=pytest.mark.kills) for s in STEPS])
def test_it_leaves_one_program_and_nginx_serving_what_status_says(chain, step, worker):
    host, node, name = chain.host, chain.node, chain.name
    _, first_victim = killed_deploy(chain, step, "pool process", worker)
    left = leftovers(host, name)
    second, second_victim = killed_deploy(chain, step, "whole worker", worker)
    if step != "reconcile":  # else its reconcile was cut off too (its event rolled back with the kill)
        check_reconciled(second, step, name, left, first_victim)
    if step == "activate":  # the periodic job, as beat starts it, puts nginx right too
        left = leftovers(host, name)
        periodic = wait_for_job(dispatch.submit("reconcile_node", target=f"node:{node.name}",
                                                params={"node": node.name}, actor_kind="schedule",
                                                actor="tests").pk, timeout=120)
        assert periodic.status == "succeeded", periodic.error
        check_reconciled(periodic, step, name, left, second_victim)
        assert served_release(host, name) == status_release(name)

    left = leftovers(host, name)
    code, again = deploy(chain.next_dir(), node)
    assert code == 0, again.error
    live = status_release(name)
    # Live once it answers; supervisord calls it RUNNING only after its startsecs (1 s) have passed.
    wait_until(lambda: programs(host, name) != {f"app-{name}-{live}": "STARTING"}, timeout=10,
               what="the live release's program past STARTING")
    assert programs(host, name) == {f"app-{name}-{live}": "RUNNING"}
    assert program_files(host, name) == {f"app-{name}-{live}"}
    assert sorted(gunicorn_masters(name).values()) == [f"app-{name}-{live}"]
    assert served_release(host, name) == live
    assert unpack_dirs(name) == []
    if step != "activate":
        check_reconciled(again, step, name, left, second_victim)


def test_it_queues_one_reconcile_job_per_set_up_node_every_interval(ready_nodes, monkeypatch, settings):
    from jobs.engine import events
    from jobs.tasks import reconcile_nodes

    entry = settings.CELERY_BEAT_SCHEDULE["toppcloud-reconcile-nodes"]
    assert entry == {"task": "jobs.reconcile_nodes", "schedule": settings.JOBS_RECONCILE_INTERVAL}
    assert settings.JOBS_RECONCILE_INTERVAL >= 60  # minutes apart, not seconds
    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: None)  # they stay queued: no worker runs them
    queued = reconcile_nodes()
    try:
        jobs = list(Job.objects.filter(pk__in=queued).order_by("target"))
        assert [j.target for j in jobs] == sorted(f"node:{n.name}" for n in ready_nodes)
        assert {(j.kind, j.actor_kind, j.actor) for j in jobs} == {
            ("reconcile_node", "schedule", "toppcloud-reconcile-nodes")}
        assert reconcile_nodes() == []  # one per node at a time: a node whose job is still queued gets none
    finally:
        for job_id in queued:
            events.record(job_id, "job.cancelled", "tests", reason="only its queueing was tested")
