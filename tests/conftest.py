import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.conf import settings

from jobs.management.commands.ssh_key import ensure_key
from tests import balancer_group
from tests.hosts import start_hosts, stop_hosts
from tests.settings import TEST_VHOST
from tests.workers import Worker


def _rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def pytest_sessionstart(session):
    if settings.CELERY_BROKER_URL.endswith("/" + TEST_VHOST):
        _rabbitmqctl("add_vhost", TEST_VHOST)
        _rabbitmqctl("set_permissions", "-p", TEST_VHOST, "guest", ".*", ".*", ".*")


def pytest_sessionfinish(session, exitstatus):
    if settings.CELERY_BROKER_URL.endswith("/" + TEST_VHOST):
        _rabbitmqctl("delete_vhost", TEST_VHOST)
    # What this run made for itself (tests/settings.py): the ssh control sockets' directory, and the
    # var directory unless tests failed (its worker logs say why; the path is printed).
    if settings.TOPPCLOUD_SSH_CONTROL_DIR == f"/tmp/tc-test-{os.getpid()}":
        shutil.rmtree(settings.TOPPCLOUD_SSH_CONTROL_DIR, ignore_errors=True)
    var = Path(settings.VAR_DIR)
    if var.name.startswith(f"toppcloud-test-{os.getpid()}-"):
        if exitstatus == 0:
            shutil.rmtree(var, ignore_errors=True)
        else:
            print(f"\nworker logs and the run's files: {var}")


@pytest.fixture(scope="session")
def django_db_setup(request, django_test_environment, django_db_blocker):
    """Create the test database whatever tests were selected.

    pytest-django creates it only when a collected test has the django_db
    mark; tests that share committed data with a worker process use live_db
    instead, so the database is made here for every session.
    """
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False)
    yield
    with django_db_blocker.unblock():
        teardown_databases(config, verbosity=0)


@pytest.fixture(scope="session")
def live_db(django_db_setup, django_db_blocker):
    """Committed data the worker process can see.

    Events are append-only, so nothing is flushed between tests: tests that
    use this fixture name their records uniquely. The test database is
    dropped at the end of the session.
    """
    with django_db_blocker.unblock():
        yield


def pytest_collection_modifyitems(session, config, items):
    """Tests marked `last` run after all the others (the redaction scan looks at what they all left)."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.fixture(scope="session")
def canary_secret(live_db):
    """A global secret config value, CANARY_SECRET: every app deployed in the session has it."""
    from tests.helpers import CANARY
    from toppcloud_site.records.models import ConfigValue

    record = ConfigValue.objects.filter(scope="global", key="CANARY_SECRET").first() or ConfigValue(
        scope="global", key="CANARY_SECRET")
    record.set_value(CANARY, secret=True)
    record.save()
    return CANARY


@pytest.fixture(scope="session")
def worker(live_db, canary_secret):
    """Real Celery worker processes on the test database and RabbitMQ (apps they deploy get the canary):
    the one on the jobs and nodeops queues, yielded, and one of the cron queue's own."""
    w = Worker(Path(settings.VAR_DIR) / "worker.log")
    w.start(purge=True)
    cron = Worker(Path(settings.VAR_DIR) / "cron-worker.log", queues="cron", name="cron").start(purge=True)
    yield w  # the cron queue's worker of its own, as in production (docker-compose.yml: cron-worker)
    cron.stop()
    w.stop()


@pytest.fixture(scope="session")
def test_hosts():
    """Two real hosts: sshd on 127.0.0.x, each with its own host key and node root.

    Their directory is 0755 under /tmp: nginx workers (www-data) must reach
    the node roots, and ssh control socket paths must stay short.
    """
    base = tempfile.mkdtemp(prefix="tc-hosts-", dir="/tmp")
    os.chmod(base, 0o755)
    hosts = start_hosts(2, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    yield hosts
    stop_hosts(hosts)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def nodes(test_hosts, live_db):
    """A Node record for each test host, its host key pinned."""
    from toppcloud_site.records.models import Node

    records = []
    for host in test_hosts:
        node = Node(name=f"test-{host.name}-{os.getpid()}", address=host.address, ssh_port=host.ssh_port,
                    ssh_user=host.ssh_user, root=host.root, http_port=host.http_port, https_port=host.https_port,
                    host_key=host.host_key,
                    pg_cluster=host.pg_cluster, pg_port=host.pg_port)
        node.full_clean()
        node.save()
        records.append(node)
    return records


@pytest.fixture(scope="session")
def ready_nodes(nodes, worker):
    """The test hosts set up by real setup_node jobs (once a session), ready for deploys."""
    from jobs import actions
    from tests.helpers import wait_for_job

    for node in nodes:
        job = wait_for_job(actions.setup_node(node, actor_kind="system", actor="tests").pk, timeout=120)
        assert job.status == "succeeded", job.error
    return nodes


# A server group behind a real balancer (one lb + two app nodes), shared by the balancer tests.
lb_group = balancer_group.lb_group


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server at TOPPCLOUD_S3_ENDPOINT_URL (the workers publish static files there)."""
    from tests import workers

    server = workers.s3_server(settings.VAR_DIR, settings.TOPPCLOUD_S3_ENDPOINT_URL).start()
    yield settings.TOPPCLOUD_S3_ENDPOINT_URL
    server.stop()


@pytest.fixture(scope="session")
def control_web(live_db):
    """The control plane's web server, a real gunicorn, at TOPPCLOUD_API_URL (apps on test hosts call it)."""
    from tests import workers

    web = workers.web(settings.VAR_DIR, settings.TOPPCLOUD_API_URL).start()
    yield settings.TOPPCLOUD_API_URL
    web.stop()


@pytest.fixture
def flower(worker, tmp_path):
    """A real Flower process on the test broker; its API (tests/workers.py: FlowerApi) once its event
    receiver listens, since it sees only the events sent after that."""
    import time

    from jobs.engine import dispatch
    from tests import workers
    from tests.helpers import wait_until

    port, auth = workers.free_port(), "admin:flower-test"
    process = workers.flower(tmp_path, port, auth).start()
    api = workers.FlowerApi(port, auth)

    def listens():
        probe = dispatch.submit("noop", target="flower-probe", actor_kind="user", actor="tester")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if any(t["state"] == "SUCCESS" for t in api.of_job(probe.pk)):
                return True
            time.sleep(0.1)
        return False
    try:
        wait_until(listens, timeout=30, what="Flower to list a probe job")
        yield api
    finally:
        process.stop()
