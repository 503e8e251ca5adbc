"""What the benchmarks share: an empty database, a RabbitMQ vhost and a worker of their own."""

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def configure(name):
    """Environment for a benchmark called name: database and vhost of that name unless set already.

    What this makes (the database, the vhost, the var and ssh control directories) is removed when the
    benchmark's process exits, so a bench leaves the machine as it found it.
    """
    sys.path.insert(0, str(ROOT))
    made = [key for key in ("DATABASE_URL", "CELERY_BROKER_URL", "TOPPCLOUD_VAR_DIR", "TOPPCLOUD_SSH_CONTROL_DIR")
            if key not in os.environ]
    os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{name.replace('-', '_')}")
    os.environ.setdefault("CELERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:5672/{name}")
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-bench-secret-key-bench-secret-key")
    os.environ.setdefault("TOPPCLOUD_LOG_KEY", "bench-log-key-bench-log-key-bench-log-key-bench")
    os.environ.setdefault("TOPPCLOUD_VAR_DIR", tempfile.mkdtemp(prefix=f"{name}-"))
    os.environ.setdefault("TOPPCLOUD_SSH_CONTROL_DIR", tempfile.mkdtemp(prefix="tc-ssh-", dir="/tmp"))
    atexit.register(_remove, name, made)
    os.environ["DJANGO_SETTINGS_MODULE"] = "toppcloud_site.settings"
    _create_database()
    _create_vhost(name)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _remove(name, made):
    """At exit: drop what configure() made for this run (not what the environment named)."""
    if "DATABASE_URL" in made:
        drop_database()
    if "CELERY_BROKER_URL" in made:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True)
    for key in ("TOPPCLOUD_VAR_DIR", "TOPPCLOUD_SSH_CONTROL_DIR"):
        if key in made:
            shutil.rmtree(os.environ[key], ignore_errors=True)


def drop_database():
    """Drop the benchmark's database (DATABASE_URL), this process's connections to it closed first."""
    import psycopg2
    from django.db import connections

    connections.close_all()
    url = urlsplit(os.environ["DATABASE_URL"])
    con = psycopg2.connect(host=url.hostname, port=url.port or 5432, user=url.username, password=url.password,
                           dbname="postgres")
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{url.path.lstrip("/")}" WITH (FORCE)')
    con.close()


def _create_database():
    """An empty PostgreSQL database: a table grown by earlier runs skews the figures."""
    import psycopg2

    url = urlsplit(os.environ["DATABASE_URL"])
    if not url.scheme.startswith("postgres"):
        return
    con = psycopg2.connect(host=url.hostname, port=url.port or 5432, user=url.username, password=url.password,
                           dbname="postgres")
    con.autocommit = True
    name = url.path.lstrip("/")
    with con.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cur.fetchone():
            cur.execute(f'DROP DATABASE "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    con.close()


def _create_vhost(name):
    """The benchmark's own RabbitMQ vhost, so tests or a dev server on the machine do not share its queues."""
    if os.environ["CELERY_BROKER_URL"].endswith("/" + name):
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True)


def start_worker(log, queues, concurrency, include=()):
    """A Celery worker of this run, in its own process group; returns once it answers a ping."""
    name = f"bench-{os.getpid()}"
    argv = [sys.executable, "-m", "celery", "-A", "toppcloud_site", "worker", "-Q", queues, "-c", str(concurrency),
            "-l", "warning", "-n", f"{name}@%h", "--purge"]
    for module in include:
        argv += ["--include", module]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    from toppcloud_site.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if app.control.ping(destination=[f"{name}@{os.uname().nodename}"], timeout=0.5):
            return proc
        if proc.poll() is not None:
            sys.exit(f"worker exited: {Path(log).read_text()[-2000:]}")
    sys.exit("worker did not answer a ping in 60 s")


def stop_worker(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def ready_node(host):
    """A Node record for a test host, set up by a real setup_node job (the run ends if that fails)."""
    from jobs import actions
    from tests.helpers import wait_for_job
    from toppcloud_site.records.models import Node

    node = Node.objects.create(name=host.name, address=host.address, ssh_port=host.ssh_port, root=host.root,
                               http_port=host.http_port, host_key=host.host_key, pg_cluster=host.pg_cluster,
                               pg_port=host.pg_port)
    job = wait_for_job(actions.setup_node(node, actor_kind="system", actor="bench").pk, 180)
    if job.status != "succeeded":
        sys.exit(f"setup failed: {job.error}")
    return node


def run_job(kind, params, timeout=600):
    """Submit a job for params["app"] and wait for it; the run ends if it does not succeed."""
    from jobs import actions
    from tests.helpers import wait_for_job

    done = wait_for_job(actions.bench(kind, params).pk, timeout=timeout)
    if done.status != "succeeded":
        sys.exit(f"{kind} failed: {done.error}")
    return done


def deploy_dir(app_dir, node):
    """`manage.py deploy app_dir --node NODE`, quietly; the run ends if it fails."""
    from django.core.management import call_command

    try:
        call_command("deploy", str(app_dir), "--node", node.name, stdout=open(os.devnull, "w"))
    except SystemExit as exc:
        if exc.code:
            sys.exit(f"deploy of {Path(app_dir).name} failed")
