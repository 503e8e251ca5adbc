#!/usr/bin/env python3
"""Requests through nginx while an app's data are restored, against a baseline with nothing happening.

The djsite fixture (a Django site with persistent database connections,
whose page view reads a row) is deployed on a real test host with its own
PostgreSQL cluster and backed up. Then 4 client threads request its page
through the host's nginx, in the same run:

    baseline   for BASELINE_SECONDS, nothing else happening
    restores   while ROUNDS `restore` jobs (--no-checkpoint) run back to back; each swap holds
               the app's requests at its request gate (nodeops/hostside/node_data.py _requests_held)

and the table gives requests, failed requests, p50/p99/max latency, and how
long the swaps held requests (the `held` of each restore.swapped event).

    python bench/restore_load.py
"""

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, configure, ready_node, run_job, start_worker, stop_worker  # noqa: E402

ROUNDS = 5
BASELINE_SECONDS = 8


def main():
    configure("toppcloud-bench-restore-load")
    from django.conf import settings

    from jobs.management.commands.ssh_key import ensure_key
    from jobs.steps.releases import pack_release
    from tests.hosts import start_hosts, stop_hosts
    from tests.test_restore_under_load import PageLoad

    base = tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp")
    os.chmod(base, 0o755)
    [host] = start_hosts(1, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    worker = start_worker(Path(base) / "worker.log", "jobs,nodeops,cron", concurrency=2)
    try:
        node = ready_node(host)
        app = Path(base) / "djsite"
        shutil.copytree(ROOT / "fixtures" / "apps" / "djsite", app)
        release, _ = pack_release(app)
        run_job("deploy", {"app": "djsite", "release": release.name, "node": node.name}, timeout=900)
        backup = run_job("backup", {"app": "djsite"}, timeout=900).result["backup"]

        def load():
            return PageLoad(host, "djsite.test", "/page/home", ["welcome\n"])

        with load() as baseline:
            time.sleep(BASELINE_SECONDS)
        held = []
        with load() as restores:
            for _ in range(ROUNDS):
                done = run_job("restore", {"app": "djsite", "backup": backup, "checkpoint": False}, timeout=900)
                held.append(done.events.get(kind="restore.swapped").data["held"])
    finally:
        stop_worker(worker)
        stop_hosts([host])
        shutil.rmtree(base, ignore_errors=True)

    print(f"4 threads through nginx to a Django page that reads a row; {ROUNDS} restores back to back\n")
    print(f"{'':<10} {'requests':>9} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, run in (("baseline", baseline), ("restores", restores)):
        s = run.summary()
        print(f"{label:<10} {s['requests']:>9} {s['failed']:>7} {s['p50'] * 1000:>8.1f} {s['p99'] * 1000:>8.1f} "
              f"{s['max'] * 1000:>8.1f}")
    for what, key in (("requests held per swap", "seconds"), ("of which waiting for requests in flight",
                                                             "drained_seconds")):
        values = [h[key] for h in held]
        print(f"{what}: median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")
    for label, run in (("baseline", baseline), ("restores", restores)):
        for failure in run.failures[:5]:
            print(f"{label} failure: {failure[:200]}")
    return 1 if restores.failures or baseline.failures else 0


if __name__ == "__main__":
    sys.exit(main())
