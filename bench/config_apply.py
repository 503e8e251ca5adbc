#!/usr/bin/env python3
"""Requests during `config apply` against the same load with nothing happening, on a real test host.

chores is deployed on one test host (gunicorn, 2 workers x 4 threads, behind
the node's nginx). Load: 8 threads asking GET /health through nginx, each as
fast as it is answered. Baseline: that load for as long as the applies take,
nothing else happening. Then the same load while `config apply` runs ROUNDS
times, each with a new secret value (the app checks it took: GET /env).
Figures: requests, failed requests (anything but 200 "ok", or no answer),
latency p50/p99/max, and how long an apply job takes. Target: 0 failed.

    python bench/config_apply.py [ROUNDS]     (default 5)
"""

import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, configure, deploy_dir, ready_node, start_worker, stop_worker  # noqa: E402

THREADS = 8


class Load:
    def __init__(self, host, hostname):
        self.host, self.hostname = host, hostname
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.latencies, self.failures = [], []

    def loop(self):
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(self.host.address, self.host.http_port, timeout=10)
                conn.request("GET", "/health", headers={"Host": self.hostname})
                response = conn.getresponse()
                body = response.read()
                conn.close()
                failed = None if (response.status, body) == (200, b"ok") else f"{response.status} {body[:60]!r}"
            except OSError as exc:
                failed = f"{type(exc).__name__}: {exc}"
            with self.lock:
                (self.failures.append(failed) if failed else self.latencies.append(time.perf_counter() - started))

    def run_while(self, action):
        threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(THREADS)]
        for t in threads:
            t.start()
        started = time.perf_counter()
        try:
            result = action()
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=15)
        return time.perf_counter() - started, result


def main(rounds):
    configure("toppcloud-bench-config")
    from django.conf import settings
    from django.core.management import call_command

    from jobs.management.commands.ssh_key import ensure_key
    from jobs.models import Job
    from tests.hosts import start_hosts, stop_hosts
    from tests.test_deploy_flow import get
    from toppcloud_site.records.models import App, ConfigValue

    base = tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp")
    os.chmod(base, 0o755)
    [host] = start_hosts(1, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    worker = start_worker(Path(base) / "worker.log", "jobs,nodeops,cron", concurrency=2)
    try:
        node = ready_node(host)
        app_dir = Path(base) / "chores"
        shutil.copytree(ROOT / "fixtures" / "apps" / "chores", app_dir)
        ini = (app_dir / "app.ini").read_text().replace("processes = 1", "processes = 2")
        (app_dir / "app.ini").write_text(ini)
        deploy_dir(app_dir, node)
        app = App.objects.get(name="chores")

        applies = []

        def apply_rounds():
            for i in range(rounds):
                value = f"bench-secret-{i}-{time.time_ns()}"
                record = ConfigValue.objects.filter(scope="app", app=app, key="API_KEY").first() or ConfigValue(
                    scope="app", app=app, key="API_KEY")
                record.set_value(value, secret=True)
                record.save()
                started = time.perf_counter()
                try:
                    call_command("config", "apply", "--app", "chores", stdout=open(os.devnull, "w"))
                except SystemExit as exc:
                    if exc.code:
                        sys.exit(f"config apply failed (round {i + 1})")
                applies.append(time.perf_counter() - started)
                seen = json.loads(get(host, "chores.test", "/env")[1])
                if seen.get("API_KEY") != value:
                    job = Job.objects.filter(kind="apply_config").latest("queued_at")
                    step = job.events.filter(kind="step.finished").order_by("seq").first()
                    sys.exit(f"round {i + 1}: the app does not have the new value; it answered as release "
                             f"{seen.get('TOPPCLOUD_RELEASE')} on {seen.get('TOPPCLOUD_NODE')}; the apply step: "
                             f"{step.data if step else None}")
                time.sleep(0.5)

        during = Load(host, "chores.test")
        seconds, _ = during.run_while(apply_rounds)
        baseline = Load(host, "chores.test")
        baseline.run_while(lambda: time.sleep(seconds))
    finally:
        stop_worker(worker)
        stop_hosts([host])
        shutil.rmtree(base, ignore_errors=True)

    def row(label, load):
        lat = sorted(load.latencies)
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
        total = len(lat) + len(load.failures)
        print(f"{label:<28}{total:>10}{len(load.failures):>8}{total / seconds:>10.0f}{p(0.5):>9.1f}{p(0.99):>9.1f}"
              f"{lat[-1] * 1000:>9.1f}")
        return p(0.99)

    print(f"\nGET /health through the node's nginx, {THREADS} threads, {seconds:.1f} s each; chores: 2 gunicorn "
          "workers x 4 threads\n")
    print(f"{'':<28}{'requests':>10}{'failed':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    base_p99 = row("nothing happening", baseline)
    apply_p99 = row(f"{rounds} x config apply", during)
    print(f"\np99 during applies / p99 baseline: {apply_p99 / base_p99:.2f}")
    print(f"config apply job, as the command waits for it: median {statistics.median(applies):.2f} s, "
          f"max {max(applies):.2f} s")
    for sample in during.failures[:5]:
        print("failed:", sample)
    ok = not during.failures and not baseline.failures
    print("result:", "target met (0 failed requests)" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
