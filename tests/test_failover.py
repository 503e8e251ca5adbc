"""Failover on real test hosts: a crashed primary, `promote` of its replica, writes through the app.

Two hosts of this module's own (a failover leaves a fenced cluster behind, which the session's hosts
must not have): host1 runs the notes app and is the group's first primary, host2 its streaming replica
(`replica add`). The tests run in order, each on what the one before left:

1. promote of what is not a replica of the primary: refused, no job
2. host1 answers no ssh, promote host2 without the flag: the job fails, nothing changed
3. the same with --old-primary-is-down: host2 promoted, host1 recorded unfenced; the app (on host1)
   is repointed by `config apply` once host1 answers again
4. `replica add host1`: the unfenced old primary, still running as a primary, cloned back as a replica
5. asynchronous: writer threads post notes through the app, host2's PostgreSQL stopped with
   -m immediate (a crash), promote host1: stop-to-first-write and acknowledged rows missing
6. synchronous: `replica add host2` (the fenced one) with synchronous replication, then the same
   crash of host1 and promote of host2: no acknowledged row missing
7. a planned switchover (the primary healthy, asynchronous): `replica add host1`, promote it under
   writes; the fence's fast shutdown hands the standby all its WAL: no acknowledged row missing
"""

import contextlib
import glob
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs import actions
from jobs.management.commands.ssh_key import ensure_key
from jobs.models import Job
from tests.helpers import wait_for_job, wait_until
from tests.hosts import start_hosts, stop_hosts
from tests.test_deploy_flow import app_copy, deploy
from tests.load import LoadThreads
from nodeops import transport as node_transport
from toppcloud_site.records.models import App, Node, ServerGroup, Service

pytestmark = [pytest.mark.hosts, pytest.mark.worker, pytest.mark.groups]
FIGURES = {}  # what the tests measured, printed at the end of the module


# --- the hosts, the group, the app ---------------------------------------------------------

@pytest.fixture(scope="module")
def pair(worker, tmp_path_factory):
    """(hosts, group, app name): host1 primary + app, host2 a streaming replica of it."""
    base = tempfile.mkdtemp(prefix="tc-fo-", dir="/tmp")
    os.chmod(base, 0o755)
    # Ports of its own: the Node rows of other modules stay (live_db), and (address, http_port) is unique.
    hosts = start_hosts(2, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE), ssh_port=2422, http_port=8280)
    tag = os.getpid() % 100000
    try:
        for host in hosts:  # not the session hosts' cluster names (they are named host1, host2 too)
            host.pg_cluster = f"tc-{os.getpid()}-fo-{host.name}"
        group = ServerGroup.objects.create(name=f"fo{tag}")
        nodes = []
        for host in hosts:
            node = Node(name=f"fo{tag}-{host.name}", group=group, address=host.address, ssh_port=host.ssh_port,
                        ssh_user=host.ssh_user, root=host.root, http_port=host.http_port,
                        https_port=host.https_port, host_key=host.host_key, pg_cluster=host.pg_cluster,
                        pg_port=host.pg_port, role=Node.Role.DB if host.name == "host1" else Node.Role.DB_REPLICA)
            node.full_clean()
            node.save()
            nodes.append(node)
            if node.role == Node.Role.DB:  # the group's database node before a db-replica may join it
                group.database_node = node
                group.save()
        for node in nodes:
            job = wait_for_job(actions.setup_node(node, actor_kind="system", actor="tests").pk, timeout=120)
            assert job.status == "succeeded", job.error
        name = f"fonotes{tag}"
        App.objects.create(name=name, group=group)
        code, job = deploy(app_copy(tmp_path_factory.mktemp("fonotes"), "notes", name=name), nodes[0])
        assert code == 0, job.error
        add_replica(nodes[1], group)
        yield hosts, group, name
        print(f"\nfailover figures: {json.dumps(FIGURES, sort_keys=True)}")
    finally:
        stop_hosts(hosts)
        shutil.rmtree(base, ignore_errors=True)


def synchronous(group, on):
    """The group's synchronous_replication, and only it (the fixture's copy of the group is stale)."""
    ServerGroup.objects.filter(pk=group.pk).update(synchronous_replication=on)


def node_of(host, group):
    return Node.objects.get(group=group, address=host.address)


def add_replica(node, group):
    """`replica add NODE --group G` (h-replica's job), followed until it ends."""
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command("replica", "add", node.name, "--group", group.name)
    job = Job.objects.filter(queued_at__gt=before, kind="replica_add").order_by("queued_at").last()
    assert exit_info.value.code == 0, job.error
    return job


# --- on the hosts' clusters (this machine) ---------------------------------------------------

def pg_version(cluster):
    [conf] = glob.glob(f"/etc/postgresql/*/{cluster}/postgresql.conf")
    return conf.split("/")[3]


def psql(node, sql, db="postgres"):
    r = subprocess.run(["runuser", "-u", "postgres", "--", f"/usr/lib/postgresql/{pg_version(node.pg_cluster)}/bin/psql",
                        "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-p", str(node.pg_port), "-d", db, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def cluster_running(node):
    return subprocess.run(["pg_ctlcluster", pg_version(node.pg_cluster), node.pg_cluster, "status"],
                          capture_output=True).returncode == 0


def start_conf(node):
    with open(f"/etc/postgresql/{pg_version(node.pg_cluster)}/{node.pg_cluster}/start.conf") as f:
        return [w for w in f.read().splitlines() if w.strip() and not w.startswith("#")]


@contextlib.contextmanager
def pgbench_load(node, clients=4):
    """pgbench writing on the node's cluster beside the app's writes (WAL in flight at the stop); it ends
    with the stop, or is stopped here. Yields a dict given its tps once it has ended."""
    bindir = f"/usr/lib/postgresql/{pg_version(node.pg_cluster)}/bin"
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, f"{bindir}/pgbench", "-q", "-i", "-s", "1", "-p", str(node.pg_port), "postgres"],
                   check=True, capture_output=True, timeout=120)
    bench = subprocess.Popen([*as_postgres, f"{bindir}/pgbench", "-n", "-c", str(clients), "-T", "120", "-p",
                              str(node.pg_port), "postgres"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    found = {}
    try:
        yield found
    finally:
        if bench.poll() is None:
            bench.terminate()
        out = bench.communicate(timeout=30)[0].decode(errors="replace")
        m = re.search(r"tps = ([0-9.]+)", out)
        found["tps"] = float(m.group(1)) if m else None


def crash(node):
    """Stop the node's PostgreSQL as a crash would: no checkpoint, no goodbye to the standby."""
    subprocess.run(["pg_ctlcluster", pg_version(node.pg_cluster), node.pg_cluster, "stop", "-m", "immediate"],
                   check=True, capture_output=True, timeout=60)


# --- through the app --------------------------------------------------------------------------

def request(host, name, method, path, body=b""):
    conn = http.client.HTTPConnection(host.address, host.http_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": f"{name}.test"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def rows_served(host, name):
    status, body = request(host, name, "GET", "/notes")
    assert status == 200, body
    return {tuple(line.split("\t", 1)) for line in body.decode().splitlines()}


class Writers(LoadThreads):
    """Threads posting notes through the app, one at a time each; every acknowledged (id, body) is kept
    with when its request started and ended (time.monotonic)."""

    def __init__(self, host, name, threads=4):
        self.host, self.name = host, name
        self.acked, self.failed = [], 0
        super().__init__([(i,) for i in range(threads)])

    def _loop(self, i):
        n, deadline = 0, time.monotonic() + 240  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            n += 1
            body = f"w{i}-{n}"
            started = time.monotonic()
            try:
                status, answer = request(self.host, self.name, "POST", "/notes", body.encode())
            except OSError:
                status = None
            ended = time.monotonic()
            with self.lock:
                if status == 201:
                    self.acked.append((answer.decode().strip(), body, started, ended))
                else:
                    self.failed += 1
                    time.sleep(0.02)  # the database is away: do not spin

    def first_ack_started_after(self, moment):
        with self.lock:
            later = [ended for _id, _body, started, ended in self.acked if started > moment]
        return min(later) if later else None



def promote(node, *flags):
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command("promote", node.name, *flags)
    return exit_info.value.code, Job.objects.filter(queued_at__gt=before, kind="promote").order_by("queued_at").last()


# --- the tests ------------------------------------------------------------------------------------

def test_it_refuses_to_promote_what_is_not_a_replica_of_the_primary(pair):
    hosts, group, _name = pair
    primary, replica = node_of(hosts[0], group), node_of(hosts[1], group)
    with pytest.raises(CommandError, match="is the primary of group"):
        call_command("promote", primary.name)
    stray = Node.objects.create(name=f"stray{os.getpid() % 100000}", address="127.0.0.250", group=group,
                                role=Node.Role.DB_REPLICA, host_key=replica.host_key)
    try:
        with pytest.raises(CommandError, match=f"{stray.name} is not a streaming replica of {primary.name}"):
            call_command("promote", stray.name)
    finally:
        stray.delete()
    # An app outside the group with its database on the primary's cluster would lose it to the fence.
    outsider = App.objects.create(name=f"outsider{os.getpid() % 100000}")
    service = Service.objects.create(app=outsider, kind="postgresql", node=primary, settings={})
    try:
        with pytest.raises(CommandError, match=f"{outsider.name} keep their databases on {primary.name} but are "
                                               f"not in group {group.name}"):
            call_command("promote", replica.name)
    finally:
        service.delete()
        outsider.delete()
    assert not Job.objects.filter(kind="promote", target=f"group:{group.name}").exists()


def unreachable(host, node):
    """The host answers no ssh: its sshd stopped, and the worker's ssh master to it (which would outlive
    sshd's listener) closed, as for a host that died. Its PostgreSQL runs on."""
    host.stop_sshd()
    node_transport.transport_for(node.transport_spec(settings.TOPPCLOUD_SSH_KEY_FILE,
                                                     settings.TOPPCLOUD_SSH_CONTROL_DIR)).close()


def test_an_unfenceable_primary_fails_the_job_and_changes_nothing(pair):
    hosts, group, name = pair
    primary, replica = node_of(hosts[0], group), node_of(hosts[1], group)
    unreachable(hosts[0], primary)
    try:
        code, job = promote(replica)
    finally:
        hosts[0].start_sshd()
    assert code != 0 and job.status == "failed"
    assert f"the old primary {primary.name} does not answer" in job.error
    assert "nothing was changed" in job.error and "--old-primary-is-down" in job.error
    started = list(job.events.filter(kind="step.started").order_by("seq").values_list("data__step", flat=True))
    assert started == ["check", f"fence {primary.name}"]  # no promote, no records, no config apply
    assert not job.events.filter(kind__in=["fence.done", "promote.done", "records.swapped"]).exists()
    group.refresh_from_db()
    assert group.database_node_id == primary.pk
    assert Node.objects.get(pk=primary.pk).role == "db" and Node.objects.get(pk=replica.pk).role == "db-replica"
    assert Node.objects.get(pk=replica.pk).facts["replica_of"] == primary.name
    assert set(Service.objects.filter(app__name=name, kind="postgresql").values_list("node__name", flat=True)) \
        == {primary.name}
    assert cluster_running(primary) and start_conf(primary) == ["auto"]
    assert psql(replica, "SELECT pg_is_in_recovery()") == "t"
    assert request(hosts[0], name, "POST", "/notes", b"still on the primary")[0] == 201


def test_a_primary_said_to_be_down_is_passed_over_unfenced_and_the_apps_repointed_when_they_answer(pair):
    hosts, group, name = pair
    primary, replica = node_of(hosts[0], group), node_of(hosts[1], group)
    unreachable(hosts[0], primary)  # the app runs there too: its config apply cannot reach it either
    try:
        code, job = promote(replica, "--old-primary-is-down")
    finally:
        hosts[0].start_sshd()
    assert code != 0 and job.status == "failed"
    assert job.error.startswith(f"{replica.name} is the primary of {group.name} now (was {primary.name}")
    assert f"config not applied to {name} on {primary.name}" in job.error
    assert f"manage.py config apply --group {group.name}" in job.error
    skipped = job.events.get(kind="fence.skipped").data
    assert skipped["node"] == primary.name and "Connection refused" in skipped["reason"]
    assert job.events.get(kind="promote.done").data["was_in_recovery"] is True
    group.refresh_from_db()
    assert group.database_node_id == replica.pk
    old = Node.objects.get(pk=primary.pk)
    assert old.role == "db-replica" and old.facts["fenced"]["fenced"] is False
    # What the flag risks, and why it must be true: the old primary was never reached, so it runs on.
    assert cluster_running(old) and start_conf(old) == ["auto"]
    assert psql(replica, "SELECT pg_is_in_recovery()") == "f"
    # Once the app node answers again, config apply repoints it: writes land on the new primary.
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command("config", "apply", "--group", group.name)
    applied = Job.objects.filter(queued_at__gt=before, kind="apply_config").order_by("queued_at").last()
    assert exit_info.value.code == 0, applied.error
    services = json.loads(request(hosts[0], name, "GET", "/services")[1])
    assert (services["CONFIG_PG_HOST"], services["CONFIG_PG_PORT"]) == (replica.address, str(replica.pg_port))
    status, answer = request(hosts[0], name, "POST", "/notes", b"after a promote past a down primary")
    assert status == 201
    assert psql(replica, f"SELECT body FROM notes WHERE id = {int(answer)}", db=name) == \
        "after a promote past a down primary"


def failover_under_writes(pair, mode, crashed=True):
    """Crash the primary under writes (or not: a planned switchover), promote the replica; (seconds from
    the stop, or from the promote, to the first write after it, missing rows, job, old primary, new)."""
    hosts, group, name = pair
    primary = ServerGroup.objects.get(pk=group.pk).database_node  # the records now, not the fixture's copy
    replica = Node.objects.get(group=group, role=Node.Role.DB_REPLICA, facts__replica_of=primary.name)
    app_host = hosts[0]  # the app runs on host1 whichever node is the primary
    with Writers(app_host, name) as writers, pgbench_load(primary) as tps:
        wait_until(lambda: len(writers.acked) >= 40, timeout=30, what="writes through the app")
        stopped_at = time.monotonic()
        if crashed:
            crash(primary)
        stop_done = time.monotonic()
        code, job = promote(replica)
        assert code == 0, job.error
        promoted_at = time.monotonic()
        first = wait_until(lambda: writers.first_ack_started_after(stop_done if crashed else promoted_at),
                           timeout=30, what="a write through the app after the failover")
        time.sleep(0.5)  # a few more writes on the new primary
    seconds = first - stopped_at
    ends = sorted(ended for _i, _b, _s, ended in writers.acked)
    longest_gap = max(b - a for a, b in zip(ends, ends[1:]))  # the writes' outage, crashed or not
    acked_before = {(i, b) for i, b, _s, ended in writers.acked if ended < stopped_at}
    acked = {(i, b) for i, b, _s, _e in writers.acked}
    served = rows_served(app_host, name)
    missing = acked - served
    on_disk = {tuple(line.split("|", 1)) for line in psql(replica, "SELECT id, body FROM notes", db=name).splitlines()}
    assert served == on_disk  # the app reads the new primary, the one the test reads
    FIGURES[mode] = {"stop_to_first_write_s": round(seconds, 2), "longest_write_gap_s": round(longest_gap, 2),
                     "pgbench_tps_until_the_stop": tps.get("tps"),
                     "acked": len(acked),
                     "acked_before_stop": len(acked_before), "missing": len(missing),
                     "missing_acked_before_stop": len(acked_before - served), "failed_requests": writers.failed,
                     "promote_job_s": round((job.finished_at - job.started_at).total_seconds(), 2),
                     "queued_to_started_s": round((job.started_at - job.queued_at).total_seconds(), 2),
                     "steps_s": {e.data["step"].split(" ")[0]: e.data["seconds"]
                                 for e in job.events.filter(kind="step.finished").order_by("seq")}}
    print(f"\n{mode} failover: {FIGURES[mode]}")
    return seconds, missing, job, primary, replica, longest_gap


def check_swapped(job, group, name, primary, replica, app_host):
    app_node = Node.objects.get(group=group, address=app_host.address).name
    group.refresh_from_db()
    assert group.database_node_id == replica.pk
    new, old = Node.objects.get(pk=replica.pk), Node.objects.get(pk=primary.pk)
    assert new.role == "db" and "replica_of" not in new.facts and new.facts["promoted"]["from"] == primary.name
    assert old.role == "db-replica" and "replica_of" not in old.facts
    assert old.facts["fenced"] == {**old.facts["fenced"], "job": job.pk, "fenced": True, "primary": replica.name}
    service = Service.objects.get(app__name=name, kind="postgresql")
    assert (service.node_id, service.settings["port"], service.settings["cluster"]) == \
        (replica.pk, replica.pg_port, replica.pg_cluster)
    # The old primary is stopped and stays so; the new one is out of recovery.
    assert not cluster_running(old) and start_conf(old) == ["manual"]
    assert psql(new, "SELECT pg_is_in_recovery()") == "f"
    # The app was repointed by config apply (a graceful reload), not redeployed.
    services = json.loads(request(app_host, name, "GET", "/services")[1])
    assert (services["CONFIG_PG_HOST"], services["CONFIG_PG_PORT"]) == (replica.address, str(replica.pg_port))
    assert "CONFIG_PG_REPLICA_HOST" not in services  # no replica streams to the new primary yet
    steps = list(job.events.filter(kind="step.started").order_by("seq").values_list("data__step", flat=True))
    assert steps == ["check", f"fence {primary.name}", f"promote {replica.name}", "records",
                     "synchronous replication", f"apply {name} on {app_node}", f"health {name} on {app_node}"]
    finished = {e.data["step"]: e.data for e in job.events.filter(kind="step.finished")}
    assert all(f["ok"] and f["seconds"] >= 0 for f in finished.values())
    assert finished[f"fence {primary.name}"]["was_running"] is False  # it had crashed: the fence found it down
    assert job.events.get(kind="config.applied").data["node"] == app_node
    swapped = job.events.get(kind="records.swapped").data
    assert (swapped["database_node"], swapped["services_moved"], swapped["replicas_to_add_again"]) == \
        (replica.name, [name], [primary.name])
    assert not job.events.filter(kind__in=["release.activated", "release.started"]).exists()


def back_as_replica(pair, old):
    """`replica add OLD`: a fenced or unfenced old primary becomes a streaming replica of the new one,
    and the app reads from it again."""
    hosts, group, name = pair
    primary = ServerGroup.objects.get(pk=group.pk).database_node  # the records now, not the fixture's copy
    assert "fenced" in old.facts, "a failover left it"
    job = add_replica(old, group)
    assert job.status == "succeeded"
    old.refresh_from_db()
    assert old.role == "db-replica" and old.facts["replica_of"] == primary.name and "fenced" not in old.facts
    assert cluster_running(old) and start_conf(old) == ["auto"]
    assert psql(old, "SELECT pg_is_in_recovery()") == "t"
    assert psql(primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"
    status, answer = request(hosts[0], name, "POST", "/notes", b"written after the return")
    assert status == 201
    note_id = int(answer)
    assert wait_until(lambda: psql(old, f"SELECT body FROM notes WHERE id = {note_id}", db=name),
                      timeout=10, what="the row on the returned replica") == "written after the return"
    # The app reads from it again (replica add's config apply).
    services = json.loads(request(hosts[0], name, "GET", "/services")[1])
    assert (services["CONFIG_PG_REPLICA_HOST"], services["CONFIG_PG_REPLICA_PORT"]) == (old.address, str(old.pg_port))
    status, body = request(hosts[0], name, "GET", "/replica/notes")
    assert status == 200 and f"{note_id}\twritten after the return\n" in body.decode()
    return job


def test_it_brings_an_unfenced_old_primary_back_as_a_replica_of_the_new_one(pair):
    hosts, group, _name = pair
    old = Node.objects.get(group=group, role=Node.Role.DB_REPLICA)
    assert old.facts["fenced"]["fenced"] is False and cluster_running(old)  # it ran on as a primary
    job = back_as_replica(pair, old)
    clone = job.events.get(kind="step.finished", data__step="clone").data
    assert clone["cloned"] is True  # its own data directory was replaced by the new primary's


def test_it_fails_over_an_asynchronous_primary_within_seconds(pair):
    hosts, group, name = pair
    synchronous(group, False)
    seconds, missing, job, primary, replica, _gap = failover_under_writes(pair, "async")
    check_swapped(job, group, name, primary, replica, hosts[0])
    out = io.StringIO()
    call_command("replica", "list", "--group", group.name, stdout=out)
    assert (f"replica {primary.name} to be: the old primary, fenced by promote job {job.pk}" in out.getvalue()
            and f"makes it a replica of {replica.name}" in out.getvalue())
    assert seconds < 30, f"{seconds:.1f} s from the stop to the first write (target < 15 s)"
    # Asynchronous: rows the old primary acknowledged but had not sent may be lost; the count is a figure.


def test_it_fails_over_a_synchronous_primary_losing_no_acknowledged_row(pair):
    hosts, group, name = pair
    synchronous(group, True)
    replica = Node.objects.get(group=group, role=Node.Role.DB_REPLICA)
    assert replica.facts["fenced"]["fenced"] is True and start_conf(replica) == ["manual"]
    back_as_replica(pair, replica)  # the fenced one: cloned, start.conf auto; and now synchronous
    primary = ServerGroup.objects.get(pk=group.pk).database_node  # the records now, not the fixture's copy
    assert psql(primary, "SHOW synchronous_standby_names") != ""
    seconds, missing, job, primary, replica, _gap = failover_under_writes(pair, "sync")
    assert not missing, f"{len(missing)} acknowledged rows are missing: {sorted(missing)[:10]}"
    assert seconds < 30, f"{seconds:.1f} s from the stop to the first write (target < 15 s)"
    # The new primary has no standby yet: it must not wait for one (the writes above went through).
    assert job.events.get(kind="step.finished", data__step="synchronous replication").data["wanted"] is True
    assert psql(replica, "SHOW synchronous_standby_names") == ""


def test_a_planned_switchover_loses_no_row_even_asynchronous(pair):
    """The primary healthy: the fence's fast shutdown sends the standby all its WAL before it stops."""
    hosts, group, name = pair
    synchronous(group, False)
    old = Node.objects.get(group=group, role=Node.Role.DB_REPLICA)
    back_as_replica(pair, old)
    _seconds, missing, job, primary, replica, gap = failover_under_writes(pair, "switchover", crashed=False)
    assert not missing, f"{len(missing)} acknowledged rows are missing: {sorted(missing)[:10]}"
    fence = job.events.get(kind="fence.done").data
    assert (fence["node"], fence["was_running"], fence["stopped"]) == (primary.name, True, "fast")
    assert not cluster_running(primary) and start_conf(primary) == ["manual"]
    assert gap < 30, f"writes stopped for {gap:.1f} s"
