"""Real toppcloud processes for tests (worker, beat, web, Flower), started and stopped by pid."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def worker_env():
    """The test process's settings, so the worker sees the same database and broker."""
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": _test_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "TOPPCLOUD_VAR_DIR": str(settings.VAR_DIR),
        "TOPPCLOUD_SSH_KEY_FILE": settings.TOPPCLOUD_SSH_KEY_FILE,
        "TOPPCLOUD_SSH_CONTROL_DIR": settings.TOPPCLOUD_SSH_CONTROL_DIR,
        "JOBS_LEASE_SECONDS": str(settings.JOBS_LEASE_SECONDS),
        "JOBS_RESEND_AFTER": str(settings.JOBS_RESEND_AFTER),
        "PYTHONPATH": str(ROOT),
    })
    return env


def _test_database_url():
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


class Process:
    """A real toppcloud process for tests (worker, beat, the web server, Flower), started and stopped by pid.

    It runs in its own process group, so stop() and kill_group() reach its children too.
    """

    def __init__(self, name, argv, log_path, ready, extra_env=None):
        self.name, self.argv, self.log_path, self.ready = name, argv, Path(log_path), ready
        self.extra_env = extra_env or {}
        self.proc = None

    def start(self, timeout=60, extra_args=()):
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv + list(extra_args), cwd=ROOT, env={**worker_env(), **self.extra_env},
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.ready(self.log_path.read_bytes()[offset:]):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log()[-3000:]}")

    def log(self):
        return self.log_path.read_text(errors="replace")

    def kill_group(self, sig=signal.SIGKILL):
        """Kill the main process and its children at once, as a crash or OOM would."""
        os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Worker(Process):
    """A Celery worker on the test database and broker."""

    def __init__(self, log_path, queues="jobs,nodeops", concurrency=2, name="test"):
        super().__init__("worker", [sys.executable, "-m", "celery", "-A", "toppcloud_site", "worker", "-Q", queues,
                                    "-c", str(concurrency), "-E", "-l", "info", "-n", f"{name}-{os.getpid()}@%h"],
                         log_path, lambda out: b" ready." in out)

    def start(self, purge=False, timeout=60):
        return super().start(timeout, ["--purge"] if purge else [])


def beat(var_dir, extra_env=None):
    """celery beat on the database scheduler, waking at least every second (so new entries are seen at once)."""
    return Process("beat", [sys.executable, "-m", "celery", "-A", "toppcloud_site", "beat", "-l", "info",
                            "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1",
                            "--pidfile", str(Path(var_dir) / "beat.pid")],
                   Path(var_dir) / "beat.log", lambda out: b"beat: Starting" in out, extra_env=extra_env)


def web(var_dir, url):
    """The control plane's web server (gunicorn), at TOPPCLOUD_API_URL."""
    address = url.split("://", 1)[1].rstrip("/")
    return Process("web", [sys.executable, "-m", "gunicorn", "toppcloud_site.wsgi", "-b", address, "-w", "2",
                           "--access-logfile", "-"],
                   Path(var_dir) / "web.log", lambda out: b"Booting worker" in out)


def flower(var_dir, port, basic_auth):
    return Process("flower", [sys.executable, "-m", "celery", "-A", "toppcloud_site", "flower",
                              "--address=127.0.0.1", f"--port={port}", f"--basic-auth={basic_auth}"],
                   Path(var_dir) / "flower.log", lambda out: b"Visit me at" in out)


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlowerApi:
    """Flower's HTTP API (/api/tasks), as a person's script would read it: with basic auth."""

    def __init__(self, port, basic_auth):
        self.url = f"http://127.0.0.1:{port}/api/tasks"
        self.auth = "Basic " + base64.b64encode(basic_auth.encode()).decode()

    def tasks(self):
        """Every task Flower lists: {uuid: {"name", "state", "args", "exception", "result", ...}}."""
        request = urllib.request.Request(self.url, headers={"Authorization": self.auth})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def of_job(self, job_id):
        """The tasks Flower lists for a job (their args start `[<job id>] `)."""
        return [t for t in self.tasks().values() if (t.get("args") or "").startswith(f"[{job_id}] ")]


def s3_server(var_dir, url):
    """An S3-compatible service on this machine (moto's server: the one stand-in, for a cloud API), at url."""
    host, port = url.split("://", 1)[1].rstrip("/").split(":")
    return Process("s3", [sys.executable, "-m", "moto.server", "-H", host, "-p", port],
                   Path(var_dir) / "s3.log", lambda out: b"Running on" in out)
