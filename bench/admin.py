#!/usr/bin/env python3
"""The job list and a job's page with 1,000,000 job events: queries per page and latency.

A database of its own (created, filled and dropped by this run) gets
--events events: one running job with --huge of them, the rest spread over
jobs of 8 events each (queued, started, two steps, a command, the end; one
in ten failed with a long error). Rows go in with COPY, hashed on their chains
as jobs/engine/events.py hashes them; the append-only triggers stay on (they
refuse UPDATE and DELETE, not INSERT).

Each page is requested by a logged-in superuser through Django's test client,
--samples times after a warm-up, counting the queries of one request. The
baseline, measured in the same run: the same pages on the empty database
(before the fill; its jobs have a few events), and the admin's user list,
a page with no job in it. Targets: <= 10 queries, p95 < 300 ms.

    python bench/admin.py [--events 1000000] [--huge 200000] [--samples 60]
"""

import argparse
import io
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAME = "toppcloud_bench_admin"
MAX_QUERIES, MAX_P95_MS = 10, 300
EVENTS_PER_JOB = 8


def setup():
    os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{NAME}")
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")  # nothing is sent: pages only read
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-bench-secret-key-bench-secret-key")
    os.environ.setdefault("TOPPCLOUD_LOG_KEY", "bench-log-key-bench-log-key-bench-log-key-bench")
    os.environ["TOPPCLOUD_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-admin-")
    os.environ["DJANGO_SETTINGS_MODULE"] = "toppcloud_site.settings"
    from bench.common import _create_database

    _create_database()
    import django

    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)  # into the run's var dir, as a deployment has
    setup_test_environment()  # the test client's host is allowed; no mail leaves


def drop():
    from bench.common import drop_database

    drop_database()
    shutil.rmtree(os.environ["TOPPCLOUD_VAR_DIR"], ignore_errors=True)


# --- filling ----------------------------------------------------------------------------------------------

class Writer:
    """Job rows and their events as COPY text, each event hashed onto its job's chain."""

    def __init__(self):
        self.jobs, self.events = io.StringIO(), io.StringIO()
        self.count = 0

    def job(self, pk, kind, target, status, queued_at, started_at, finished_at, summary, error, chain):
        from jobs.engine.events import GENESIS, event_hash

        prev, seq = GENESIS, 0
        for seq, (offset, ekind, actor, data) in enumerate(chain, start=1):
            at = queued_at + timedelta(seconds=offset)
            data = json.loads(json.dumps(data))
            digest = event_hash(prev, pk, seq, at, ekind, data, actor)
            self.events.write("\t".join([str(pk), str(seq), at.isoformat(), ekind, _copy(json.dumps(data)),
                                         _copy(actor), prev, digest]) + "\n")
            prev = digest
        self.count += seq
        params = {"app": f"app{pk % 50}"}
        self.jobs.write("\t".join([
            str(pk), kind, target, _copy(json.dumps(params)), "user", "alice", r"\N", status, "1", "0",
            queued_at.isoformat(), queued_at.isoformat(), r"\N", _time(started_at), _time(started_at),
            _time(finished_at), "w1", "bench-host", "4242", _copy(summary), r"\N", _copy(error), "0", str(seq), prev,
        ]) + "\n")

    def flush(self, cursor):
        for table, buf, columns in (("jobs_job", self.jobs, JOB_COLUMNS), ("jobs_jobevent", self.events,
                                                                            EVENT_COLUMNS)):
            buf.seek(0)
            cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)
        self.jobs, self.events = io.StringIO(), io.StringIO()


JOB_COLUMNS = ["id", "kind", "target", "params", "actor_kind", "actor", "parent_id", "status", "attempt", "resends",
               "queued_at", "sent_at", "run_after", "started_at", "attempt_started_at", "finished_at", "worker",
               "worker_hostname", "worker_pid", "summary", "result", "error", "output_bytes", "last_seq", "last_hash"]
EVENT_COLUMNS = ["job_id", "seq", "at", "kind", "data", "actor", "prev_hash", "hash"]


def _copy(text):
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _time(at):
    return at.isoformat() if at else r"\N"


def small_job(writer, pk, now):
    from nodeops import hostside

    kinds = ["deploy", "backup", "cron_run", "task", "ping_node", "apply_config"]
    kind = kinds[pk % len(kinds)]
    queued_at = now - timedelta(minutes=pk % 130_000, seconds=pk % 60)
    failed = pk % 10 == 0
    worker = "worker:w1"
    error = ("health check failed: GET /health answered 500\n" + "Traceback (most recent call last):\n" * 20
             if failed else "")
    summary = "" if failed else f"{kind} of app{pk % 50} done in 2.5s"
    argv = ["python3", "-I", "-c", hostside.source("release_stop"), "/srv/run/sock", f"app{pk % 50}-r{pk}", "x.conf"]
    chain = [
        (0, "job.queued", "user:alice", {"kind": kind, "target": f"app:app{pk % 50}", "params": {}, "actor_kind": "user",
                                         "actor": "alice", "parent": None}),
        (0.1, "job.started", worker, {"attempt": 1, "worker": "w1", "hostname": "bench-host", "pid": 4242}),
        (0.2, "step.started", worker, {"step": "upload"}),
        (1.0, "command", worker, {"step": "upload", "argv": hostside.label(argv), "rc": 0, "seconds": 0.7,
                                  "stdout": "sent 1,234 bytes  received 56 bytes\n" * 3, "stderr": ""}),
        (1.1, "step.finished", worker, {"step": "upload", "ok": True, "seconds": 0.9}),
        (1.2, "step.started", worker, {"step": "health"}),
        (2.4, "step.finished", worker, {"step": "health", "ok": not failed, "seconds": 1.2,
                                        **({"error": error} if failed else {})}),
        (2.5, "job.failed" if failed else "job.succeeded", worker, {"error": error} if failed else {"summary": summary}),
    ]
    writer.job(pk, kind, f"app:app{pk % 50}", "failed" if failed else "succeeded", queued_at,
               queued_at + timedelta(seconds=0.1), queued_at + timedelta(seconds=2.5), summary, error, chain)


def huge_job(writer, pk, n, now):
    """A running job with n events: steps of 1,000 log lines each, the last step still open."""
    worker = "worker:w1"
    queued_at = now - timedelta(hours=2)
    chain = [(0, "job.queued", "user:alice", {"kind": "run", "target": "app:big", "params": {}, "actor_kind": "user",
                                              "actor": "alice", "parent": None}),
             (0.1, "job.started", worker, {"attempt": 1, "worker": "w1", "hostname": "bench-host", "pid": 4242})]
    step = 0
    while len(chain) < n:
        offset = len(chain) * 0.01
        if (len(chain) - 2) % 1000 == 0:
            step += 1
            if step > 1:
                chain.append((offset, "step.finished", worker, {"step": f"batch {step - 1}", "ok": True,
                                                                "seconds": 10.0}))
            if len(chain) < n:
                chain.append((offset, "step.started", worker, {"step": f"batch {step}"}))
            continue
        chain.append((offset, "log", worker, {"step": f"batch {step}", "text": f"row {len(chain)} imported " * 4}))
    writer.job(pk, "run", "app:big", "running", queued_at, queued_at + timedelta(seconds=0.1), None, "", "",
               chain[:n])


def fill(events, huge, huge_pk, now):
    """The huge job (huge_pk) and small jobs after it up to `events` events; returns (last small job's pk,
    events written)."""
    from django.db import connection

    writer = Writer()
    huge_job(writer, huge_pk, huge, now)
    pk = huge_pk + 1
    with connection.cursor() as cursor:
        writer.flush(cursor.cursor)
        while writer.count + EVENTS_PER_JOB <= events:
            small_job(writer, pk, now)
            pk += 1
            if pk % 5000 == 0:
                writer.flush(cursor.cursor)
                print(f"  {writer.count:>9,} events", end="\r", file=sys.stderr, flush=True)
        writer.flush(cursor.cursor)
        cursor.execute("SELECT setval(pg_get_serial_sequence('jobs_job', 'id'), %s)", [pk])
        # As autovacuum leaves a table that has been running: statistics and the visibility map (index-only scans).
        cursor.execute("VACUUM (ANALYZE) jobs_job")
        cursor.execute("VACUUM (ANALYZE) jobs_jobevent")
    return pk - 1, writer.count


# --- measuring --------------------------------------------------------------------------------------------

def client():
    from django.contrib.auth.models import User
    from django.test import Client

    user, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    c = Client()
    logging.getLogger("axes").setLevel(logging.WARNING)
    c.force_login(user)
    return c


def measure(c, urls, samples):
    """{name: queries, p50, p95, sql} of each page; the pages are requested in turns, so a spike of load on
    the machine falls on all of them alike."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    out = {}
    for name, url in urls:
        for _ in range(3):
            _get(c, url)
        with CaptureQueriesContext(connection) as queries:
            _get(c, url)
        out[name] = {"sql": [q["sql"] for q in queries], "times": []}  # now: the next request clears the log
    for _ in range(samples):
        for name, url in urls:
            start = time.perf_counter()
            _get(c, url)
            out[name]["times"].append((time.perf_counter() - start) * 1000)
    for m in out.values():
        times = sorted(m.pop("times"))
        m.update(queries=len(m["sql"]), p50=statistics.median(times),
                 p95=times[min(len(times) - 1, int(len(times) * 0.95))])
    return out


def _get(c, url):
    response = c.get(url)
    if response.status_code != 200:
        sys.exit(f"GET {url}: HTTP {response.status_code}")
    return response


def pages(small_pk, huge_pk, huge_last_seq):
    from django.urls import reverse

    job_list = reverse("admin:jobs_job_changelist")
    return [
        ("baseline: user list (no jobs)", reverse("admin:auth_user_changelist")),
        ("job list", job_list),
        ("job list, failed", job_list + "?status__exact=failed"),
        ("job list, kind=deploy, page 5", job_list + "?kind=deploy&p=5"),
        ("job list, queued this month", job_list + "?queued_at__gte=" + _month_start()),
        ("job page (8 events)", reverse("admin:jobs_job_change", args=[small_pk])),
        ("job page (huge, last 200)", reverse("admin:jobs_job_change", args=[huge_pk])),
        ("job page (huge, earlier)", reverse("admin:jobs_job_change", args=[huge_pk]) + f"?before={huge_last_seq // 2}"),
        ("live poll (huge, new events)", reverse("admin:jobs_job_events", args=[huge_pk]) + f"?after={huge_last_seq - 5}"),
    ]


def _month_start():
    from urllib.parse import quote

    start = datetime.now(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return quote(start.isoformat())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--huge", type=int, default=200_000, help="events of the one huge job")
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--keep", action="store_true", help="keep the database (for EXPLAIN); dropped otherwise")
    parser.add_argument("--show-sql", action="store_true")
    args = parser.parse_args()
    setup()
    try:
        run(args)
    finally:
        if not args.keep:
            drop()


def run(args):
    from jobs.models import Job

    # The baseline: the same pages on an almost empty database (a small job and a "huge" one of 30 events).
    from django.db import connection

    writer = Writer()
    now = datetime.now(timezone.utc)
    huge_job(writer, 2, 30, now)
    small_job(writer, 1, now)
    with connection.cursor() as cursor:
        writer.flush(cursor.cursor)
    c = client()
    empty = measure(c, pages(1, 2, 30), args.samples)

    print(f"filling: {args.events:,} events ...", file=sys.stderr)
    start = time.perf_counter()
    # The baseline's jobs stay (no DELETE of jobs or events): the fill's huge job is pk 3, its small ones after.
    huge_pk = 3
    last_pk, _ = fill(args.events, args.huge, huge_pk, datetime.now(timezone.utc) - timedelta(days=1))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM jobs_jobevent")
        total_events = cursor.fetchone()[0]
    jobs = Job.objects.count()
    print(f"filled in {time.perf_counter() - start:.0f} s: {total_events:,} events, {jobs:,} jobs "
          f"(one of {args.huge:,} events)", file=sys.stderr)

    full = measure(c, pages(last_pk, huge_pk, args.huge), args.samples)
    header = (f"{'page':<34} {'queries':>7} {'p50 ms':>8} {'p95 ms':>8}  {'empty db p95':>12} {'x empty':>8} "
              f"{'x user list':>11}  target")
    print(f"\n{total_events:,} events in {jobs:,} jobs; {args.samples} requests per page, logged in as a superuser")
    print(header)
    print("-" * len(header))
    base = full["baseline: user list (no jobs)"]["p95"]
    failed = []
    for name, m in full.items():
        e = empty[name]
        ok = m["queries"] <= MAX_QUERIES and m["p95"] < MAX_P95_MS
        if not ok:
            failed.append(name)
        print(f"{name:<34} {m['queries']:>7} {m['p50']:>8.1f} {m['p95']:>8.1f}  {e['p95']:>12.1f} "
              f"{m['p95'] / e['p95']:>8.2f} {m['p95'] / base:>11.2f}  {'ok' if ok else 'MISSED'}")
        if args.show_sql:
            for sql in m["sql"]:
                print("      ", sql[:300])
    print(f"\ntargets: <= {MAX_QUERIES} queries, p95 < {MAX_P95_MS} ms: "
          + ("all met" if not failed else "missed by " + ", ".join(failed)))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
