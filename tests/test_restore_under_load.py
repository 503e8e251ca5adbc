"""A restore and a checkpoint revert of a Django site under load: not one failed request through nginx.

The djsite fixture is a real Django app with persistent database connections
(CONN_MAX_AGE) whose page view reads a row. Four client threads request the
page through the test host's nginx while the swap happens; every response
must be a 200 with the body of the old or the new data.
"""

import http.client
import os
import statistics
import threading
import time

import pytest

from tests.test_data_flow import backup_now, psql, run_command
from tests.test_deploy_flow import app_copy, deploy

pytestmark = [pytest.mark.hosts, pytest.mark.worker]


class PageLoad:
    """`threads` clients requesting one URL through nginx until stopped; each answer is checked and timed."""

    def __init__(self, host, hostname, path, bodies, threads=4):
        self.host, self.hostname, self.path, self.bodies = host, hostname, path, set(bodies)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen, self.failures, self.latencies = {}, [], []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self):
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            start = time.perf_counter()
            conn = http.client.HTTPConnection(self.host.address, self.host.http_port, timeout=40)
            try:
                conn.request("GET", self.path, headers={"Host": self.hostname})
                response = conn.getresponse()
                status, body = response.status, response.read().decode(errors="replace")
                failed = None if status == 200 and body in self.bodies else f"{status} {body[:200]!r}"
            except OSError as exc:
                body, failed = None, f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
            with self.lock:
                self.latencies.append(time.perf_counter() - start)
                if failed:
                    self.failures.append(failed)
                else:
                    self.seen[body] = self.seen.get(body, 0) + 1

    def requests(self):
        return len(self.latencies)

    def percentile(self, p):
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0

    def summary(self):
        return {"requests": self.requests(), "failed": len(self.failures),
                "p50": statistics.median(self.latencies) if self.latencies else 0.0,
                "p99": self.percentile(0.99), "max": max(self.latencies, default=0.0)}

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.5)  # the load is running before the swap starts
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)  # and still running after it
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def page_body(host, name):
    conn = http.client.HTTPConnection(host.address, host.http_port, timeout=10)
    try:
        conn.request("GET", "/page/home", headers={"Host": f"{name}.test"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def djsite(tmp_path_factory, ready_nodes, test_hosts):
    """The djsite fixture deployed on the first test host (its migration made the page "welcome")."""
    name = f"djsite{os.getpid() % 100000}"
    code, job = deploy(app_copy(tmp_path_factory.mktemp("djsite"), "djsite", name=name), ready_nodes[0])
    assert code == 0, job.error
    assert page_body(test_hosts[0], name) == (200, "welcome\n")
    return name


def test_it_restores_under_load_without_a_failed_request(djsite, ready_nodes, test_hosts):
    name, host, node = djsite, test_hosts[0], ready_nodes[0]
    backup, _ = backup_now(name)
    psql(node, name, "UPDATE pages_page SET body = 'edited since the backup\n' WHERE slug = 'home'")
    assert page_body(host, name) == (200, "edited since the backup\n")

    with PageLoad(host, f"{name}.test", "/page/home", ["welcome\n", "edited since the backup\n"]) as load:
        code, job = run_command("restore", backup.name, name, "--no-checkpoint")
    assert (code, len(load.failures)) == (0, 0), (f"{len(load.failures)} of {load.requests()} requests failed: "
                                                  f"{load.failures[:5]}; the job: {job.error}")
    swapped = job.events.get(kind="restore.swapped").data
    assert swapped["held"]["seconds"] < 10 and "undrained" not in swapped["held"], swapped
    assert load.seen.get("edited since the backup\n") and load.requests() >= 20, load.seen
    assert page_body(host, name) == (200, "welcome\n")  # the restored data, on fresh connections


def test_it_reverts_a_failed_database_update_under_load_without_a_failed_request(djsite, ready_nodes, test_hosts,
                                                                                 tmp_path):
    name, host, node = djsite, test_hosts[0], ready_nodes[0]
    psql(node, name, "UPDATE pages_page SET body = 'welcome\n' WHERE slug = 'home'")
    bad = app_copy(tmp_path, "djsite", name=name, version="2")
    # Not atomic: the row is changed and stays changed when the migration then fails.
    (bad / "pages" / "migrations" / "0002_broken.py").write_text(
        "from django.db import migrations\n\n\n"
        "def clobber(apps, schema_editor):\n"
        "    apps.get_model('pages', 'Page').objects.filter(slug='home').update(body='clobbered\\n')\n"
        "    raise RuntimeError('migration 0002 failed half-way')\n\n\n"
        "class Migration(migrations.Migration):\n"
        "    atomic = False\n"
        "    dependencies = [('pages', '0001_initial')]\n"
        "    operations = [migrations.RunPython(clobber)]\n")

    with PageLoad(host, f"{name}.test", "/page/home", ["welcome\n", "clobbered\n"]) as load:
        code, job = deploy(bad, node)
    assert len(load.failures) == 0, (f"{len(load.failures)} of {load.requests()} requests failed: "
                                     f"{load.failures[:5]}; the job: {job.error}")
    assert code == 1 and "migration 0002 failed half-way" in job.error, job.error
    assert "the data were restored from checkpoint" in job.error
    assert job.events.filter(kind="restore.swapped").count() == 1
    assert load.requests() >= 20, load.seen
    assert page_body(host, name) == (200, "welcome\n")
