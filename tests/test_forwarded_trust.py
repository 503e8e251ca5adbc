"""App nodes believe X-Forwarded-For / -Proto only from their group's load balancer node (nginx realip).

Real hosts, real nginx and gunicorn, real requests: the client socket is
bound to the lb node's loopback address to come "from the balancer", and to
other addresses to come from anyone else. The pathy fixture answers with
what the app got: REMOTE_ADDR, the scheme and the forwarded headers.
"""

import http.client
import io
import itertools
import json
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs import actions
from jobs.models import Job
from nodeops import frontdoor
from nodeops.layout import NodeLayout
from tests.helpers import wait_for_job, wait_until
from tests.hosts import port_free
from tests.test_deploy_flow import deploy
from toppcloud_site.records.models import Node, ServerGroup

pytestmark = [pytest.mark.hosts, pytest.mark.worker, pytest.mark.groups]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apps"
CLIENT = "203.0.113.7"  # TEST-NET-3: the browser behind the balancer
_names = itertools.count(1)


def ask(host, hostname, *, source, headers=()):
    """What the app says it got, asked from `source` (the client socket's own address)."""
    conn = http.client.HTTPConnection(host.address, host.http_port, timeout=5, source_address=(source, 0))
    try:
        conn.putrequest("GET", "/who", skip_host=True)
        conn.putheader("Host", hostname)
        for name, value in headers:  # a list: the same header may come twice
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body[:300])
        return json.loads(body)
    finally:
        conn.close()


def set_role(name, role, group=None):
    out = io.StringIO()
    args = ["node", "set", name, "--role", role] + (["--group", group] if group else [])
    call_command(*args, stdout=out)
    return out.getvalue()


def front_door_job(before):
    """The front_door job `node set` queued for the group's nodes, finished."""
    job = Job.objects.filter(queued_at__gt=before, kind="front_door").order_by("queued_at").last()
    assert job is not None, "node set queued no front_door job"
    job = wait_for_job(job.pk, timeout=60)
    assert job.status == "succeeded", job.error
    return job


@pytest.fixture(scope="module")
def served(test_hosts, ready_nodes, tmp_path_factory):
    """Host 1 an app node of a new group serving a pathy app; the nodes' groups and roles as they were after."""
    app_node, lb_node = ready_nodes
    was = {n.pk: (n.group_id, n.role) for n in ready_nodes}
    tag = f"{os.getpid() % 100000}x{next(_names)}"
    group = ServerGroup.objects.create(name=f"trust{tag}")
    name, hostname = f"trust{tag}", f"trust{tag}.test"
    app_dir = tmp_path_factory.mktemp("trust") / name
    shutil.copytree(FIXTURES / "pathy", app_dir)
    ini = (app_dir / "app.ini").read_text()
    (app_dir / "app.ini").write_text(ini.replace("app_name = pathy", f"app_name = {name}")
                                     .replace("default_location = pathy.test", f"default_location = {hostname}"))
    set_role(app_node.name, "app", group.name)
    code, job = deploy(app_dir, app_node)
    assert code == 0, job.error
    yield {"app": test_hosts[0], "lb": test_hosts[1], "app_node": app_node, "lb_node": lb_node,
           "name": name, "hostname": hostname, "group": group}
    for node in ready_nodes:
        Node.objects.filter(pk=node.pk).update(group_id=was[node.pk][0], role=was[node.pk][1])
    job = wait_for_job(call_front_door(app_node).pk, timeout=60)  # the app node trusts nobody again
    assert job.status == "succeeded", job.error


@pytest.fixture
def group_with_lb(served):
    """Host 2 the group's lb node (`node set --role lb`, which renders the app node's front door again)."""
    before = timezone.now()
    out = set_role(served["lb_node"].name, "lb", served["group"].name)
    assert f"node {served['lb_node'].name}: role lb in group {served['group'].name}" in out, out
    assert "forwarded-header trust changed: front_door job" in out, out
    yield {**served, "job": front_door_job(before)}
    if Node.objects.get(pk=served["lb_node"].pk).role == "lb":
        before = timezone.now()
        set_role(served["lb_node"].name, "app")
        front_door_job(before)


def call_front_door(node):
    return actions.front_door([Node.objects.get(pk=node.pk)], actor_kind="system", actor="tests")


def test_it_believes_forwarded_headers_from_the_lb_node_only(group_with_lb):
    g = group_with_lb
    app, lb, hostname = g["app"], g["lb"], g["hostname"]
    event = g["job"].events.get(kind="front_door")
    assert event.data["node"] == g["app_node"].name and event.data["trusted_proxies"] == [lb.address]
    live = (Path(NodeLayout(g["app_node"].root).nginx_sites) / frontdoor.SITE).read_text()
    assert f"set_real_ip_from {lb.address};\n" in live and "real_ip_header X-Forwarded-For;" in live

    # From the balancer: its X-Forwarded-For is the client, its X-Forwarded-Proto the scheme.
    seen = ask(app, hostname, source=lb.address,
               headers=[("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "https")])
    assert (seen["remote_addr"], seen["x_forwarded_for"], seen["x_real_ip"]) == (CLIENT, CLIENT, CLIENT)
    assert (seen["scheme"], seen["x_forwarded_proto"]) == ("https", "https")
    # A client that sent its own X-Forwarded-For through the balancer: the address the balancer added
    # (the last one) counts, whether in one header or in a second line (HAProxy's option forwardfor).
    forged = "198.51.100.9"
    for headers in ([("X-Forwarded-For", f"{forged}, {CLIENT}")],
                    [("X-Forwarded-For", forged), ("X-Forwarded-For", CLIENT)]):
        seen = ask(app, hostname, source=lb.address, headers=headers)
        assert (seen["remote_addr"], seen["x_forwarded_for"], seen["scheme"]) == (CLIENT, CLIENT, "http"), headers
    # The balancer's X-Forwarded-Proto is believed only when it is http or https.
    seen = ask(app, hostname, source=lb.address, headers=[("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "ftp")])
    assert (seen["scheme"], seen["x_forwarded_proto"]) == ("http", "http")

    # From anyone else the same headers are not believed: the app sees the connection's own address.
    hostile = [("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "https"), ("X-Real-IP", CLIENT),
               ("X-Forwarded-Ssl", "on"), ("X-Forwarded-Protocol", "ssl"), ("X-Forwarded-Host", "evil.test"),
               ("Forwarded", f"for={CLIENT};proto=https")]
    for source in ("127.0.0.1", app.address):
        seen = ask(app, hostname, source=source, headers=hostile)
        assert (seen["remote_addr"], seen["x_forwarded_for"], seen["x_real_ip"]) == (source, source, source)
        assert (seen["scheme"], seen["x_forwarded_proto"], seen["forwarded_others"]) == ("http", "http", {}), seen
    # gunicorn's access log has the believed client too (its REMOTE_ADDR).
    access = Path(NodeLayout(g["app_node"].root).app_logs(g["name"])) / "access.log"
    assert CLIENT in access.read_text()


def test_without_an_lb_node_nobody_is_believed(group_with_lb):
    g = group_with_lb
    app, lb, hostname = g["app"], g["lb"], g["hostname"]
    before = timezone.now()
    set_role(g["lb_node"].name, "app")
    event = front_door_job(before).events.get(kind="front_door", data__node=g["app_node"].name)
    assert event.data["trusted_proxies"] == [] and event.data["changed"] is True
    live = (Path(NodeLayout(g["app_node"].root).nginx_sites) / frontdoor.SITE).read_text()
    assert "set_real_ip_from" not in live
    seen = ask(app, hostname, source=lb.address, headers=[("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "https")])
    assert (seen["remote_addr"], seen["x_forwarded_for"], seen["scheme"]) == (lb.address, lb.address, "http")


def haproxy_cfg(lb, app, port, *, source):
    """A minimal HAProxy on the lb host's address in front of the app node, as the group's balancer does it:
    option forwardfor (appends the client's address) and its own X-Forwarded-Proto."""
    server = f"server app {app.address}:{app.http_port}" + (f" source {lb.address}" if source else "")
    return ("global\n    log stderr format raw local0 warning\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 5s\n    timeout server 5s\n"
            f"frontend front\n    bind {lb.address}:{port}\n    option forwardfor\n"
            "    http-request set-header X-Forwarded-Proto https\n    default_backend apps\n"
            f"backend apps\n    {server}\n")


@pytest.mark.parametrize("source", [True, False], ids=["from-its-address", "from-another-address"])
def test_through_a_real_haproxy_the_app_sees_the_client_haproxy_saw(group_with_lb, tmp_path, source):
    """HAProxy appends the address it saw to a forged X-Forwarded-For: that last one is what the app gets, as
    long as HAProxy connects from the lb node's address (`source`); from another one nothing it says is
    believed, and the app sees HAProxy's own connection (trust fails closed)."""
    g = group_with_lb
    app, lb = g["app"], g["lb"]
    port = next(p for p in range(18600, 18700) if port_free(lb.address, p))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_cfg(lb, app, port, source=source))
    check = subprocess.run(["/usr/sbin/haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (tmp_path / "haproxy.log").open("w")
    proc = subprocess.Popen(["/usr/sbin/haproxy", "-db", "-f", str(cfg)], stdout=log, stderr=log)
    try:
        wait_until(lambda: not port_free(lb.address, port) or proc.poll() is not None, timeout=10,
                   what="haproxy listening")
        assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()
        browser = "127.0.0.250"  # any address but the lb's
        via = types.SimpleNamespace(address=lb.address, http_port=port)  # the balancer's front
        seen = ask(via, g["hostname"], source=browser, headers=[("X-Forwarded-For", "198.51.100.9")])
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)
        log.close()
    if source:
        assert (seen["remote_addr"], seen["x_forwarded_for"], seen["scheme"]) == (browser, browser, "https"), seen
    else:
        assert (seen["remote_addr"], seen["x_forwarded_for"], seen["scheme"]) == ("127.0.0.1", "127.0.0.1", "http")
