"""manage.py run_embedded: the whole of toppcloud on this machine (`make run`); with --stop, `make stop`.

Starts a Celery worker, beat, Flower, the web server (gunicorn) and a warm
process for manage.py's commands (manage.py warm), sets up
the local node through a real job and prints the URLs. With nothing
configured this is the embedded default (SQLite and the filesystem broker
under var/). What it started is written to var/run_embedded.json (pids);
Ctrl-C or SIGTERM stops those processes.

`run_embedded --stop` (make stop), from any shell, stops everything `make
run` started, whether it runs in a terminal or in the background: these
processes (by their pids, checked to be ours), the local node's supervisord
(with the nginx and app processes it keeps up) and the node's PostgreSQL
cluster (stopped, its data kept). Nothing running: it says so and exits 0.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError

from jobs import actions, cli
from jobs.engine.follow import follow
from jobs.engine.runner import _pid_alive as _alive  # a zombie counts as gone
from jobs.engine.states import ActorKind, Status
from jobs.management.commands.bootstrap import admin_password
from nodeops.layout import NodeLayout
from nodeops.setup import unit_name
from toppcloud_site.records.models import Node

# What each process run_embedded starts has on its command line (a pid reused by another program is left alone):
# `-A toppcloud_site` or `toppcloud_site.wsgi`, or manage.py for its own commands.
OURS = ("toppcloud_site", "manage.py")


class Command(cli.Command):
    help = "Run worker, beat, Flower and web here; set up the local node; print the URLs. --stop: stop all of it."

    def add_arguments(self, parser):
        parser.add_argument("--web-port", type=int, default=8000)
        parser.add_argument("--flower-port", type=int, default=5555)
        parser.add_argument("--node-port", type=int, default=8081)
        parser.add_argument("--stop", action="store_true",
                            help="stop everything `make run` started here: its processes, the local node's "
                                 "supervisord, nginx and PostgreSQL cluster")

    def handle(self, web_port, flower_port, node_port, stop, **opts):
        if stop:
            return self.stop_everything()
        running = read_state()
        if running and _running(running["pid"], "run_embedded"):
            raise CommandError(f"toppcloud already runs here (pid {running['pid']}, {state_file()}): "
                               "`make stop` stops it")
        procs = {}
        signal.signal(signal.SIGTERM, _interrupt)  # `make stop`: the same as Ctrl-C, at any moment
        try:
            write_state(procs)
            self.start(procs, web_port, flower_port, node_port)
            self._wait(procs)
        except KeyboardInterrupt:
            pass
        finally:
            self._stop(procs)
            state_file().unlink(missing_ok=True)

    def start(self, procs, web_port, flower_port, node_port):
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
        for name, argv in commands.items():
            with open(logs / f"{name}.log", "ab") as log:
                procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            write_state(procs)
            self.stdout.write(f"started {name} (pid {procs[name].pid}), log {logs / (name + '.log')}")
        job = actions.setup_node(Node.objects.get(name="local"), actor_kind=ActorKind.SYSTEM, actor="run_embedded")
        self.stdout.write(f"setting up node local: job {job.pk}")
        job = follow(job.pk, self.stdout, timeout=300)
        if job.status != Status.SUCCEEDED:
            raise CommandError(f"the local node's setup job {job.pk} ended {job.status}: {job.error}")
        self.stdout.write(self.style.SUCCESS("\ntoppcloud is running"))
        self.stdout.write(f"  admin   http://127.0.0.1:{web_port}/   user admin, password {password}")
        self.stdout.write(f"  flower  http://127.0.0.1:{flower_port}/   same user and password")
        self.stdout.write(f"  node    http://127.0.0.1:{node_port}/.toppcloud/health   (node 'local', job {job.pk})")
        self.stdout.write("`make stop` (from any shell) stops everything; Ctrl-C here stops all but the local node.")
        self.stdout.flush()  # `make run > log &` shows it now

    def _wait(self, procs):
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise CommandError(f"{name} exited with status {proc.returncode}; see var/logs/{name}.log")
            time.sleep(0.5)

    def _stop(self, procs):
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} (pid {proc.pid}) did not stop within 20 s of SIGTERM: killed")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # --- make stop ------------------------------------------------------------------------------------

    def stop_everything(self):
        stopped = self.stop_processes() + self.stop_local_node()
        stopped += close_ssh_masters(settings.TOPPCLOUD_SSH_CONTROL_DIR)
        if stopped:
            self.stdout.write("stopped " + "; ".join(stopped))
        else:
            self.stdout.write("nothing `make run` started is running")

    def stop_processes(self):
        """run_embedded itself (it stops what it started), then any of its processes that outlived it."""
        state, stopped = read_state(), []
        if state is None:
            return stopped
        main = state["pid"]
        if _running(main, "run_embedded"):
            began = time.monotonic()
            os.kill(main, signal.SIGTERM)
            _wait_gone(main, 60)
            stopped.append(f"run_embedded (pid {main}) and its worker, beat, Flower and web "
                           f"({time.monotonic() - began:.1f}s)")
        for name, pid in state["processes"].items():  # left behind by a run_embedded that was killed
            if any(_running(pid, mark) for mark in OURS):
                _terminate_group(pid)
                stopped.append(f"{name} (pid {pid})")
        if _running(main, "run_embedded"):
            raise CommandError(f"run_embedded (pid {main}) did not stop within 60 s")
        state_file().unlink(missing_ok=True)
        return stopped

    def stop_local_node(self):
        """The node `local` (bootstrap's): its supervisord (nginx, apps, sampler) and its PostgreSQL cluster."""
        try:
            node = Node.objects.filter(name="local", transport=Node.Transport.LOCAL).first()
        except DatabaseError:  # never migrated: make run never ran here
            return []
        if node is None:
            return []
        stopped, layout = [], NodeLayout(node.root)
        unit = unit_name(layout)
        if os.path.isdir("/run/systemd/system") and os.path.exists(f"/etc/systemd/system/{unit}"):
            active = subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0
            if active:
                subprocess.run(["systemctl", "stop", unit], check=True)
                stopped.append(f"the local node's systemd unit {unit}")
        supervisord = _pid_in(layout.supervisor_pid)
        if _running(supervisord, layout.supervisor_conf):
            began = time.monotonic()
            os.kill(supervisord, signal.SIGTERM)  # it stops its programs first: nginx (QUIT), apps, sampler
            if not _wait_gone(supervisord, 90):
                raise CommandError(f"the local node's supervisord (pid {supervisord}) did not stop within 90 s")
            stopped.append(f"the local node's supervisord (pid {supervisord}) and what it ran "
                           f"({time.monotonic() - began:.1f}s)")
        nginx = _pid_in(layout.nginx_pid)
        if _running(nginx, layout.nginx_conf):  # outlived its supervisord
            os.kill(nginx, signal.SIGQUIT)
            if not _wait_gone(nginx, 30):
                os.kill(nginx, signal.SIGKILL)
            stopped.append(f"the local node's nginx (pid {nginx})")
        return stopped + stop_cluster(node.pg_cluster)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_cluster(name):
    """Stop the node's Debian PostgreSQL cluster `name` (any version) if it runs; its data stay."""
    stopped = []
    for conf_dir in sorted(glob.glob(f"/etc/postgresql/*/{glob.escape(name)}/postgresql.conf")):
        version = conf_dir.split("/")[3]
        if subprocess.run(["pg_ctlcluster", version, name, "status"], capture_output=True).returncode != 0:
            continue  # not running
        done = subprocess.run(["pg_ctlcluster", "-m", "fast", version, name, "stop"], capture_output=True, text=True)
        if done.returncode != 0:
            raise CommandError(f"pg_ctlcluster could not stop the local node's cluster {version}/{name}: "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        stopped.append(f"the local node's PostgreSQL cluster {version}/{name}")
    return stopped


def close_ssh_masters(control_dir):
    """The workers' ssh ControlMaster connections to nodes (they would linger ControlPersist seconds)."""
    closed = 0
    for path in glob.glob(os.path.join(glob.escape(control_dir), "*")):
        done = subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", "toppcloud-node"],
                              capture_output=True, timeout=10)
        closed += done.returncode == 0
    return [f"{closed} ssh connection(s) to nodes"] if closed else []


# --- the state file and pids ----------------------------------------------------------------------------

def state_file():
    return settings.VAR_DIR / "run_embedded.json"


def read_state():
    try:
        state = json.loads(state_file().read_text())
        return {"pid": int(state["pid"]), "processes": {str(k): int(v) for k, v in state["processes"].items()}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_state(procs):
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps({"pid": os.getpid(), "processes": {n: p.pid for n, p in procs.items()}}))
    staged.replace(path)


def _pid_in(path):
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _running(pid, mark):
    """True if pid is a live process (not a zombie) whose command line holds `mark`: ours, not a reused pid."""
    if not pid or not _alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return mark.encode() in f.read().replace(b"\0", b" ")
    except OSError:
        return False


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _terminate_group(pid):
    """SIGTERM the process group `pid` leads (run_embedded starts each process in a session of its own)."""
    try:
        os.killpg(pid, signal.SIGTERM)
        if not _wait_gone(pid, 20):
            os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
    except ProcessLookupError:
        pass
