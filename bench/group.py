#!/usr/bin/env python3
"""A server group on real test hosts: a balancer (HAProxy), 3 app nodes, a PostgreSQL primary and a replica.

Six test hosts (sshd + nginx/HAProxy + supervisord + a PostgreSQL cluster each, on 127.0.0.x), a real
worker, the jobs a person would run. Prints, each against a baseline measured in the same run:

- a rolling deploy of 3 app nodes through the balancer (--batch 1) vs 3 single-node deploys one after
  the other, and the requests that failed under 8 threads of GETs through the balancer meanwhile;
- requests/s through the balancer vs straight to one app node's front door (wrk, one backend in the
  balancer's rotation, so both sides have the same app processes behind them);
- how long a note written through the app takes to be readable on the replica, p50/p99, under a
  pgbench write load on the primary, and the replica's byte lag meanwhile;
- failover with synchronous replication: the primary's PostgreSQL stopped (as a crash), `promote` of the
  replica: seconds from the stop to the first write the app acknowledges, acknowledged rows missing after.

    python bench/group.py
"""

import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, configure, start_worker, stop_worker  # noqa: E402
from tests.load import LoadThreads  # noqa: E402

GROUP = "benchgrp"
THREADS = 8
WRK_SECONDS = 5


def app_dir(base, name, version, fixture="hello"):
    """A copy of fixtures/apps/<fixture> named `name`, serving `version`."""
    dest = Path(base) / f"{name}-{version}"
    shutil.copytree(ROOT / "fixtures" / "apps" / fixture, dest)
    ini = (dest / "app.ini").read_text()
    ini = ini.replace(f"app_name = {fixture}", f"app_name = {name}")
    (dest / "app.ini").write_text(ini.replace(f"default_location = {fixture}.test", f"default_location = {name}.test"))
    (dest / "VERSION").write_text(f"{version}\n")
    return dest


def request(address, port, host, method="GET", path="/", body=None):
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


class Load(LoadThreads):
    """THREADS threads of GETs until stopped; every failure (not a 200, or no answer) counted."""

    def __init__(self, address, port, host):
        self.target = (address, port, host)
        self.ok = self.failed = 0
        super().__init__([()] * THREADS)

    def _loop(self):
        while not self.stop.is_set():
            try:
                good = request(*self.target)[0] == 200
            except OSError:
                good = False
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1



def timed_command(*args):
    """Seconds a management command took; the run ends if it fails."""
    from django.core.management import call_command

    start = time.perf_counter()
    try:
        call_command(*args, stdout=open(os.devnull, "w"))
    except SystemExit as exc:
        if exc.code:
            sys.exit(f"manage.py {' '.join(map(str, args))} failed")
    return time.perf_counter() - start


def wrk(address, port, host):
    """Requests/s wrk measures for / of `host` at address:port."""
    r = subprocess.run(["wrk", "-t2", "-c16", f"-d{WRK_SECONDS}s", "-H", f"Host: {host}", f"http://{address}:{port}/"],
                       capture_output=True, text=True, check=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    if not match or errors:
        sys.exit(f"wrk: {r.stdout}")
    return float(match.group(1))


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ready_nodes(hosts, roles):
    """Node records for the hosts (in the group, with these roles), each set up by a real setup_node job."""
    from jobs import actions
    from tests.helpers import wait_for_job
    from toppcloud_site.records.models import Node, ServerGroup

    group = ServerGroup.objects.create(name=GROUP)
    nodes = {}
    for host, (name, role) in zip(hosts, roles):
        node = Node(name=name, group=group, role=role, address=host.address, ssh_port=host.ssh_port,
                    root=host.root, http_port=host.http_port, https_port=host.https_port, host_key=host.host_key,
                    pg_cluster=host.pg_cluster, pg_port=host.pg_port)
        node.save()
        nodes[name] = node
        if role == Node.Role.DB:
            group.database_node = node
            group.save()
    jobs = [actions.setup_node(node, actor_kind="system", actor="bench") for node in nodes.values()]
    for job in jobs:
        job = wait_for_job(job.pk, 300)
        if job.status != "succeeded":
            sys.exit(f"setup of {job.target} failed: {job.error}")
    return group, nodes


def lb_transport(lb):
    from django.conf import settings

    from nodeops.layout import NodeLayout
    from nodeops.transport import transport_for

    spec = lb.transport_spec(identity_file=settings.TOPPCLOUD_SSH_KEY_FILE,
                             control_dir=settings.TOPPCLOUD_SSH_CONTROL_DIR)
    return transport_for(spec), NodeLayout(lb.root)


def rolling_vs_single(apps, nodes, lb):
    """(rolling seconds, 3 single deploys seconds, failed requests, requests) for app `roll`."""
    timed_command("deploy", str(app_dir(apps, "roll", 1)), "--group", GROUP)  # venvs everywhere first
    with Load(lb.address, lb.http_port, "roll.test") as load:
        rolling = timed_command("deploy", str(app_dir(apps, "roll", 2)), "--group", GROUP, "--batch", "1")
        single = sum(timed_command("deploy", str(app_dir(apps, "roll", 3 + i)), "--node", name)
                     for i, name in enumerate(("app1", "app2", "app3")))
    return rolling, single, load.failed, load.ok + load.failed


def balancer_vs_direct(nodes, lb):
    """(requests/s through the balancer with app1 alone in rotation, straight to app1's front door)."""
    from nodeops import balancer

    t, layout = lb_transport(lb)
    backend = balancer.backend_name("roll")
    for name in ("app2", "app3"):
        balancer.set_server_state(t, lambda *a, **k: None, layout, backend, name, "maint")
    try:
        wrk(lb.address, lb.http_port, "roll.test")  # warm both paths
        through = wrk(lb.address, lb.http_port, "roll.test")
        direct = wrk(nodes["app1"].address, nodes["app1"].http_port, "roll.test")
    finally:
        for name in ("app2", "app3"):
            balancer.set_server_state(t, lambda *a, **k: None, layout, backend, name, "ready")
    return through, direct


def pg_version():
    """The PostgreSQL major version of the notes app's database (its Service record)."""
    from toppcloud_site.records.models import Service

    service = Service.objects.filter(app__name="notes", kind=Service.Kind.POSTGRESQL, node__name="db1").first()
    return service.settings["version"]


def pgbench(db1, seconds):
    """pgbench's TPC-B-like writes on the primary's cluster, as postgres over its socket (the load, not toppcloud)."""
    base = ["runuser", "-u", "postgres", "--", "env", "PGHOST=/var/run/postgresql", f"PGPORT={db1.pg_port}"]
    subprocess.run(base + ["psql", "-qc", "CREATE DATABASE bench_pgbench"], capture_output=True)
    subprocess.run(base + ["pgbench", "-q", "-i", "-s", "2", "bench_pgbench"], capture_output=True, check=True)
    return subprocess.Popen(base + ["pgbench", "-c", "4", "-T", str(seconds), "bench_pgbench"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def replication_lag(nodes, lb, seconds=10):
    """(visible-on-replica seconds [..], lag bytes [..]) for notes written through the app during pgbench."""
    from django.conf import settings

    from nodeops import services
    from nodeops.transport import transport_for

    db1 = nodes["db1"]
    t = transport_for(db1.transport_spec(identity_file=settings.TOPPCLOUD_SSH_KEY_FILE,
                                         control_dir=settings.TOPPCLOUD_SSH_CONTROL_DIR))
    spec = {"cluster": db1.pg_cluster, "port": db1.pg_port, "version": pg_version()}
    load = pgbench(db1, seconds)
    visible, lag_bytes = [], []
    deadline = time.monotonic() + seconds - 1
    try:
        while time.monotonic() < deadline:
            status, body = request(lb.address, lb.http_port, "notes.test", "POST", "/notes", body=b"lag")
            if status != 201:
                sys.exit(f"a note was not written: {status} {body}")
            note, start = body.strip(), time.perf_counter()
            while True:
                status, rows = request(lb.address, lb.http_port, "notes.test", "GET", "/replica/notes")
                if status == 200 and any(line.split("\t", 1)[0] == note for line in rows.splitlines()):
                    break
                if time.perf_counter() - start > 10:
                    sys.exit(f"note {note} not on the replica after 10 s")
            visible.append(time.perf_counter() - start)
            lag_bytes += [r["lag_bytes"] for r in services.replication_status(t, lambda *a, **k: None, spec)["replicas"]]
    finally:
        load.wait()
    return visible, lag_bytes


def failover(nodes, lb):
    """(seconds from the primary's stop to the first acknowledged write, acknowledged notes missing after)."""
    from jobs import actions
    from tests.helpers import wait_for_job
    from toppcloud_site.records.models import Node

    acked, first_after = [], []
    stopped = threading.Event()
    done = threading.Event()

    def writer():
        while not done.is_set():
            try:
                status, body = request(lb.address, lb.http_port, "notes.test", "POST", "/notes", body=b"fo")
            except OSError:
                status = 0
            if status == 201:
                acked.append(body.strip())
                if stopped.is_set() and not first_after:
                    first_after.append(time.perf_counter())
            time.sleep(0.02)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(2)
    db1 = nodes["db1"]
    version = pg_version()
    start = time.perf_counter()
    subprocess.run(["pg_ctlcluster", version, db1.pg_cluster, "stop", "-m", "immediate"], check=True,
                   capture_output=True)
    stopped.set()
    replica = Node.objects.get(pk=nodes["db2"].pk)  # as replica add left it
    job = wait_for_job(actions.promote(replica, actor_kind="system", actor="bench").pk, 120)
    if job.status != "succeeded":
        sys.exit(f"promote failed: {job.error}")
    deadline = time.monotonic() + 60
    while not first_after and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    thread.join(timeout=15)
    if not first_after:
        sys.exit("no write acknowledged within 60 s of the promote")
    status, rows = request(lb.address, lb.http_port, "notes.test", "GET", "/notes")
    have = {line.split("\t", 1)[0] for line in rows.splitlines()}
    return first_after[0] - start, sum(1 for note in acked if note not in have)


def main():
    configure("toppcloud-bench-group")
    from django.conf import settings

    from jobs import actions
    from jobs.management.commands.ssh_key import ensure_key
    from tests.helpers import wait_for_job
    from tests.hosts import start_hosts, stop_hosts
    from toppcloud_site.records.models import Node, ServerGroup

    roles = [("lb", Node.Role.LB), ("app1", Node.Role.APP), ("app2", Node.Role.APP), ("app3", Node.Role.APP),
             ("db1", Node.Role.DB), ("db2", Node.Role.DB_REPLICA)]
    base = tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp")
    os.chmod(base, 0o755)
    hosts = start_hosts(len(roles), base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    worker = start_worker(Path(base) / "worker.log", "jobs,nodeops,cron", concurrency=len(roles))
    try:
        group, nodes = ready_nodes(hosts, roles)
        lb = nodes["lb"]
        apps = tempfile.mkdtemp(prefix="apps-", dir=base)
        rolling, single, failed, requests = rolling_vs_single(apps, nodes, lb)
        through, direct = balancer_vs_direct(nodes, lb)

        ServerGroup.objects.filter(pk=group.pk).update(synchronous_replication=True)
        timed_command("deploy", str(app_dir(apps, "notes", 1, fixture="notes")), "--group", GROUP)
        job = wait_for_job(actions.replica_add("db2", GROUP, actor_kind="system", actor="bench").pk, 300)
        if job.status != "succeeded":
            sys.exit(f"replica add failed: {job.error}")
        visible, lag_bytes = replication_lag(nodes, lb)
        failover_s, missing = failover(nodes, lb)
    finally:
        stop_worker(worker)
        stop_hosts(hosts)
        shutil.rmtree(base, ignore_errors=True)

    ratio, share = rolling / single, through / direct
    print(f"\na server group on {len(roles)} test hosts on this machine (2 cores shared), worker -c {len(roles)}\n")
    print(f"{'metric':<60}{'measured':>12}   target")
    print(f"{'rolling deploy, 3 app nodes through the balancer (s)':<60}{rolling:>12.2f}")
    print(f"{'3 single-node deploys one after the other (s)':<60}{single:>12.2f}")
    print(f"{'  rolling / single':<60}{ratio:>12.2f}")
    print(f"{f'failed requests of {requests} during the deploys ({THREADS} threads)':<60}{failed:>12}   0")
    print(f"{'requests/s through the balancer (1 backend in rotation)':<60}{through:>12.0f}")
    print(f"{'requests/s straight to that node':<60}{direct:>12.0f}")
    print(f"{'  balancer / direct':<60}{share:>12.2f}   >= 0.80")
    print(f"{f'note readable on the replica, p50 of {len(visible)} (ms)':<60}{statistics.median(visible) * 1000:>12.1f}")
    print(f"{'note readable on the replica, p99 (ms)':<60}{percentile(visible, 99) * 1000:>12.1f}   < 1000")
    print(f"{'replica lag under pgbench -c 4, p50 (bytes)':<60}{statistics.median(lag_bytes):>12.0f}")
    print(f"{'replica lag under pgbench -c 4, p99 (bytes)':<60}{percentile(lag_bytes, 99):>12.0f}")
    print(f"{'failover: primary stopped -> first acknowledged write (s)':<60}{failover_s:>12.2f}   < 15")
    print(f"{'acknowledged writes missing after (synchronous)':<60}{missing:>12}   0")
    ok = failed == 0 and share >= 0.8 and percentile(visible, 99) < 1 and failover_s < 15 and missing == 0
    print("\nresult:", "targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
