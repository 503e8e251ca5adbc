#!/usr/bin/env python3
"""What a command costs over its job: `manage.py deploy|backup|restore|run` as a person types them.

On a real test host (its own PostgreSQL cluster) and a real worker, the
notes fixture app (service.postgresql + service.files) is deployed once,
then each command runs ROUNDS times as a subprocess (a fresh Python, as from
a shell): first as it starts by itself (cold), then with `manage.py warm`
running (commands forked from a process that has Django started). Medians:

    wall       the command's process, start to exit
    job        its job's own record: finished_at - queued_at (so the worker's pick-up is job time)
    overhead   wall - job: start-up, checks and packing before the job is queued, noticing its end, exit
    ratio      overhead / wall

    python bench/cli.py
"""

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, configure, ready_node, start_worker, stop_worker  # noqa: E402

ROUNDS = 5
TARGET = 0.3


def command(*argv):
    """Run `manage.py argv` in a new process; (wall seconds, the Job it started)."""
    from jobs.models import Job

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "manage.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"manage.py {' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    job_id = re.search(r"^job (\d+)", done.stdout, re.M)
    if job_id is None:
        sys.exit(f"manage.py {' '.join(argv)} printed no job id:\n{done.stdout[-2000:]}")
    return wall, Job.objects.get(pk=int(job_id.group(1)))


def main():
    configure("toppcloud-bench-cli")
    from django.conf import settings

    from jobs.management.commands.ssh_key import ensure_key
    from tests.hosts import start_hosts, stop_hosts

    base = tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp")
    os.chmod(base, 0o755)
    [host] = start_hosts(1, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    worker = None
    tables = {}
    warm = None
    try:
        worker = start_worker(Path(base) / "worker.log", "jobs,nodeops,cron", concurrency=2)
        node = ready_node(host)
        app = Path(base) / "notes"
        shutil.copytree(ROOT / "fixtures" / "apps" / "notes", app)
        command("deploy", str(app), "--node", node.name)  # the venv, the first upload, the database
        tables["cold"] = rounds(app, node, "cold")
        warm = start_warm(Path(base) / "warm.log")
        tables["warm"] = rounds(app, node, "warm")
    finally:
        if warm is not None:
            os.killpg(warm.pid, signal.SIGTERM)
            warm.wait(timeout=30)
        if worker is not None:
            stop_worker(worker)
        stop_hosts([host])
        shutil.rmtree(base, ignore_errors=True)

    for mode, rows in tables.items():
        report(mode, rows)


def rounds(app, node, tag):
    rows = {"deploy": [], "backup": [], "restore": [], "run": []}
    for i in range(ROUNDS):
        (app / "VERSION").write_text(f"bench-{tag}-{i}\n")  # a new release each time, as a real redeploy
        rows["deploy"].append(command("deploy", str(app), "--node", node.name))
        wall, job = command("backup", "notes")
        rows["backup"].append((wall, job))
        rows["restore"].append(command("restore", job.result["backup"], "notes"))
        rows["run"].append(command("run", "notes", "--", "true"))
    return rows


def start_warm(log):
    """`manage.py warm` with the commands' environment; returns once it listens."""
    from django.conf import settings

    proc = subprocess.Popen([sys.executable, "manage.py", "warm"], cwd=ROOT, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True)
    sock = Path(settings.VAR_DIR) / "run" / "manage.sock"
    deadline = time.monotonic() + 60
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"manage.py warm did not start: {Path(log).read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def report(mode, rows):
    print(f"\n{mode}: manage.py commands against one test host, worker -c 2, medians of {ROUNDS} (seconds)\n")
    print(f"{'command':<10}{'wall':>8}{'job':>8}{'overhead':>10}{'ratio':>8}   target: overhead < {TARGET} s")
    worst = 0.0
    for name, runs in rows.items():
        walls = [w for w, _ in runs]
        jobs = [(j.finished_at - j.queued_at).total_seconds() for _, j in runs]
        overheads = [w - j for w, j in zip(walls, jobs)]
        wall, job, overhead = (statistics.median(x) for x in (walls, jobs, overheads))
        worst = max(worst, overhead)
        print(f"{name:<10}{wall:>8.2f}{job:>8.2f}{overhead:>10.2f}{overhead / wall:>8.0%}")
    print(f"\nworst overhead {worst:.2f} s: {'meets' if worst < TARGET else 'misses'} the target")


if __name__ == "__main__":
    main()
