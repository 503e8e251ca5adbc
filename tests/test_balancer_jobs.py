"""The balancer's jobs on a real group: setup_node of an lb node, deploys and rollbacks updating it, the command.

The group (one lb + two app nodes, the `balanced` app on both) is tests/balancer_group.py's, shared with
tests/test_balancer.py in one session.
"""

import io
import os

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs import actions
from jobs.models import Job
from nodeops import balancer
from tests.balancer_group import app_dir, deploy, request
from tests.helpers import wait_for_job
from toppcloud_site.records.models import ServerGroup

pytestmark = [pytest.mark.hosts, pytest.mark.worker, pytest.mark.groups]


def finished(job):
    return {e.data["step"]: e.data for e in job.events.filter(kind="step.finished")}


def test_setup_node_of_an_lb_node_runs_haproxy_under_its_supervisord_on_the_public_port(lb_group):
    g = lb_group
    job = g.extra["setups"][g.lb.name]
    steps = finished(job)
    for name in (*balancer.STEPS, "verify", f"balancer of {g.group.name}", "reconcile"):
        assert steps[name]["ok"] is True, (name, steps.get(name))
    assert steps["haproxy verify"]["url"] == f"http://{g.lb.address}:{g.lb.http_port}/.toppcloud/health"
    assert job.events.get(kind="balancer.setup").data["version"].startswith("HAProxy version 2.")
    assert g.lb.facts["balancer"]["haproxy"].startswith("HAProxy version 2.")
    # The lb node's own nginx keeps off the public port: it listens on a unix socket.
    nginx_conf = open(os.path.join(g.lb.root, "run/nginx/nginx.conf")).read()
    assert f"listen unix:{g.lb.root}/run/nginx/nginx.sock;" in nginx_conf and f":{g.lb.http_port}" not in nginx_conf
    paths = balancer.Paths(g.layout)
    master = int(open(paths.pid).read())
    cmdline = open(f"/proc/{master}/cmdline", "rb").read().split(b"\0")
    assert b"-W" in cmdline and paths.master_sock.encode() + b",mode,600" in cmdline
    supervisord = int(open(os.path.join(g.lb.root, "run/supervisor/supervisord.pid")).read())
    assert int(open(f"/proc/{master}/stat").read().rsplit(")", 1)[1].split()[1]) == supervisord
    assert os.stat(paths.sock).st_mode & 0o077 == 0  # the runtime API is root's alone

    # Again: nothing changes, nothing reloads.
    again = wait_for_job(actions.setup_node(g.lb, actor_kind="system", actor="tests").pk, timeout=120)
    assert again.status == "succeeded", again.error
    steps = finished(again)
    assert [steps[name]["changed"] for name in ("haproxy package", "haproxy config", "haproxy start")] == [False] * 3
    assert steps[f"balancer of {g.group.name}"]["changed"] is False
    assert int(open(paths.pid).read()) == master


def test_a_deploy_or_rollback_in_the_group_updates_the_balancer(lb_group):
    g = lb_group
    # The fixture's deploys: the first put the app's backend in the balancer, the second added its server.
    first, second = g.extra["deploys"]
    assert finished(first)["balancer"]["changed"] is True and finished(second)["balancer"]["changed"] is True
    shown = second.events.filter(kind="balancer").last().data
    assert [(loc["app"], loc["servers"]) for loc in shown["locations"]] == [(g.app, [n.name for n in g.apps])]

    # A second app on one app node only: its own backend with that one server.
    other, other_host = f"{g.app}b", f"{g.app}b.test"
    code, job = deploy(app_dir(g.tmp, other, other_host), g.apps[0])
    assert code == 0, job.error
    assert finished(job)["balancer"]["changed"] is True
    live = balancer.read_live(g.transport(), g.layout)
    block = live.split(f"backend {balancer.backend_name(other)}\n", 1)[1].split("\nbackend ", 1)[0]
    assert f"server {g.apps[0].name} {g.apps[0].address}:{g.apps[0].http_port} check" in block
    assert g.apps[1].name not in block
    assert f"uri /health ver HTTP/1.1 hdr Host {other_host}" in block
    answers = {request(g.lb_host, other_host)[1]["x-toppcloud-node"] for _ in range(6)}
    assert answers == {g.apps[0].name}

    # A new release on the same nodes: the balancer is as it was (no reload); a rollback likewise.
    code, job = deploy(app_dir(g.tmp, other, other_host, version="2"), g.apps[0])
    assert code == 0, job.error
    assert finished(job)["balancer"]["changed"] is False
    assert request(g.lb_host, other_host)[2].startswith("balanced version 2")
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command("rollback", other, "--node", g.apps[0].name)
    job = Job.objects.filter(kind="rollback", queued_at__gt=before).last()
    assert exit_info.value.code == 0, job.error
    assert finished(job)["balancer"]["changed"] is False
    assert request(g.lb_host, other_host)[2].startswith("balanced version 1")


def test_the_balancer_command_renders_and_shows_states(lb_group):
    g = lb_group
    out = io.StringIO()
    call_command("balancer", g.group.name, "--states", stdout=out)
    lines = out.getvalue().splitlines()
    mine = [line.split() for line in lines if line.startswith(balancer.backend_name(g.app) + " ")]
    assert sorted((row[1], row[2], row[3]) for row in mine) == sorted((n.name, "UP", "ready") for n in g.apps)
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command("balancer", g.group.name, stdout=io.StringIO())
    job = Job.objects.filter(kind="balancer", queued_at__gt=before).last()
    assert exit_info.value.code == 0 and job.target == f"group:{g.group.name}", job.error
    assert job.events.get(kind="balancer").data["changed"] is False
    with pytest.raises(CommandError, match="no server group named 'nogroup'"):
        call_command("balancer", "nogroup")
    alone = ServerGroup.objects.create(name=f"nolb-{os.getpid()}")
    with pytest.raises(CommandError, match=f"server group {alone.name} has no node with the role lb"):
        call_command("balancer", alone.name)
    assert not Job.objects.filter(kind="balancer", target=f"group:{alone.name}").exists()
