"""PostgreSQL streaming replicas of a group's primary (`replica add`): two real test hosts of this
module's own (host A: the group's database node and its app node; host B: the replica), each
with its own PostgreSQL cluster, through a real worker. The session's two hosts are not touched:
their clusters stay what other modules expect."""

import glob
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time

import psycopg2
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.core.management import CommandError, call_command

from jobs import actions
from jobs.management.commands.ssh_key import ensure_key
from jobs.models import Job
from jobs.steps import data
from nodeops import services as node_services
from nodeops.hostside import node_data
from nodeops.transport import LocalTransport
from tests.helpers import event_kinds, wait_for_job, wait_until
from tests.hosts import start_hosts, stop_hosts
from tests.test_data_flow import add_note, notes, psql, request, run_command
from tests.test_deploy_flow import app_copy, deploy
from toppcloud_site.records import roles
from toppcloud_site.records.models import App, Backup, Node, ServerGroup, Service

pytestmark = [pytest.mark.hosts, pytest.mark.worker, pytest.mark.groups]
PID = os.getpid()


@pytest.fixture(scope="module")
def pair(live_db, worker):
    """Two hosts of this module, set up as nodes of one group: A the primary (and app node), B the replica-to-be."""
    base = tempfile.mkdtemp(prefix="tc-repl-", dir="/tmp")
    os.chmod(base, 0o755)
    # Ports of its own: the Node rows of other modules stay (live_db), and (address, http_port) is unique.
    hosts = start_hosts(2, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE), ssh_port=2522, http_port=8380)
    records = []
    try:
        for i, host in enumerate(hosts):
            host.pg_cluster = f"tc-{PID}-repl{i + 1}"  # the session's hosts have tc-PID-host1/2
            node = Node(name=f"repl{i + 1}-{PID}", address=host.address, ssh_port=host.ssh_port,
                        ssh_user=host.ssh_user, root=host.root, http_port=host.http_port, https_port=host.https_port,
                        host_key=host.host_key, pg_cluster=host.pg_cluster, pg_port=host.pg_port)
            node.full_clean()
            node.save()
            records.append(node)
        for node in records:
            job = wait_for_job(actions.setup_node(node, actor_kind="system", actor="tests").pk, timeout=120)
            assert job.status == "succeeded", job.error
        primary, replica = records
        # In the group as the role rules want it (records/roles.py): the primary its db node (and so its
        # database node) first, then the replica-to-be, an app node until replica add makes it db-replica.
        for node in records:
            node.refresh_from_db()  # what the setup jobs recorded (set_up_at, facts), not to be saved over
        group = ServerGroup.objects.create(name=f"repl{PID}")
        roles.assign(primary, role=Node.Role.DB, group=group)
        roles.assign(replica, group=group)
        group.refresh_from_db()
        assert group.database_node_id == primary.pk
        for node in records:
            node.refresh_from_db()
        yield hosts, primary, replica, group
    finally:
        stop_hosts(hosts)  # their clusters dropped, their app users deleted
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def notes_app(pair, tmp_path_factory):
    """The notes fixture of the group, live on host A, its database on A's cluster, with two notes."""
    hosts, primary, _replica, group = pair
    name = f"rnotes{PID % 100000}"
    App.objects.create(name=name, group=group)
    code, job = deploy(app_copy(tmp_path_factory.mktemp("rnotes"), "notes", name=name), primary)
    assert code == 0, job.error
    add_note(hosts[0], name, "before the replica")
    add_note(hosts[0], name, "also before")
    return name


def replica_add(node, group):
    code, job = run_command("replica", "add", node.name, "--group", group.name)
    return code, job


def replica_db(replica, app):
    """A connection to the app's database on the replica, as the app's role (what DATABASE_REPLICA_URL names)."""
    service = Service.objects.get(app__name=app, kind="postgresql")
    return psycopg2.connect(host=replica.address, port=replica.pg_port, dbname=app, user=app,
                            password=service.password, connect_timeout=5)


def conf_dir(node):
    [found] = glob.glob(f"/etc/postgresql/*/{node.pg_cluster}")
    return found


def test_it_refuses_bad_inputs_with_nothing_done(pair):
    _hosts, primary, replica, group = pair
    before = Job.objects.filter(kind="replica_add").count()
    stray = Node.objects.create(name=f"stray-{PID}", address="127.0.0.250", host_key="ssh-ed25519 AAAA", http_port=1)
    lonely = ServerGroup.objects.create(name=f"nodb{PID}")
    try:
        cases = [
            ((stray.name, group.name), f"node {stray.name} is not in group {group.name} (it is in no group)"),
            ((primary.name, group.name), f"node {primary.name} is the primary of group {group.name}"),
            (("no-such-node", group.name), "there is no node 'no-such-node'"),
            ((replica.name, "no-such-group"), "there is no server group 'no-such-group'"),
            ((replica.name, lonely.name), f"group {lonely.name} has no database node"),
        ]
        for (node, grp), message in cases:
            with pytest.raises(CommandError) as refused:
                call_command("replica", "add", node, "--group", grp)
            assert str(refused.value).startswith("no replica was added: ") and message in str(refused.value)
        # The admin's action says the same.
        admin = User.objects.create_superuser(f"repl-refused-{PID}", password=None)
        try:
            browser = Client()
            browser.force_login(admin)
            page = browser.post(reverse("admin:records_node_changelist"), {
                "action": "add_as_replica", "_selected_action": [stray.pk]}, follow=True).content.decode()
            assert f"No replica was added: node {stray.name} is in no group" in page
            page = browser.post(reverse("admin:records_servergroup_changelist"), {
                "action": "check_replicas", "_selected_action": [lonely.pk]}, follow=True).content.decode()
            assert f"No check was started: group {lonely.name} has no database node" in page
        finally:
            admin.delete()
        stray.group = group
        stray.save()
        with pytest.raises(CommandError, match=f"node {stray.name} is not set up yet"):
            call_command("replica", "add", stray.name, "--group", group.name)
    finally:
        stray.delete()
        lonely.delete()
    assert Job.objects.filter(kind="replica_add").count() == before  # nothing was queued
    replica.refresh_from_db()
    assert replica.role == Node.Role.APP and "replica_of" not in replica.facts


def test_it_refuses_a_backup_from_a_replica_there_is_not(pair, notes_app):
    with pytest.raises(CommandError, match="has no streaming replica"):
        call_command("backup", notes_app, "--from-replica")


def test_it_adds_a_streaming_replica_and_repoints_the_apps(pair, notes_app):
    hosts, primary, replica, group = pair
    started = time.monotonic()
    code, job = replica_add(replica, group)
    took = time.monotonic() - started
    assert code == 0, job.error
    slot = f"toppcloud_repl2_{PID}"
    steps = [e.data["step"] for e in job.events.filter(kind="step.started").order_by("seq")]
    assert steps[:5] == ["clusters", "primary", "clone", "streaming", "synchronous"]
    assert f"apply {notes_app} on {primary.name}" in steps and f"health {notes_app} on {primary.name}" in steps
    finished = {e.data["step"]: e.data for e in job.events.filter(kind="step.finished")}
    assert finished["clone"]["cloned"] is True and finished["primary"]["slot"] == slot
    assert f"created slot {slot}" in finished["primary"]["changed"]
    streaming = job.events.get(kind="replication.streaming").data
    assert streaming["slot"] == slot and isinstance(streaming["lag_bytes"], int)
    lag = job.events.filter(kind="replication.lag").last().data
    assert lag["node"] == replica.name and lag["state"] == "streaming" and lag["lag_bytes"] >= 0
    assert job.result["cloned"] is True and job.result["applied"] == {notes_app: [primary.name]}
    # The records: the node is the primary's replica.
    replica.refresh_from_db()
    assert replica.role == Node.Role.DB_REPLICA and replica.facts["replica_of"] == primary.name
    assert replica.facts["replication"]["state"] == "streaming"
    assert replica.facts["os"]  # setup's facts are kept beside
    # The hosts: the replica is in recovery, streaming through its slot; the primary sees it.
    assert psql(replica, "postgres", "SELECT pg_is_in_recovery()").strip() == "t"
    assert psql(replica, "postgres", "SELECT status || ' ' || slot_name FROM pg_stat_wal_receiver").strip() == \
        f"streaming {slot}"
    assert psql(primary, "postgres", "SELECT application_name || ' ' || state FROM pg_stat_replication").strip() == \
        f"{slot} streaming"
    assert psql(primary, "postgres", "SELECT slot_name || ' ' || active FROM pg_replication_slots").strip() == \
        f"{slot} true"
    hba = open(f"{conf_dir(primary)}/pg_hba.conf").read()
    assert "host    replication toppcloud_replication 127.0.0.0/8 scram-sha-256" in hba  # a loopback replica
    # The replication password: in the group's record (encrypted), the replica's passfile (0600), no event, no argv.
    group.refresh_from_db()
    password = group.replication_password
    assert len(password) >= 30
    passfile = f"{conf_dir(replica)}/toppcloud-replication.pgpass"
    assert os.stat(passfile).st_mode & 0o777 == 0o600 and open(passfile).read().endswith(f":{password}\n")
    assert password not in json.dumps(list(job.events.values_list("data", flat=True)))
    [data_dir] = glob.glob(f"/var/lib/postgresql/*/{replica.pg_cluster}")
    auto = open(f"{data_dir}/postgresql.auto.conf").read()
    assert f"application_name={slot}" in auto and "password" not in auto and "passfile=" in auto
    # The app runs with DATABASE_REPLICA_URL and CONFIG_PG_REPLICA_*, and reads through it.
    services = json.loads(request(hosts[0], f"{notes_app}.test", "GET", "/services")[1])
    assert services["CONFIG_PG_REPLICA_HOST"] == replica.address
    assert services["CONFIG_PG_REPLICA_PORT"] == str(replica.pg_port)
    assert services["CONFIG_PG_REPLICA_DBNAME"] == notes_app == services["CONFIG_PG_REPLICA_USER"]
    assert services["CONFIG_PG_REPLICA_PASSWORD set"] and services["DATABASE_REPLICA_URL set"]
    assert services["CONFIG_PG_HOST"] == primary.address  # DATABASE_URL stays the primary
    status, body = request(hosts[0], f"{notes_app}.test", "GET", "/replica/notes")
    assert status == 200 and body.decode().splitlines() == notes(hosts[0], notes_app)
    print(f"\nreplica add (clone of a fresh cluster + config apply): {took:.1f} s, "
          f"pg_basebackup {finished['clone'].get('basebackup_seconds')} s")


def test_a_row_written_through_the_app_is_on_the_replica_within_a_second(pair, notes_app):
    hosts, _primary, replica, _group = pair
    conn = replica_db(replica, notes_app)
    conn.autocommit = True
    seen = []
    try:
        with conn.cursor() as cur:
            for i in range(20):
                body = f"replicated {i} {time.time()}"
                add_note(hosts[0], notes_app, body)
                written = time.monotonic()
                while True:
                    cur.execute("SELECT count(*) FROM notes WHERE body = %s", (body,))
                    if cur.fetchone()[0] == 1:
                        seen.append(time.monotonic() - written)
                        break
                    assert time.monotonic() - written < 1, f"note {i} not on the replica after 1 s"
                    time.sleep(0.002)
            # A replica is read-only: the app's role cannot write there.
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("INSERT INTO notes (body) VALUES ('no')")
    finally:
        conn.close()
    seen.sort()
    print(f"\nvisible on the replica after the app's 201: p50 {statistics.median(seen) * 1000:.1f} ms, "
          f"max {seen[-1] * 1000:.1f} ms (20 writes)")
    assert seen[-1] < 1


def test_lag_shows_in_status_and_under_a_pgbench_load(pair, notes_app):
    _hosts, primary, replica, group = pair
    out = io.StringIO()
    call_command("status", notes_app, stdout=out)
    text = out.getvalue()
    assert f"database on {primary.name} (port {primary.pg_port}, read-write)" in text
    assert f"replica {replica.name} of {primary.name}: streaming" in text and "lag " in text and " bytes, " in text
    out = io.StringIO()
    call_command("status", notes_app, "--json", stdout=out)
    [row] = json.loads(out.getvalue())["replicas"]
    assert row["node"] == replica.name and row["state"] == "streaming" and isinstance(row["lag_bytes"], int)
    out = io.StringIO()
    call_command("replica", "list", "--group", group.name, stdout=out)
    assert f"replica {replica.name} of {primary.name}: streaming" in out.getvalue()
    # A check records it again, now.
    replica.refresh_from_db()
    checked_before = replica.facts["replication"]["checked_at"]
    code, job = run_command("replica", "check", "--group", group.name)
    assert code == 0, job.error
    assert job.events.get(kind="replication.lag").data["node"] == replica.name
    assert job.result["replicas"][replica.name]["state"] == "streaming"
    replica.refresh_from_db()
    assert replica.facts["replication"]["checked_at"] > checked_before
    # The node's admin page shows it too.
    admin = User.objects.create_superuser(f"repl-admin-{PID}", password=None)
    try:
        browser = Client()
        browser.force_login(admin)
        page = browser.get(reverse("admin:records_node_change", args=[replica.pk])).content.decode()
        assert f"replica {replica.name} of {primary.name}: streaming" in page
        page = browser.get(reverse("admin:records_node_change", args=[primary.pk])).content.decode()
        assert "not a replica" in page
    finally:
        admin.delete()

    # Lag under a write load on the primary: pgbench -c 4 -T 10, the primary's view sampled every 100 ms.
    version = conf_dir(primary).split("/")[3]
    bindir = f"/usr/lib/postgresql/{version}/bin"
    as_postgres = ["runuser", "-u", "postgres", "--"]
    psql(primary, "postgres", "CREATE DATABASE toppcloud_bench")
    try:
        subprocess.run([*as_postgres, f"{bindir}/pgbench", "-q", "-i", "-s", "2", "-p", str(primary.pg_port),
                        "toppcloud_bench"], check=True, capture_output=True, timeout=120)
        spec = {"version": version, "port": primary.pg_port, "cluster": primary.pg_cluster}
        bench = subprocess.Popen([*as_postgres, f"{bindir}/pgbench", "-c", "4", "-T", "10", "-p", str(primary.pg_port),
                                  "toppcloud_bench"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        local = LocalTransport()  # the test hosts' clusters are on this machine
        # One psql session as the superuser, asked every 50 ms what pg_stat_replication says (the query of
        # node_data's pg-replication; a node program per sample would take half a second each).
        sampler = subprocess.Popen([*as_postgres, f"{bindir}/psql", "-X", "-q", "-At", "-p", str(primary.pg_port),
                                    "-d", "postgres"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        samples = []
        try:
            while bench.poll() is None:
                sampler.stdin.write("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint || ' ' || "
                                    "coalesce(extract(epoch from replay_lag)::float, 0) FROM pg_stat_replication;\n")
                sampler.stdin.flush()
                lag_bytes, lag_seconds = sampler.stdout.readline().split()
                samples.append((int(lag_bytes), float(lag_seconds)))
                time.sleep(0.05)
        finally:
            sampler.stdin.close()
            sampler.wait(10)
        after = node_services.replication_status(local, lambda *a, **k: None, spec)["replicas"][0]
        output = bench.stdout.read().decode()
        assert bench.returncode == 0, output
        tps = next((line for line in output.splitlines() if line.startswith("tps")), "")
        # Caught up again once the load stops.
        wait_until(lambda: node_services.replication_status(local, lambda *a, **k: None, spec)
                   ["replicas"][0]["lag_bytes"] == 0, timeout=10, what="the replica to catch up")
    finally:
        psql(primary, "postgres", "DROP DATABASE IF EXISTS toppcloud_bench")
    lag_bytes = sorted(s[0] for s in samples)
    lag_s = sorted(s[1] or 0 for s in samples)
    p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    print(f"\nreplication lag under pgbench -c 4 -T 10 ({tps.strip()}), {len(samples)} samples: bytes p50 "
          f"{p(lag_bytes, 0.5)} p99 {p(lag_bytes, 0.99)} max {lag_bytes[-1]}; seconds p50 {p(lag_s, 0.5):.4f} "
          f"p99 {p(lag_s, 0.99):.4f} max {lag_s[-1]:.4f}")
    assert len(samples) >= 50 and p(lag_s, 0.99) < 1
    assert after["state"] == "streaming" and isinstance(after["lag_bytes"], int)


def test_a_backup_from_the_replica_has_the_rows_of_the_primary(pair, notes_app):
    _hosts, primary, replica, _group = pair
    code, job = run_command("backup", notes_app)
    assert code == 0, job.error
    from_primary = Backup.objects.get(name=job.result["backup"])
    code, job = run_command("backup", notes_app, "--from-replica")
    assert code == 0, job.error
    from_replica = Backup.objects.get(name=job.result["backup"])
    assert job.events.get(kind="backup.from_replica").data["node"] == replica.name
    [dump] = [e.data for e in job.events.filter(kind="command") if e.data["step"] == "dump-sql"]
    assert json.loads(dump["argv"][2])["port"] == replica.pg_port  # read on the replica's cluster
    finished = {e.data["step"]: e.data for e in job.events.filter(kind="step.finished")}
    assert finished["dump"]["database_from"] == replica.name

    def sql(backup):
        with tarfile.open(data.archive_path(backup)) as tar:
            lines = tar.extractfile("postgresql.sql").read().decode().splitlines(keepends=True)
        setval = re.compile(r"SELECT pg_catalog\.setval\('public\.notes_id_seq', (\d+), true\);\n")
        [value] = [int(m.group(1)) for m in map(setval.fullmatch, lines) if m]
        return "".join(line for line in lines if not setval.fullmatch(line)), value
    (replica_rows, replica_seq), (primary_rows, primary_seq) = sql(from_replica), sql(from_primary)
    assert replica_rows == primary_rows  # the same schema and rows, to the byte
    assert "replicated 19" in replica_rows
    # A sequence is WAL-logged up to 32 values ahead of its use, so a replica sees it further on:
    # restored, it hands out ids past every one the primary used; never one already taken.
    assert primary_seq <= replica_seq <= primary_seq + 32


def test_synchronous_replication_makes_a_commit_wait_for_the_replica(pair, notes_app):
    _hosts, primary, replica, group = pair
    slot = f"toppcloud_repl2_{PID}"
    ServerGroup.objects.filter(pk=group.pk).update(synchronous_replication=True)
    started = time.monotonic()
    code, job = replica_add(replica, group)
    again = time.monotonic() - started
    assert code == 0, job.error
    assert job.result["cloned"] is False  # it streamed already: checked, not cloned again
    sync = job.events.get(kind="replication.synchronous").data
    assert sync["names"] == [slot] and sync["synchronous_standby_names"] == f'FIRST 1 ("{slot}")'
    assert psql(primary, "postgres", "SHOW synchronous_standby_names").strip() == f'FIRST 1 ("{slot}")'
    wait_until(lambda: psql(primary, "postgres", "SELECT sync_state FROM pg_stat_replication").strip() == "sync",
               timeout=10, what="sync_state sync")
    psql(primary, "postgres", "CREATE TABLE toppcloud_sync_probe (i int)")
    version = conf_dir(replica).split("/")[3]
    try:
        t0 = time.monotonic()
        psql(primary, "postgres", "INSERT INTO toppcloud_sync_probe VALUES (1)")
        fast = time.monotonic() - t0
        # With the replica stopped, a commit waits for it (wait_event SyncRep) until it is back.
        subprocess.run(["pg_ctlcluster", version, replica.pg_cluster, "stop", "-m", "fast"], check=True, timeout=60)
        probe = subprocess.Popen(_psql_argv(primary, "INSERT INTO toppcloud_sync_probe VALUES (2)"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: psql(primary, "postgres", "SELECT count(*) FROM pg_stat_activity "
                                                         "WHERE wait_event = 'SyncRep'").strip() == "1",
                       timeout=10, what="the commit waiting for the replica")
            time.sleep(1)
            assert probe.poll() is None  # still waiting, its row not yet visible to anyone else
            assert psql(primary, "postgres", "SELECT count(*) FROM toppcloud_sync_probe").strip() == "1"
        finally:
            t0 = time.monotonic()
            subprocess.run(["pg_ctlcluster", version, replica.pg_cluster, "start"], check=True, timeout=60)
        assert probe.wait(30) == 0, probe.stderr.read()
        released = time.monotonic() - t0
        assert psql(primary, "postgres", "SELECT count(*) FROM toppcloud_sync_probe").strip() == "2"
    finally:
        wait_until(lambda: psql(primary, "postgres", "SELECT state FROM pg_stat_replication").strip() == "streaming",
                   timeout=30, what="the replica streaming again")
        psql(primary, "postgres", "DROP TABLE toppcloud_sync_probe")
    print(f"\nreplica add again (streaming already): {again:.1f} s; a commit with the replica in sync "
          f"{fast * 1000:.0f} ms; with it stopped the commit waited, and went through "
          f"{released:.1f} s after its start")
    # A check with the replica gone empties synchronous_standby_names (commits stop waiting); one with it
    # streaming again names it again.
    subprocess.run(["pg_ctlcluster", version, replica.pg_cluster, "stop", "-m", "fast"], check=True, timeout=60)
    try:
        code, job = run_command("replica", "check", "--group", group.name)
        assert code == 0, job.error
        assert "no replica streams" in job.events.get(kind="replication.sync_skipped").data["reason"]
        assert job.events.get(kind="replication.lag").data["state"] == "not connected"
        assert psql(primary, "postgres", "SHOW synchronous_standby_names").strip() == ""
        t0 = time.monotonic()
        psql(primary, "postgres", "CREATE TABLE toppcloud_sync_probe (i int); DROP TABLE toppcloud_sync_probe")
        assert time.monotonic() - t0 < 5  # did not wait
        replica.refresh_from_db()
        assert replica.facts["replication"]["state"] == "not connected"
        assert data.streaming_replica(App.objects.get(name=notes_app), primary) is None  # no replica URL for now
    finally:
        subprocess.run(["pg_ctlcluster", version, replica.pg_cluster, "start"], check=True, timeout=60)
    wait_until(lambda: psql(primary, "postgres", "SELECT state FROM pg_stat_replication").strip() == "streaming",
               timeout=30, what="the replica streaming again")
    code, job = run_command("replica", "check", "--group", group.name)
    assert code == 0, job.error
    assert job.result["synchronous"] == [slot]
    assert psql(primary, "postgres", "SHOW synchronous_standby_names").strip() == f'FIRST 1 ("{slot}")'
    # Off again: the primary no longer waits.
    ServerGroup.objects.filter(pk=group.pk).update(synchronous_replication=False)
    code, job = replica_add(replica, group)
    assert code == 0, job.error
    assert job.events.get(kind="replication.synchronous").data["synchronous_standby_names"] == ""
    assert psql(primary, "postgres", "SHOW synchronous_standby_names").strip() == ""


def _psql_argv(node, sql):
    version = conf_dir(node).split("/")[3]
    return ["runuser", "-u", "postgres", "--", f"/usr/lib/postgresql/{version}/bin/psql", "-X", "-q", "-At",
            "-p", str(node.pg_port), "-d", "postgres", "-c", sql]


def test_a_stopped_replica_catches_up_and_a_diverged_one_is_cloned_again(pair, notes_app):
    hosts, primary, replica, group = pair
    version = conf_dir(replica).split("/")[3]

    def on_replica(body):
        conn = replica_db(replica, notes_app)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM notes WHERE body = %s", (body,))
                return cur.fetchone()[0]
        finally:
            conn.close()

    # Stopped: its cluster is started again and catches up through its slot (the primary kept the WAL).
    subprocess.run(["pg_ctlcluster", version, replica.pg_cluster, "stop", "-m", "fast"], check=True, timeout=60)
    add_note(hosts[0], notes_app, "written while the replica was down")
    code, job = replica_add(replica, group)
    assert code == 0, job.error
    finished = {e.data["step"]: e.data for e in job.events.filter(kind="step.finished")}
    assert finished["clone"]["cloned"] is False
    started = [e.data for e in job.events.filter(kind="command") if e.data["step"] == "pg-ensure"]
    assert any('"started"' in e["stdout"] for e in started)
    assert on_replica("written while the replica was down") == 1
    # Diverged (promoted by hand, written to): no longer in recovery, so it is cloned again.
    psql(replica, "postgres", "SELECT pg_promote()")
    wait_until(lambda: psql(replica, "postgres", "SELECT pg_is_in_recovery()").strip() == "f", timeout=30,
               what="the replica promoted")
    psql(replica, "postgres", "CREATE TABLE toppcloud_diverged (i int)")
    add_note(hosts[0], notes_app, "written after it diverged")
    code, job = replica_add(replica, group)
    assert code == 0, job.error
    finished = {e.data["step"]: e.data for e in job.events.filter(kind="step.finished")}
    assert finished["clone"]["cloned"] is True and "stopped" in finished["clone"]["changed"]
    assert psql(replica, "postgres", "SELECT pg_is_in_recovery()").strip() == "t"
    assert psql(replica, "postgres", "SELECT count(*) FROM pg_tables WHERE tablename = 'toppcloud_diverged'").strip() \
        == "0"
    assert on_replica("written after it diverged") == 1
    assert "replication.lag" in event_kinds(job)


# --- the parts, without hosts ----------------------------------------------------------------

def test_it_names_a_replicas_slot_after_its_node_within_postgresqls_63_characters():
    assert node_services.slot_name("db-2") == "toppcloud_db_2"
    long = node_services.slot_name("d" + "-x" * 31)
    assert len(long) == 63 and long.startswith("toppcloud_d_x_x") and long != node_services.slot_name("d" + "-y" * 31)
    with pytest.raises(ValueError, match="node name 'Bad Name' is invalid"):
        node_services.slot_name("Bad Name")


def test_the_pg_hba_line_admits_a_replica_from_its_address_and_a_loopback_one_from_loopback():
    assert node_data._hba_address("10.0.0.7") == "10.0.0.7/32"
    assert node_data._hba_address("2001:db8::7") == "2001:db8::7/128"
    assert node_data._hba_address("127.0.0.3") == "127.0.0.0/8"  # the kernel's source for 127/8 is 127.0.0.1
    with pytest.raises(node_data.DataError, match="must be an IP address"):
        node_data._hba_address("db2.example.com")
    # The passfile escapes what libpq's format would split on.
    assert node_data._passfile_line("10.0.0.1", 5433, "r", "a:b\\c") == "10.0.0.1:5433:replication:r:a\\:b\\\\c\n"


def test_the_app_gets_a_read_only_url_beside_the_read_write_one():
    pg = {"dbname": "blog", "role": "blog", "port": 5433}
    env = node_services.service_env(pg=pg, host="10.0.0.1", password="p/w", replica=("10.0.0.2", 5434))
    assert env["DATABASE_URL"] == "postgres://blog:p%2Fw@10.0.0.1:5433/blog"
    assert env["DATABASE_REPLICA_URL"] == "postgres://blog:p%2Fw@10.0.0.2:5434/blog"
    assert (env["CONFIG_PG_REPLICA_HOST"], env["CONFIG_PG_REPLICA_PORT"], env["CONFIG_PG_REPLICA_DBNAME"],
            env["CONFIG_PG_REPLICA_USER"], env["CONFIG_PG_REPLICA_PASSWORD"]) == ("10.0.0.2", "5434", "blog", "blog", "p/w")
    assert "DATABASE_REPLICA_URL" not in node_services.service_env(pg=pg, host="10.0.0.1", password="p")
