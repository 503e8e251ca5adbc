from pathlib import Path

import pytest
from django.conf import settings

from tests.workers import Worker


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


@pytest.fixture(scope="session")
def worker(live_db):
    """A real Celery worker process on the test database and RabbitMQ."""
    w = Worker(Path(settings.VAR_DIR) / "worker.log")
    w.start(purge=True)
    yield w
    w.stop()
