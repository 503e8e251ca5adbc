#!/usr/bin/env python3
"""Deploy speed on real test hosts (sshd + nginx + supervisord on 127.0.0.x), through a real worker.

Prints: the first deploy and a redeploy with unchanged requirements on one
host; a deploy to 1 host against the same deploy to 5 hosts (one parent job,
children in parallel); and the bytes a redeploy sends when one file of a
50 MB app changed, as a share of the app's size.

    python bench/deploy.py
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, configure, start_worker, stop_worker  # noqa: E402

HOSTS = 5
APP_MB = 50


def app_dir(base, name, version, big=False):
    dest = Path(base) / f"{name}-{version}"
    shutil.copytree(ROOT / "fixtures" / "apps" / "hello", dest)
    ini = (dest / "app.ini").read_text().replace("app_name = hello", f"app_name = {name}")
    (dest / "app.ini").write_text(ini.replace("default_location = hello.test", f"default_location = {name}.test"))
    (dest / "VERSION").write_text(f"{version}\n")
    if big:  # incompressible data, 1 MB a file, the same bytes in every version
        data = Path(base) / "data"
        if not data.exists():
            data.mkdir()
            for i in range(APP_MB):
                (data / f"blob{i:02d}.bin").write_bytes(os.urandom(1024 * 1024))
        shutil.copytree(data, dest / "data")
    return dest


def deploy(app, nodes, max_parallel=None):
    """Pack and deploy as `manage.py deploy` does; seconds until the job ended, and the job."""
    from jobs import actions
    from jobs.steps.releases import pack_release
    from tests.helpers import wait_for_job

    start = time.perf_counter()
    release, _ = pack_release(app)
    job = actions.deploy_to(release.app.name, release.name, nodes, max_parallel=max_parallel or len(nodes),
                            actor_kind="system", actor="bench")
    job = wait_for_job(job.pk, timeout=600)
    if job.status != "succeeded":
        sys.exit(f"deploy failed: {job.error}")
    return time.perf_counter() - start, job


def bytes_sent(job):
    from jobs.models import Job, JobEvent

    ids = [job.pk] + list(Job.objects.filter(parent=job).values_list("pk", flat=True))
    return sum(e.data["bytes_sent"] for e in JobEvent.objects.filter(job_id__in=ids, kind="upload.stats"))


def main():
    configure("toppcloud-bench-deploy")
    from django.conf import settings

    from jobs.management.commands.ssh_key import ensure_key
    from jobs import actions
    from tests.helpers import wait_for_job
    from tests.hosts import start_hosts, stop_hosts
    from toppcloud_site.records.models import Node

    base = tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp")
    os.chmod(base, 0o755)
    hosts = start_hosts(HOSTS, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    worker = start_worker(Path(base) / "worker.log", "jobs,nodeops,cron", concurrency=HOSTS + 1)
    try:
        nodes = []
        for h in hosts:
            node = Node.objects.create(name=h.name, address=h.address, ssh_port=h.ssh_port, root=h.root,
                                       http_port=h.http_port, host_key=h.host_key)
            job = wait_for_job(actions.setup_node(node, actor_kind="system", actor="bench").pk, 180)
            if job.status != "succeeded":
                sys.exit(f"setup of {node.name} failed: {job.error}")
            nodes.append(node)
        apps = tempfile.mkdtemp(prefix="apps-", dir=base)

        first, _ = deploy(app_dir(apps, "one", 1), nodes[:1])
        redeploy, _ = deploy(app_dir(apps, "one", 2), nodes[:1])
        deploy(app_dir(apps, "fan", 1), nodes)  # venvs and first uploads everywhere, so both sides redeploy
        one_host, _ = deploy(app_dir(apps, "fan", 2), nodes[:1])
        five_hosts, _ = deploy(app_dir(apps, "fan", 3), nodes)
        deploy(app_dir(apps, "big", 1, big=True), nodes[:1])
        _, job = deploy(app_dir(apps, "big", 2, big=True), nodes[:1])
        sent = bytes_sent(job)
        size = sum(f.stat().st_size for f in Path(app_dir(apps, "big", 3, big=True)).rglob("*") if f.is_file())
    finally:
        stop_worker(worker)
        stop_hosts(hosts)
        shutil.rmtree(base, ignore_errors=True)

    ratio, share = five_hosts / one_host, sent / size * 100
    print(f"\ndeploy of fixtures/apps/hello over ssh to test hosts on this machine, worker -c {HOSTS + 1}\n")
    print(f"{'metric':<52}{'measured':>12}   target")
    print(f"{'first deploy, 1 host (s)':<52}{first:>12.2f}")
    print(f"{'redeploy, unchanged requirements, 1 host (s)':<52}{redeploy:>12.2f}   < 3 s")
    print(f"{'redeploy to 1 host (s)':<52}{one_host:>12.2f}")
    print(f"{'redeploy to 5 hosts, one parent job (s)':<52}{five_hosts:>12.2f}")
    print(f"{'5 hosts / 1 host':<52}{ratio:>12.2f}   <= 2.0")
    print(f"{f'bytes sent, one file changed in a {APP_MB} MB app':<52}{sent:>12,}")
    print(f"{'  as share of the app size (%)':<52}{share:>12.3f}   < 1%")
    ok = redeploy < 3 and ratio <= 2.0 and share < 1
    print("\nresult:", "targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
