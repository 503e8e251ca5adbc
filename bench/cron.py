#!/usr/bin/env python3
"""Cron start delay through real celery beat, on a real test host, against a plain beat task.

Both are `* * * * *` entries of the same beat (database scheduler) and the
same worker: the baseline is a Celery task that only writes down when it
started; toppcloud's is the chores app's `tick` entry, a cron_run job that
asks GET /cron/tick of the live release over ssh. For each minute boundary:
how long after it the baseline task started, how long after it the cron_run
job was about to make its request (its cron.started event, the figure with
a target), and when the app received the request.

    python bench/cron.py [MINUTES]     (default 3)
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, configure, deploy_dir, ready_node, start_worker, stop_worker  # noqa: E402


def main(minutes):
    configure("toppcloud-bench-cron")
    from django.conf import settings
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    from jobs.management.commands.ssh_key import ensure_key
    from jobs.models import Job, JobEvent
    from tests.helpers import wait_for_job
    from tests.hosts import start_hosts, stop_hosts

    base = tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp")
    os.chmod(base, 0o755)
    [host] = start_hosts(1, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    worker = start_worker(Path(base) / "worker.log", "jobs,nodeops,cron", concurrency=2, include=["bench.tasks"])
    beat = None
    try:
        node = ready_node(host)
        app = Path(base) / "chores"
        shutil.copytree(ROOT / "fixtures" / "apps" / "chores", app)
        deploy_dir(app, node)
        marker = Path(base) / "baseline.txt"
        every_minute, _ = CrontabSchedule.objects.get_or_create(minute="*", hour="*", day_of_month="*",
                                                                month_of_year="*", day_of_week="*", timezone="UTC")
        PeriodicTask.objects.create(name="bench baseline", task="bench.raw_beat_tick", crontab=every_minute,
                                    kwargs=json.dumps({"marker_path": str(marker)}), queue="jobs")
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "toppcloud_site", "beat", "-l", "warning",
             "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1",
             "--pidfile", str(Path(base) / "beat.pid")],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=open(Path(base) / "beat.log", "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        # Whole minutes only: the first boundary after beat has read both entries.
        time.sleep(62 - time.time() % 60)
        first = time.time() - time.time() % 60
        time.sleep(minutes * 60 + 5)
        baseline = {int(b): float(d) for b, d in (line.split() for line in marker.read_text().splitlines())}
        rows = []
        ticks = [line.split() for line in (Path(host.root) / "apps" / "chores" / "files" / "ticks.txt")
                 .read_text().splitlines()]
        for job in Job.objects.filter(kind="cron_run", actor_kind="schedule").order_by("queued_at"):
            job = wait_for_job(job.pk, 60)
            started = JobEvent.objects.get(job_id=job.pk, kind="cron.started").data
            boundary = time.mktime(time.strptime(started["scheduled_for"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            if boundary < first or int(boundary) not in baseline:
                continue
            received = min((float(t) - boundary for t, _ in ticks if 0 <= float(t) - boundary < 60), default=None)
            rows.append((boundary, baseline[int(boundary)], started["delay"], received, job.status))
    finally:
        if beat is not None:
            beat.terminate()
            beat.wait(timeout=30)
        stop_worker(worker)
        stop_hosts([host])
        shutil.rmtree(base, ignore_errors=True)

    print("\ncron `* * * * *` through celery beat (database scheduler, --max-interval 1), one test host\n")
    print(f"{'minute (UTC)':<14}{'baseline task':>15}{'cron_run starts':>17}{'app receives':>14}{'ratio':>8}  status")
    for boundary, base_delay, delay, received, status in rows:
        got = f"{received:.3f}" if received is not None else "-"
        print(f"{time.strftime('%H:%M', time.gmtime(boundary)):<14}{base_delay:>15.3f}{delay:>17.3f}{got:>14}"
              f"{delay / base_delay:>8.1f}  {status}")
    if not rows:
        print("no complete minute was measured")
        return 1
    worst = max(r[2] for r in rows)
    print(f"\nmedian delay after the minute (s): baseline {statistics.median(r[1] for r in rows):.3f}, "
          f"cron_run {statistics.median(r[2] for r in rows):.3f}; worst cron_run {worst:.3f}   target < 1 s")
    ok = worst < 1 and all(r[4] == "succeeded" for r in rows)
    print("result:", "target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
