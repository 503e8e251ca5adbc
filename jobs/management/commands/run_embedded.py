"""manage.py run_embedded: the whole of toppcloud on this machine (`make run`).

Starts a Celery worker, beat, Flower, the web server (gunicorn) and a warm
process for manage.py's commands (manage.py warm), sets up
the local node through a real job, prints the URLs, and stops everything on
Ctrl-C. With nothing configured this is the embedded default (SQLite and the
filesystem broker under var/).
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs.engine.follow import follow
from jobs.management.commands.bootstrap import admin_password
from jobs import actions, cli
from jobs.engine.states import ActorKind, Status
from toppcloud_site.records.models import Node


class Command(cli.Command):
    help = "Run worker, beat, Flower and web here; set up the local node; print the URLs."

    def add_arguments(self, parser):
        parser.add_argument("--web-port", type=int, default=8000)
        parser.add_argument("--flower-port", type=int, default=5555)
        parser.add_argument("--node-port", type=int, default=8081)

    def handle(self, web_port, flower_port, node_port, **opts):
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("bootstrap", node_port=node_port, no_setup=True, stdout=self.stdout)
        password = admin_password(settings.VAR_DIR)
        logs = settings.VAR_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        py = sys.executable
        commands = {
            "worker": [py, "-m", "celery", "-A", "toppcloud_site", "worker", "-Q", "jobs,nodeops,cron",
                       "-c", "2", "-E", "-l", "info", "-n", "embedded@%h"],
            "beat": [py, "-m", "celery", "-A", "toppcloud_site", "beat", "-l", "info"],
            "flower": [py, "-m", "celery", "-A", "toppcloud_site", "flower", "--address=127.0.0.1",
                       f"--port={flower_port}", f"--basic-auth=admin:{password}"],
            "web": [py, "-m", "gunicorn", "toppcloud_site.wsgi", "-b", f"127.0.0.1:{web_port}", "-w", "2"],
            # manage.py's commands fork from it: no start-up of their own (jobs/management/commands/warm.py)
            "warm": [py, str(settings.BASE_DIR / "manage.py"), "warm"],
        }
        procs = {}
        try:
            for name, argv in commands.items():
                log = open(logs / f"{name}.log", "ab")
                procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                self.stdout.write(f"started {name} (pid {procs[name].pid}), log {logs / (name + '.log')}")
            job = actions.setup_node(Node.objects.get(name="local"),
                                     actor_kind=ActorKind.SYSTEM, actor="run_embedded")
            self.stdout.write(f"setting up node local: job {job.pk}")
            job = follow(job.pk, self.stdout, timeout=300)
            if job.status != Status.SUCCEEDED:
                raise CommandError(f"the local node's setup job {job.pk} ended {job.status}: {job.error}")
            self.stdout.write(self.style.SUCCESS("\ntoppcloud is running"))
            self.stdout.write(f"  admin   http://127.0.0.1:{web_port}/   user admin, password {password}")
            self.stdout.write(f"  flower  http://127.0.0.1:{flower_port}/   same user and password")
            self.stdout.write(f"  node    http://127.0.0.1:{node_port}/.toppcloud/health   (node 'local', job {job.pk})")
            self.stdout.write("Ctrl-C stops everything.")
            self._wait(procs)
        finally:
            self._stop(procs)

    def _wait(self, procs):
        stopping = []
        signal.signal(signal.SIGTERM, lambda *a: stopping.append(True))
        try:
            while not stopping:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise CommandError(f"{name} exited with status {proc.returncode}; see var/logs/{name}.log")
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def _stop(self, procs):
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
