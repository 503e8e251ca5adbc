"""A real server group behind a real balancer, shared by the balancer tests: three test hosts (one lb node,
two app nodes) set up by real setup_node jobs, and the `balanced` fixture app deployed to both app nodes.

tests/conftest.py offers the fixture `lb_group`; it is made once a session, and its hosts are stopped
(HAProxy, nginx, supervisord by pid) at the end.
"""

import http.client
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from jobs import actions
from jobs.engine.context import node_transport
from jobs.management.commands.ssh_key import ensure_key
from jobs.models import Job
from nodeops.layout import NodeLayout
from tests.helpers import wait_for_job
from tests.hosts import start_hosts, stop_hosts
from tests.load import LoadThreads
from toppcloud_site.records.models import Node, ServerGroup

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apps"


@dataclass
class Group:
    group: ServerGroup
    lb: Node
    apps: list  # the two app nodes
    lb_host: object
    app_hosts: list
    app: str
    hostname: str
    base: str
    tmp: Path
    extra: dict = field(default_factory=dict)

    def transport(self):
        return node_transport(self.lb)

    @property
    def layout(self):
        return NodeLayout(self.lb.root)


def app_dir(tmp, name, hostname, version="1"):
    dest = Path(tmp) / f"{name}-{version}"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(FIXTURES / "balanced", dest)
    ini = (dest / "app.ini").read_text()
    (dest / "app.ini").write_text(ini.replace("app_name = balanced", f"app_name = {name}")
                                  .replace("default_location = balanced.test", f"default_location = {hostname}"))
    (dest / "VERSION").write_text(version + "\n")
    return dest


def deploy(directory, node):
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command("deploy", str(directory), "--node", node.name)
    job = Job.objects.filter(queued_at__gt=before, kind="deploy").order_by("queued_at").last()
    return exit_info.value.code, job


@pytest.fixture(scope="session")
def lb_group(live_db, worker):
    base = tempfile.mkdtemp(prefix="tc-lb-", dir="/tmp")
    os.chmod(base, 0o755)
    hosts = start_hosts(3, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    try:
        tag = os.getpid()
        group = ServerGroup.objects.create(name=f"lbg-{tag}")
        nodes = []
        for host, role in zip(hosts, ("lb", "app", "app")):
            node = Node(name=f"{role}{len(nodes)}-{tag}", group=group, role=role, address=host.address,
                        ssh_port=host.ssh_port, ssh_user=host.ssh_user, root=host.root, http_port=host.http_port,
                        https_port=host.https_port, host_key=host.host_key, pg_cluster=host.pg_cluster,
                        pg_port=host.pg_port)
            node.full_clean()
            node.save()
            nodes.append(node)
        lb, apps = nodes[0], nodes[1:]
        setups = {}
        for node in [*apps, lb]:  # the lb last: its setup renders what the app nodes serve
            job = wait_for_job(actions.setup_node(node, actor_kind="system", actor="tests").pk, timeout=180)
            assert job.status == "succeeded", job.error
            setups[node.name] = job
        name, hostname = f"bal{tag % 100000}", f"bal{tag % 100000}.test"
        tmp = Path(base) / "apps"
        deploys = []
        for node in apps:
            code, job = deploy(app_dir(tmp, name, hostname), node)
            assert code == 0, job.error
            deploys.append(job)
        g = Group(group=group, lb=Node.objects.get(pk=lb.pk), apps=[Node.objects.get(pk=n.pk) for n in apps],
                  lb_host=hosts[0], app_hosts=hosts[1:], app=name, hostname=hostname, base=base, tmp=tmp,
                  extra={"setups": setups, "deploys": deploys})
        yield g
    finally:
        stop_hosts(hosts)
        shutil.rmtree(base, ignore_errors=True)


def request(host, hostname, path="/", *, port=None, tls_context=None, timeout=10, headers=None):
    """(status, headers as a dict of lower-case names, body text) of a GET to a host (its http port)."""
    if tls_context is not None:  # SNI and the certificate check are for `hostname`, the connection to host
        conn = _HostnameHTTPS(hostname, host.address, port or host.https_port, timeout=timeout, context=tls_context)
    else:
        conn = http.client.HTTPConnection(host.address, port or host.http_port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": hostname, **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


class _HostnameHTTPS(http.client.HTTPSConnection):
    def __init__(self, hostname, *args, **kw):
        super().__init__(*args, **kw)
        self.sni = hostname

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.sni)


class Load(LoadThreads):
    """Steady GETs through the balancer from `threads` threads; counts each answer by node, and every failure."""

    def __init__(self, host, hostname, threads=8, path="/", expect="balanced version"):
        self.host, self.hostname, self.path, self.expect = host, hostname, path, expect
        self.ok, self.failures, self.by_node = 0, [], {}
        super().__init__([()] * threads)

    def _loop(self):
        deadline = time.monotonic() + 300
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                status, headers, body = request(self.host, self.hostname, self.path)
                failed = None if status == 200 and self.expect in body else f"{status} {body[:80]!r}"
            except OSError as exc:
                failed, headers = f"{type(exc).__name__}: {exc}", {}
            with self.lock:
                if failed:
                    self.failures.append((time.monotonic(), failed))
                else:
                    self.ok += 1
                    node = headers.get("x-toppcloud-node")
                    self.by_node[node] = self.by_node.get(node, 0) + 1
            time.sleep(0.005)



def states(g):
    from nodeops import balancer
    return {(r["backend"], r["server"]): r for r in balancer.server_states(g.transport(), g.layout)}


def headers_seen(g, path="/headers", **kw):
    status, headers, body = request(g.lb_host, g.hostname, path, **kw)
    assert status == 200, (status, body[:200])
    return json.loads(body), headers
