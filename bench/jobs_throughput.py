#!/usr/bin/env python3
"""Jobs per second through the full path vs raw Celery tasks, on the same broker.

Full path: submit() (Job row + job.queued event + send on commit) -> RabbitMQ
-> worker claims (job.started), runs the no-op flow, records job.succeeded.
Baseline: a raw Celery task that appends one line to a file. Both run on one
worker process (prefork, -c 2, prefetch 1, acks_late) in the same run.

    python bench/jobs_throughput.py [--jobs 1000] [--latency-samples 100]

Uses PostgreSQL database toppcloud_bench (created and migrated) and the
RabbitMQ at CELERY_BROKER_URL unless DATABASE_URL / CELERY_BROKER_URL say otherwise.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/toppcloud_bench")
BENCH_VHOST = "toppcloud-bench"
os.environ.setdefault("CELERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:5672/{BENCH_VHOST}")
os.environ.setdefault("SECRET_KEY", "bench-secret-key-bench-secret-key-bench-secret-key")
os.environ.setdefault("TOPPCLOUD_VAR_DIR", tempfile.mkdtemp(prefix="toppcloud-bench-"))
os.environ["DJANGO_SETTINGS_MODULE"] = "toppcloud_site.settings"


def create_database():
    """An empty PostgreSQL database for this run."""
    import psycopg2
    from urllib.parse import urlsplit

    url = urlsplit(os.environ["DATABASE_URL"])
    if url.scheme.startswith("postgres"):
        con = psycopg2.connect(host=url.hostname, port=url.port or 5432, user=url.username,
                               password=url.password, dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [url.path.lstrip("/")])
            if cur.fetchone():  # start empty: a table grown by earlier runs skews the figures
                cur.execute(f'DROP DATABASE "{url.path.lstrip("/")}"')
            cur.execute(f'CREATE DATABASE "{url.path.lstrip("/")}"')
        con.close()


CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "2"))


def create_vhost():
    """The bench's own RabbitMQ vhost, so tests or a dev server on the machine do not share its queues."""
    if os.environ["CELERY_BROKER_URL"].endswith("/" + BENCH_VHOST):
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", BENCH_VHOST], capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", BENCH_VHOST, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True)


def start_worker(log):
    argv = [sys.executable, "-m", "celery", "-A", "toppcloud_site", "worker", "-Q", "jobs,bench", "-c", str(CONCURRENCY),
            "-l", "warning", "--include", "bench.tasks", "-n", f"bench-{os.getpid()}@%h", "--purge"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    from toppcloud_site.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if app.control.ping(destination=[f"bench-{os.getpid()}@{os.uname().nodename}"], timeout=0.5):
            return proc
        if proc.poll() is not None:
            sys.exit(f"worker exited: {Path(log).read_text()[-2000:]}")
    sys.exit("worker did not answer a ping in 60 s")


def lines(path):
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def raw_throughput(n, marker):
    from bench.tasks import raw_noop

    start = time.perf_counter()
    for _ in range(n):
        raw_noop.apply_async(args=[marker], queue="bench")
    while len(lines(marker)) < n:
        time.sleep(0.005)
    return n / (time.perf_counter() - start)


def raw_latency(samples, marker):
    from bench.tasks import raw_noop

    for i in range(samples):
        raw_noop.apply_async(args=[marker, time.time()], queue="bench")
        while len(lines(marker)) < i + 1:
            time.sleep(0.001)
    return [float(x) * 1000 for x in lines(marker)]


def job_throughput(n):
    from jobs import dispatch
    from jobs.models import Job

    first = Job.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    start = time.perf_counter()
    for _ in range(n):
        dispatch.submit("noop", target="bench", actor_kind="system", actor="bench")
    # Poll as often as the raw side does; the partial index of active jobs keeps it cheap.
    while Job.objects.filter(pk__gt=first, status__in=["queued", "running"]).exists():
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    done = Job.objects.filter(pk__gt=first, status="succeeded").count()
    if done != n:
        sys.exit(f"only {done} of {n} jobs succeeded")
    return n / elapsed


def job_latency(samples):
    from jobs import dispatch
    from jobs.models import JobEvent

    result = []
    for _ in range(samples):
        job = dispatch.submit("noop", target="bench", actor_kind="system", actor="bench")
        while not JobEvent.objects.filter(job=job, kind="job.succeeded").exists():
            time.sleep(0.001)
        queued, started = (JobEvent.objects.get(job=job, kind=k).at for k in ("job.queued", "job.started"))
        result.append((started - queued).total_seconds() * 1000)
    return result


def p(values, q):
    return statistics.quantiles(values, n=100)[q - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="alternate raw and job rounds; report medians")
    args = parser.parse_args()

    create_database()
    create_vhost()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    tmp = Path(os.environ["TOPPCLOUD_VAR_DIR"])
    worker = start_worker(tmp / "worker.log")
    try:
        raw_throughput(50, str(tmp / "warm"))  # warm both paths: connections, imports
        job_throughput(50)
        with connection.cursor() as cursor:  # planner statistics, as autovacuum keeps them in a live database
            cursor.execute("ANALYZE")
        raw_runs, job_runs = [], []
        for i in range(args.rounds):  # alternate, so a slow moment of the machine hits both
            raw_runs.append(raw_throughput(args.jobs, str(tmp / f"raw-{i}")))
            job_runs.append(job_throughput(args.jobs))
        raw_tps, job_tps = statistics.median(raw_runs), statistics.median(job_runs)
        raw_lat = raw_latency(args.latency_samples, str(tmp / "raw-latency"))
        job_lat = job_latency(args.latency_samples)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    ratio = job_tps / raw_tps
    print(f"\njobs throughput: {args.jobs} no-op jobs vs {args.jobs} raw Celery tasks, median of {args.rounds} "
          f"rounds, one worker -c {CONCURRENCY}, {os.environ['CELERY_BROKER_URL'].split('@')[-1]}")
    print("rounds (per second): raw " + " ".join(f"{x:.0f}" for x in raw_runs)
          + " | job " + " ".join(f"{x:.0f}" for x in job_runs) + "\n")
    print(f"{'metric':<34}{'toppcloud job':>15}{'raw celery':>13}{'ratio':>8}   target")
    print(f"{'throughput (per second)':<34}{job_tps:>15.1f}{raw_tps:>13.1f}{ratio:>8.2f}   ratio >= 0.3")
    print(f"{'dispatch-to-start p50 (ms)':<34}{p(job_lat, 50):>15.2f}{p(raw_lat, 50):>13.2f}{'':>8}   job < 20 ms")
    print(f"{'dispatch-to-start p95 (ms)':<34}{p(job_lat, 95):>15.2f}{p(raw_lat, 95):>13.2f}")
    ok = ratio >= 0.3 and p(job_lat, 50) < 20
    print("\nresult:", "targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
