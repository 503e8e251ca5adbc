#!/usr/bin/env python3
"""Backup and restore speed against pg_dump and psql, on a real test host with its own PostgreSQL cluster.

The notes fixture app is deployed (service.postgresql + service.files) and
its table filled with 1,000,000 generated rows. Then, alternating, ROUNDS
times each, medians reported:

    toppcloud backup   a `backup` job, queued to succeeded (its own record): ordered SQL dump and
                       files tar streamed over ssh into the archive, checksums,
                       Backup record (what `manage.py backup` waits for)
    pg_dump            pg_dump of the same database on the host, to a file
    toppcloud restore  a `restore` job (--no-checkpoint), queued to succeeded:
                       archive verified here, streamed over ssh, loaded into a
                       staging database, verified again, swapped in
    psql load          psql -f of pg_dump's output into an empty database

    python bench/backup.py
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, configure, ready_node, run_job, start_worker, stop_worker  # noqa: E402

ROWS = 1_000_000
ROUNDS = 5
TARGET = 1.3


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def job_seconds(kind, params):
    """A job's own record of its duration, queued to finished (no polling delay in it)."""
    done = run_job(kind, params)
    return (done.finished_at - done.queued_at).total_seconds(), done


def main():
    configure("toppcloud-bench-backup")
    from django.conf import settings

    from jobs.management.commands.ssh_key import ensure_key
    from jobs.steps.releases import pack_release
    from tests.hosts import start_hosts, stop_hosts
    from toppcloud_site.records.models import Service

    base = tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp")
    os.chmod(base, 0o755)
    [host] = start_hosts(1, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    worker = start_worker(Path(base) / "worker.log", "jobs,nodeops,cron", concurrency=2)
    try:
        node = ready_node(host)
        app = Path(base) / "notes"
        shutil.copytree(ROOT / "fixtures" / "apps" / "notes", app)
        release, _ = pack_release(app)
        run_job("deploy", {"app": "notes", "release": release.name, "node": node.name})
        pg = Service.objects.get(app__name="notes", kind="postgresql").settings
        bin_dir = f"/usr/lib/postgresql/{pg['version']}/bin"

        def as_postgres(program, *args, **kw):
            return subprocess.run(["runuser", "-u", "postgres", "--", f"{bin_dir}/{program}", "-p",
                                   str(pg["port"]), *args], check=True, **kw)

        def psql(db, sql):
            as_postgres("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql, capture_output=True)

        psql("notes", f"INSERT INTO notes (body, created) SELECT 'note ' || g || ' ' || md5(g::text), "
                      f"timestamptz '2026-01-01' + g * interval '1 second' FROM generate_series(1, {ROWS}) g; "
                      "CREATE INDEX notes_created ON notes (created)")
        psql("notes", "VACUUM ANALYZE notes")
        dump_file = Path(base) / "pg_dump.sql"

        def pg_dump():
            with open(dump_file, "wb") as f:
                as_postgres("pg_dump", "-d", "notes", stdout=f)

        password = Service.objects.get(app__name="notes", kind="postgresql").password

        def remote_pg_dump():  # what a backup by hand from the control plane would be: pg_dump over TCP
            with open(Path(base) / "remote.sql", "wb") as f:
                subprocess.run([f"{bin_dir}/pg_dump", "-h", node.address, "-p", str(pg["port"]), "-U", "notes",
                                "-d", "notes"], stdout=f, check=True, env={**os.environ, "PGPASSWORD": password})

        def psql_load():
            psql("postgres", "DROP DATABASE IF EXISTS bench_load")
            psql("postgres", "CREATE DATABASE bench_load OWNER notes")
            psql("postgres", "CHECKPOINT")
            os.sync()
            start = time.perf_counter()
            as_postgres("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "bench_load", "-f", str(dump_file),
                        stdout=subprocess.DEVNULL)
            return time.perf_counter() - start

        from nodeops import services as node_services
        from nodeops.hostside.node_data import ArchiveWriter
        from nodeops.transport import LocalTransport

        spec = {k: pg[k] for k in ("version", "port", "dbname", "role")}

        def local_dump():  # the node program without ssh: what the ssh leg costs shows against the job
            with open(Path(base) / "local.tar", "wb") as f:
                node_services.dump_into(lambda *a, **k: None, ArchiveWriter(f),
                                        [(LocalTransport(), "postgresql.sql", spec)])

        def local_restore(backup):
            archive = Path(settings.TOPPCLOUD_BACKUP_DIR, "notes", f"{backup}.tar")
            node_services.restore(LocalTransport(), lambda *a, **k: None, str(archive), postgresql=spec)

        results = {"backup": [], "pg_dump": [], "restore": [], "psql": [], "local dump": [], "local restore": [],
                   "remote pg_dump": []}
        def settle():
            """Every measurement starts from the same quiet state.

            A restore drops the database it replaced in the background, and DROP DATABASE
            forces a checkpoint: wait for it. A restored table's rows have no hint bits yet,
            and whichever dump read them first would pay for setting them: vacuum. Then a
            checkpoint and a sync, so no measurement pays for the dirty pages (PostgreSQL's or
            the files') of the one before.
            """
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and as_postgres(
                    "psql", "-X", "-At", "-d", "postgres", "-c",
                    "SELECT count(*) FROM pg_database WHERE datname LIKE 'notes\\_\\_%'",
                    capture_output=True, text=True).stdout.strip() != "0":
                time.sleep(0.1)
            psql("notes", "VACUUM (FREEZE, ANALYZE) notes")
            psql("postgres", "CHECKPOINT")

        newest = []  # the archive restores load: the newest backup (keep_backups prunes older ones)

        def toppcloud_backup():
            seconds, done = job_seconds("backup", {"app": "notes"})
            results["dump-sql"].append(done.events.get(kind="command", data__step="dump-sql").data["seconds"])
            results["backup"].append(seconds)
            newest[:] = [done.result["backup"]]

        def toppcloud_restore():
            results["restore"].append(job_seconds("restore", {"app": "notes", "backup": newest[0],
                                                              "checkpoint": False})[0])

        results["dump-sql"] = []
        measurements = {
            "backup": toppcloud_backup,
            "pg_dump": lambda: results["pg_dump"].append(timed(pg_dump)[0]),
            "local dump": lambda: results["local dump"].append(timed(local_dump)[0]),
            "restore": toppcloud_restore,
            "psql": lambda: results["psql"].append(psql_load()),
            "local restore": lambda: results["local restore"].append(timed(lambda: local_restore(newest[0]))[0]),
            "remote pg_dump": lambda: results["remote pg_dump"].append(timed(remote_pg_dump)[0]),
        }
        toppcloud_backup()  # an archive for the first restore
        results["backup"].clear()
        results["dump-sql"].clear()
        for round_ in range(ROUNDS):
            # Each pair's order alternates, so neither side always follows the same work.
            order = list(measurements) if round_ % 2 == 0 else list(reversed(measurements))
            for key in order:
                settle()
                measurements[key]()
        settle()
        backup = newest[0]
        with_checkpoint = job_seconds("restore", {"app": "notes", "backup": backup})[0]
        size = Path(settings.TOPPCLOUD_BACKUP_DIR, "notes", f"{backup}.tar").stat().st_size
        dump_size = dump_file.stat().st_size
    finally:
        stop_worker(worker)
        stop_hosts([host])
        shutil.rmtree(base, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    backup_ratio, restore_ratio = med["backup"] / med["pg_dump"], med["restore"] / med["psql"]
    print(f"\n{ROWS:,} rows (notes table: id, body, created; primary key + 1 index), test host over ssh on this "
          f"machine;\nmedian of {ROUNDS} rounds, each measurement after a checkpoint and a sync; archive {size / 1e6:.1f} MB, pg_dump output "
          f"{dump_size / 1e6:.1f} MB\n")
    print(f"{'':<42}{'median s':>10}   {'rounds':<24}")
    for label, key in (("toppcloud backup (job)", "backup"), ("  of which the SQL stream from the node", "dump-sql"),
                       ("pg_dump", "pg_dump"),
                       ("toppcloud restore (job, no checkpoint)", "restore"), ("psql load of pg_dump output", "psql")):
        print(f"{label:<42}{med[key]:>10.2f}   {' '.join(f'{s:.2f}' for s in results[key]):<24}")
    print(f"{'toppcloud restore with its checkpoint':<42}{with_checkpoint:>10.2f}   (the default: keeps the data it replaces)")
    print("\nwithout the ssh leg (the node program run here on the archive, for where the time goes):")
    for label, key in (("  dump, node program only", "local dump"), ("  restore, node program only", "local restore")):
        print(f"{label:<42}{med[key]:>10.2f}   {' '.join(f'{s:.2f}' for s in results[key]):<24}")
    print(f"{'  dump / pg_dump':<42}{med['local dump'] / med['pg_dump']:>10.2f}")
    print(f"{'  restore / psql load':<42}{med['local restore'] / med['psql']:>10.2f}")
    print("\nthe same dump by hand from the control plane: pg_dump over TCP as the app's role (no ssh, no checksums):")
    print(f"{'  pg_dump -h NODE':<42}{med['remote pg_dump']:>10.2f}   "
          f"{' '.join(f'{s:.2f}' for s in results['remote pg_dump']):<24}")
    print(f"{'  toppcloud backup / pg_dump -h NODE':<42}{med['backup'] / med['remote pg_dump']:>10.2f}")
    print(f"\n{'backup / pg_dump':<42}{backup_ratio:>10.2f}   target <= {TARGET}")
    print(f"{'restore / psql load':<42}{restore_ratio:>10.2f}   target <= {TARGET}")
    ok = backup_ratio <= TARGET and restore_ratio <= TARGET
    print("\nresult:", "targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
