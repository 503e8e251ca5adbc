"""Test settings: the production stack (PostgreSQL + RabbitMQ) on this machine.

Defaults only; the environment wins. The Celery worker processes the tests
start get the same values (tests/conftest.py passes them on).
"""

import glob
import os
import socket
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/toppcloud")
# A RabbitMQ vhost of this test run alone (tests/conftest.py makes and removes
# it), so a second run or a benchmark on the machine never takes its messages.
TEST_VHOST = f"toppcloud-test-{os.getpid()}"
os.environ.setdefault("CELERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:5672/{TEST_VHOST}")
os.environ.setdefault("SECRET_KEY", "test-secret-key-only-for-the-test-suite-0123456789")
os.environ.setdefault("TOPPCLOUD_LOG_KEY", "test-log-key-only-for-the-test-suite-0123456789")
# Made once, by the test run (its worker processes are given it): tests/conftest.py removes it at the end.
if "TOPPCLOUD_VAR_DIR" not in os.environ:
    os.environ["TOPPCLOUD_VAR_DIR"] = tempfile.mkdtemp(prefix=f"toppcloud-test-{os.getpid()}-")
os.environ.setdefault("TOPPCLOUD_SSH_CONTROL_DIR", f"/tmp/tc-test-{os.getpid()}")
# The control plane's web server for tests that need it over HTTP (tests/conftest.py: control_web):
# apps on the test hosts queue tasks there.
if "TOPPCLOUD_API_URL" not in os.environ:
    with socket.socket() as _s:
        _s.bind(("127.0.0.1", 0))
        os.environ["TOPPCLOUD_API_URL"] = f"http://127.0.0.1:{_s.getsockname()[1]}"
os.environ.setdefault("TOPPCLOUD_DEBUG_EMAIL", "errors@example.test")
# An S3-compatible service for static publishing: moto's server, started by the tests that use it
# (tests/conftest.py: s3_server) on this port; the workers get the same settings.
if "TOPPCLOUD_S3_ENDPOINT_URL" not in os.environ:
    with socket.socket() as _s:
        _s.bind(("127.0.0.1", 0))
        os.environ["TOPPCLOUD_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{_s.getsockname()[1]}"
os.environ.setdefault("TOPPCLOUD_S3_REGION", "us-east-1")
os.environ.setdefault("TOPPCLOUD_S3_ACCESS_KEY_ID", "toppcloud-test")
os.environ.setdefault("TOPPCLOUD_S3_SECRET_ACCESS_KEY", "s3-secret-of-the-test-suite-3f9a1c")
# Interpreters the nodes' /usr/bin lacks, for apps that ask for `python = 3.12`: this machine's pyenv one
# (under /root, so no app's user can run it) and the standalone build the Google Cloud SDK ships.
os.environ.setdefault("TOPPCLOUD_PYTHON_DIRS", ":".join(
    sorted(glob.glob("/root/.pyenv/versions/3.12.*/bin"))[-1:]
    + glob.glob("/usr/lib/google-cloud-sdk/platform/bundledpythonunix/bin")))
# Task retries a fraction of a second apart, so retry tests take seconds.
os.environ.setdefault("TOPPCLOUD_TASK_RETRY_DELAY", "0.2")
# Short enough that fault tests finish in seconds.
os.environ.setdefault("JOBS_LEASE_SECONDS", "3")
os.environ.setdefault("JOBS_RESEND_AFTER", "2")

from toppcloud_site.settings import *  # noqa: E402,F401,F403

# No collectstatic before tests: serve the admin's files unhashed.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True  # the test web server (gunicorn) serves the admin's CSS and JS from the apps' dirs

# A database of this run alone too, so two runs on one machine do not collide.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": f"test_toppcloud_{os.getpid()}"}  # noqa: F405
