"""Node jobs against real test hosts (sshd + nginx + supervisord on 127.0.0.x), through a real worker."""

import itertools
import json
import os
import urllib.request

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.models import Job
from nodeops.transport import transport_for
from tests.helpers import event_kinds
from toppcloud_site.records.models import Node

pytestmark = [pytest.mark.hosts, pytest.mark.worker]
_numbers = itertools.count(1)
SETUP_STEPS = ["facts", "packages", "layout", "config", "validate", "start", "app users", "verify"]


def run_command(*args):
    """Run a management command as a person would; return (exit code, newest job)."""
    before = timezone.now()  # job ids come in blocks per process: not in creation order
    with pytest.raises(SystemExit) as exit_info:
        call_command(*args)
    job = Job.objects.filter(queued_at__gt=before).order_by("queued_at").last()
    return exit_info.value.code, job


def served(host, path="/.toppcloud/health"):
    with urllib.request.urlopen(f"{host.url}{path}", timeout=5) as response:
        return response.status, response.read()


def steps(job):
    return [(e.data["step"], e.data["ok"]) for e in job.events.filter(kind="step.finished").order_by("seq")]


def test_it_sets_up_two_hosts_and_again_changes_nothing(worker, test_hosts, nodes, capsys):
    for host in test_hosts:  # whether or not an earlier test set them up, someone edited a file by hand
        conf = os.path.join(host.root, "run/nginx/nginx.conf")
        if os.path.exists(conf):
            with open(conf, "a") as f:
                f.write("# edited by hand\n")
    for host, node in zip(test_hosts, nodes):
        code, job = run_command("setup_node", node.name)
        assert code == 0, job.error
        assert steps(job) == [(s, True) for s in SETUP_STEPS + ["reconcile"]]
        assert job.result["changed"] is True and job.actor_kind == "user"
        assert served(host) == (200, b"ok\n")
        # The documented layout is on the host's disk, with toppcloud's own nginx and supervisord running.
        for path in ("apps", "logs", "backups", "run/nginx/nginx.conf", "run/supervisor/supervisord.conf"):
            assert os.path.exists(os.path.join(host.root, path)), path
        pid = int(open(os.path.join(host.root, "run/supervisor/supervisord.pid")).read())
        assert os.path.exists(f"/proc/{pid}")
        node.refresh_from_db()
        assert node.set_up_at is not None and node.facts["nproc"] >= 1

    out = capsys.readouterr().out
    assert "[8/8] verify ok" in out  # progress against the plan the job announced
    for host, node in zip(test_hosts, nodes):
        code, job = run_command("setup_node", node.name)
        assert code == 0, job.error
        assert job.result["changed"] is False
        assert "already as wanted" in job.summary
        changed = [e.data.get("changed") for e in job.events.filter(kind="step.finished")]
        assert True not in changed
        assert served(host) == (200, b"ok\n")


def test_it_refuses_a_host_whose_key_changed(worker, test_hosts, nodes):
    host, node = test_hosts[1], nodes[1]
    old_key = host.host_key
    host.rotate_host_key()  # the machine at that address is now another one
    # A rebuilt host drops old connections; close the worker's shared one too.
    transport_for(node.transport_spec(settings.TOPPCLOUD_SSH_KEY_FILE, settings.TOPPCLOUD_SSH_CONTROL_DIR)).close()
    code, job = run_command("ping_node", node.name)
    assert code == 1 and job.status == "failed"
    assert f"{host.address}:{host.ssh_port}" in job.error
    assert "does not match the key pinned" in job.error and f"manage.py node pin-key {node.name}" in job.error
    assert "traceback" not in job.events.get(kind="job.failed").data
    assert Node.objects.get(pk=node.pk).host_key == old_key  # nothing re-pinned behind the operator's back

    call_command("node", "pin-key", node.name)
    assert Node.objects.get(pk=node.pk).host_key == host.host_key
    code, job = run_command("ping_node", node.name)
    assert code == 0, job.error
    assert job.result["uptime_seconds"] > 0 and "load" in job.summary


@pytest.mark.parametrize("field, value, words", [
    ("address", "-oProxyCommand=touch /tmp/pwned", "address"),
    ("ssh_port", 70000, "ssh_port"),
    ("root", "/etc", "root"),
    ("root", "/srv/../etc/x", "root"),
    ("http_port", 0, "http_port"),
])
def test_it_refuses_a_bad_node_record_before_any_job(live_db, field, value, words):
    n = next(_numbers)
    node = Node.objects.create(name=f"bad-{n}-{os.getpid()}", address=f"127.0.9.{n}", root="/srv/toppcloud",
                               host_key="", transport="local")
    Node.objects.filter(pk=node.pk).update(**{field: value})  # as if edited in the database directly
    jobs_before = Job.objects.count()
    with pytest.raises(CommandError) as error:
        call_command("setup_node", node.name)
    assert f"node '{node.name}' is not valid, no job was started: {words}" in str(error.value)
    assert repr(value) in str(error.value) or str(value) in str(error.value)
    assert Job.objects.count() == jobs_before


@pytest.mark.parametrize("args, words", [
    (["--address", "127.0.0.9; rm -rf /"], "address"),
    (["--address", "127.0.0.9", "--ssh-port", "ssh"], "--ssh-port 'ssh' is not a port number"),
    (["--address", "127.0.0.9", "--root", "relative/path"], "root"),
    (["--address", "127.0.0.9", "--host-key", "ssh-ed25519 not-base64!"], "host_key"),
    (["--address", "127.0.0.9"], "host_key: an SSH node needs a pinned host key"),
])
def test_node_add_refuses_bad_input_with_the_field_named(live_db, args, words):
    name = f"add-{abs(hash(tuple(args))) % 100000}-{os.getpid()}"
    with pytest.raises(CommandError) as error:
        call_command("node", "add", name, *args)
    assert words in str(error.value)
    assert not Node.objects.filter(name=name).exists()


def test_jobs_commands_show_a_finished_job(worker, nodes, capsys):
    code, job = run_command("ping_node", nodes[0].name, "--json")
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["kind"] for line in lines[:-1]] == event_kinds(job)
    assert lines[-1] == {"job": job.pk, "status": "succeeded", "summary": job.summary, "error": ""}

    call_command("jobs", "show", str(job.pk), "--json")
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "succeeded" and [e["seq"] for e in shown["events"]] == list(range(1, job.last_seq + 1))
    call_command("jobs", "list", "--kind", "ping_node", "--limit", "1")
    assert f"{job.pk:>6} succeeded" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        call_command("jobs", "follow", str(job.pk))
    assert exit_info.value.code == 0
    assert "succeeded: node" in capsys.readouterr().out
