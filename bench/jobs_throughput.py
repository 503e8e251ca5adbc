#!/usr/bin/env python3
"""Jobs per second through the full path vs raw Celery tasks, on the same broker.

Full path: submit() (Job row + job.queued event + send on commit) -> RabbitMQ
-> worker claims (job.started), runs the no-op flow, records job.succeeded.
Baseline: a raw Celery task that appends one line to a file. Both run on one
worker process (prefork, -c 2, prefetch 1, acks_late) in the same run.

    python bench/jobs_throughput.py [--jobs 1000] [--latency-samples 100]

Uses an empty PostgreSQL database toppcloud_bench and RabbitMQ vhost
toppcloud-bench unless DATABASE_URL / CELERY_BROKER_URL say otherwise.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import configure, start_worker, stop_worker  # noqa: E402

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "2"))


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
    from jobs import actions
    from jobs.models import Job

    start = time.perf_counter()
    ids = [actions.noop().pk for _ in range(n)]
    # Poll as often as the raw side does; the partial index of active jobs keeps it cheap.
    while Job.objects.filter(status__in=["queued", "running"]).exists():
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    done = Job.objects.filter(pk__in=ids, status="succeeded").count()
    if done != n:
        sys.exit(f"only {done} of {n} jobs succeeded")
    return n / elapsed


def job_latency(samples):
    from jobs import actions
    from jobs.models import JobEvent

    result = []
    for _ in range(samples):
        job = actions.noop()
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

    configure("toppcloud-bench")
    from django.db import connection

    tmp = Path(os.environ["TOPPCLOUD_VAR_DIR"])
    worker = start_worker(tmp / "worker.log", "jobs,bench", CONCURRENCY, include=["bench.tasks"])
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
        stop_worker(worker)

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
