"""App data are read and loaded as the app's own PostgreSQL role, never as the superuser: an archive's
SQL and an app's own functions run with the app's rights only (issue 13, point 1). A real app with a
real cluster on a test host, through a real worker."""

import glob
import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from jobs.steps import data
from nodeops.hostside import node_data
from tests.test_data_flow import add_note, all_rows, backup_now, members, notes, psql, run_command
from tests.test_deploy_flow import app_copy, deploy
from toppcloud_site.records.models import Service

pytestmark = [pytest.mark.hosts, pytest.mark.worker]


@pytest.fixture(scope="module")
def app(tmp_path_factory, ready_nodes, test_hosts):
    """The notes fixture deployed on the first test host as an app of this module, with a note."""
    name = f"roles{os.getpid() % 100000}"
    code, job = deploy(app_copy(tmp_path_factory.mktemp("roles"), "notes", name=name), ready_nodes[0])
    assert code == 0, job.error
    add_note(test_hosts[0], name, "a note before the attacks")
    return name


@pytest.fixture
def marker(request):
    """A path the attack's program would write (as postgres, so under /tmp), and a role it would make."""
    path = f"/tmp/tc-pwned-{os.getpid()}-{request.node.name[:40]}"
    role = f"evil{os.getpid()}"
    yield path, role
    if os.path.exists(path):
        os.unlink(path)


def drop_role(node, role):
    psql(node, "postgres", f'DROP ROLE IF EXISTS "{role}"')


def as_app(node, name, sql, db=None):
    """SQL on the app's own connection: its role and password, over TCP as the app connects."""
    password = Service.objects.get(app__name=name, kind="postgresql").password
    return as_role(node, name, password, sql, db=db or name, host=node.address)


def as_role(node, role, password, sql, *, db, host="/var/run/postgresql"):
    [conf] = glob.glob(f"/etc/postgresql/*/{node.pg_cluster}")
    return subprocess.run([f"/usr/lib/postgresql/{conf.split('/')[3]}/bin/psql", "-X", "-q", "-At", "-w",
                           "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(node.pg_port), "-U", role, "-d", db,
                           "-c", sql], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PGPASSWORD=password))


def roles(node, role):
    return psql(node, "postgres", f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'").strip()


def with_sql_before(tmp_path, source, sql):
    """A copy of a real backup whose postgresql.sql begins with `sql`, its manifest sums fixed up."""
    parts = members(data.archive_path(source))
    parts["postgresql.sql"] = sql.encode() + parts["postgresql.sql"]
    manifest = json.loads(parts["manifest.json"])
    manifest["files"]["postgresql.sql"] = {"sha256": hashlib.sha256(parts["postgresql.sql"]).hexdigest(),
                                           "size": len(parts["postgresql.sql"])}
    parts["manifest.json"] = json.dumps(manifest).encode()
    path = tmp_path / "crafted.tar"
    with tarfile.open(path, "w") as t:
        for member, content in parts.items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return path


def test_it_refuses_an_archive_that_resets_its_role_and_runs_a_program(app, ready_nodes, tmp_path, marker):
    node, (path, evil) = ready_nodes[0], marker
    source, _ = backup_now(app)
    rows = all_rows(node, app)
    crafted = with_sql_before(tmp_path, source, f"RESET ROLE;\nCOPY (SELECT current_user) TO PROGRAM 'cat > {path}';\n"
                                                f"CREATE ROLE {evil} LOGIN SUPERUSER PASSWORD 'x';\n")
    try:
        code, job = run_command("restore", str(crafted), app)
        assert code == 1
        assert not os.path.exists(path), "the archive ran a program on the node"
        assert roles(node, evil) == "0", "the archive made a role"
    finally:
        drop_role(node, evil)
    assert "postgresql.sql did not load (as the app's role" in job.error
    assert "pg_execute_server_program" in job.error  # PostgreSQL's own words: only a superuser may run programs
    assert all_rows(node, app) == rows
    assert not job.events.filter(kind="restore.swapped").exists()
    assert psql(node, "postgres", f"SELECT count(*) FROM pg_database WHERE datname LIKE '{app}\\_\\_%'").strip() == "0"


def test_an_apps_check_constraint_that_tries_a_program_runs_as_the_app_in_backup_and_restore(
        app, ready_nodes, test_hosts, marker):
    node, (path, evil) = ready_nodes[0], marker
    # What an app can do on its own connection: a function that escapes SET ROLE if it can (and
    # keeps quiet if not, so the app works), called by a CHECK on every row a restore loads.
    made = as_app(node, app, f"""
        CREATE FUNCTION public.looks_fine(v text) RETURNS boolean LANGUAGE plpgsql AS $f$
        BEGIN
          BEGIN
            RESET ROLE;
            EXECUTE 'COPY (SELECT current_user) TO PROGRAM ''cat > {path}''';
            EXECUTE 'CREATE ROLE {evil} LOGIN SUPERUSER PASSWORD ''x''';
          EXCEPTION WHEN OTHERS THEN NULL;  -- quiet whatever stops it, so the app works
          END;
          RETURN true;
        END $f$;
        CREATE TABLE guarded (id serial PRIMARY KEY, v text CHECK (public.looks_fine(v)));
        INSERT INTO guarded (v) VALUES ('one'), ('two');""")
    assert made.returncode == 0, made.stderr
    assert not os.path.exists(path)  # as the app, the function can do nothing
    before, guarded = all_rows(node, app), psql(node, app, "SELECT * FROM guarded ORDER BY id")
    try:
        source, backup_job = backup_now(app)
        code, job = run_command("restore", source.name, app)
        assert code == 0, job.error
        assert not os.path.exists(path), "the app's function ran a program on the node"
        assert roles(node, evil) == "0", "the app's function made a role"
    finally:
        drop_role(node, evil)
    # The CHECK ran on every row, as the app: the data are back as they were.
    assert all_rows(node, app) == before and psql(node, app, "SELECT * FROM guarded ORDER BY id") == guarded
    assert notes(test_hosts[0], app)[-1].endswith("a note before the attacks")
    assert psql(node, app, "SELECT tableowner FROM pg_tables WHERE tablename = 'guarded'").strip() == app
    as_app(node, app, "DROP TABLE guarded; DROP FUNCTION public.looks_fine(text)")


def test_a_backup_runs_no_shadowing_function_of_the_app_as_the_superuser(app, ready_nodes, marker):
    node, (path, evil) = ready_nodes[0], marker
    # The app owns its database's public schema: a quote_ident(name) there is a closer match than
    # pg_catalog's quote_ident(text) for any session that calls it on a column name, as the dump's
    # catalog query does.
    made = as_app(node, app, f"""
        CREATE FUNCTION public.quote_ident(v name) RETURNS text LANGUAGE plpgsql AS $f$
        BEGIN
          BEGIN
            EXECUTE 'COPY (SELECT current_user) TO PROGRAM ''cat > {path}''';
            EXECUTE 'CREATE ROLE {evil} LOGIN SUPERUSER PASSWORD ''x''';
          EXCEPTION WHEN OTHERS THEN NULL;  -- quiet whatever stops it, so the app works
          END;
          RETURN pg_catalog.quote_ident(v::text);
        END $f$;""")
    assert made.returncode == 0, made.stderr
    try:
        backup, _ = backup_now(app)
        assert not os.path.exists(path), "the backup ran the app's function as the superuser"
        assert roles(node, evil) == "0", "the backup ran the app's function as the superuser"
    finally:
        drop_role(node, evil)
        as_app(node, app, "DROP FUNCTION public.quote_ident(name)")
    assert "a note before the attacks" in members(data.archive_path(backup))["postgresql.sql"].decode()


def test_only_the_apps_role_may_enter_its_staging_database(app, ready_nodes):
    node = ready_nodes[0]
    pg = node_data._Pg({"version": glob.glob(f"/etc/postgresql/*/{node.pg_cluster}")[0].split("/")[3],
                        "port": node.pg_port})
    staging, other = app + node_data.STAGING, f"other{os.getpid()}"
    password = Service.objects.get(app__name=app, kind="postgresql").password
    psql(node, "postgres", f"CREATE ROLE {other} LOGIN PASSWORD 'other-password'")  # another app's role
    try:
        assert node_data._fresh_db(pg, staging, app) is None  # as a restore makes it
        assert as_role(node, app, password, "SELECT current_user", db=staging).stdout.strip() == app
        assert psql(node, "postgres", f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{staging}'"
                    ).strip() == app
        for db in (staging, app, "postgres"):
            refused = as_role(node, other, "other-password", "SELECT 1", db=db)
            assert refused.returncode != 0 and "no pg_hba.conf entry" in refused.stderr, (db, refused.stderr)
        # Over TCP, as apps connect, only the app's own database.
        assert as_role(node, app, password, "SELECT 1", db=app, host=node.address).returncode == 0
        assert "no pg_hba.conf entry" in as_role(node, app, password, "SELECT 1", db=staging,
                                                 host=node.address).stderr
    finally:
        node_data._drop_db(pg, staging)
        drop_role(node, other)


OLD_HBA = ("local   all        postgres                peer\n"
           "host    sameuser   all        0.0.0.0/0    scram-sha-256\n"
           "host    sameuser   all        ::/0         scram-sha-256\n")


def old_hba(node):
    """The node's pg_hba as toppcloud wrote it before app roles loaded their own data."""
    [conf] = glob.glob(f"/etc/postgresql/*/{node.pg_cluster}")
    with open(f"{conf}/pg_hba.conf", "w") as f:
        f.write(OLD_HBA)
    subprocess.run(["pg_ctlcluster", conf.split("/")[3], node.pg_cluster, "reload"], check=True)
    return f"{conf}/pg_hba.conf"


def brought_over(job):
    ensured = [e.data for e in job.events.filter(kind="command").order_by("seq") if e.data["step"] == "pg-ensure"]
    return bool(ensured) and "pg_hba.conf" in json.loads(ensured[0]["stdout"].strip().splitlines()[-1])["changed"]


def test_a_node_with_an_older_pg_hba_is_brought_over_by_the_next_backup_and_restore(app, ready_nodes, test_hosts):
    node = ready_nodes[0]
    rows = all_rows(node, app)
    hba = old_hba(node)
    source, backup_job = backup_now(app)
    assert brought_over(backup_job) and "local   samerole   all" in open(hba).read()
    old_hba(node)
    code, job = run_command("restore", source.name, app, "--no-checkpoint")
    assert code == 0, job.error
    assert brought_over(job) and "local   samerole   all" in open(hba).read()
    assert all_rows(node, app) == rows and notes(test_hosts[0], app)
