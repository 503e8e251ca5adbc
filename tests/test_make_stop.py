"""`make run` in the background, then `make stop`: the embedded default for real, in a var directory of its own.

run_embedded starts its worker, beat, Flower and gunicorn and sets up the local node (its own supervisord
and nginx); a deploy of an app with service.postgresql gives the node a PostgreSQL cluster. `make stop`,
from another shell, must leave none of their processes, no running cluster and no port taken; a second
`make stop` finds nothing to do.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import hosts, workers
from tests.hosts import port_free

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "apps"


def embedded_env(var):
    """The embedded default (SQLite, the filesystem broker under var/): none of the test run's settings."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL")
    env = {k: v for k, v in os.environ.items() if k in keep}
    # A temporary directory of its own: a reconcile removes the unpack directories in the temporary
    # directory of every job its own database does not know as running (jobs/steps/reconcile.py), so
    # with the shared /tmp it would remove those of the test run's deploys (and of any other run here).
    (var / "tmp").mkdir()
    env.update({"DJANGO_SETTINGS_MODULE": "toppcloud_site.settings", "TOPPCLOUD_VAR_DIR": str(var),
                "TOPPCLOUD_SSH_CONTROL_DIR": str(var / "ssh"), "PYTHONPATH": str(ROOT), "TMPDIR": str(var / "tmp")})
    return env


def manage(env, *args, timeout=300):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def cluster_status(name):
    """{version: "online"/"down"} of the Debian clusters called `name` (pg_lsclusters)."""
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: line.split()[3] for line in out.splitlines() if line.split()[1:2] == [name]}


def test_make_stop_stops_everything_make_run_started_and_is_idempotent():
    hosts.hold_session_lock()  # clusters named tc-<pid>-... are this run's: another run drops them only once it ends
    var = Path(tempfile.mkdtemp(prefix=f"tc-embedded-{os.getpid()}-", dir="/tmp"))
    os.chmod(var, 0o755)  # nginx's workers reach the node root below it
    env = embedded_env(var)
    web, flower, node_port = workers.free_port(), workers.free_port(), workers.free_port()
    cluster, pg_port = f"tc-{os.getpid()}-embedded", hosts._free_pg_port("127.0.0.1", 5700, 50)
    app = f"emb{os.getpid() % 10000}"
    run, seen = None, set()
    try:
        for args in (["migrate", "--no-input"], ["bootstrap", "--no-setup", "--node-port", str(node_port)],
                     ["shell", "-c", "from toppcloud_site.records.models import Node; "
                                     f"Node.objects.filter(name='local').update(pg_cluster='{cluster}', "
                                     f"pg_port={pg_port})"]):
            done = manage(env, *args)
            assert done.returncode == 0, done.stdout + done.stderr
        out = var / "make-run.out"
        with open(out, "wb") as log:  # `make run &`: in the background, no terminal to press Ctrl-C in
            run = subprocess.Popen([sys.executable, "manage.py", "run_embedded", "--web-port", str(web),
                                    "--flower-port", str(flower), "--node-port", str(node_port)],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while b"toppcloud is running" not in out.read_bytes():
            assert run.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)

        src = var / "app"
        shutil.copytree(FIXTURES / "notes", src)
        ini = (src / "app.ini").read_text().replace("app_name = notes", f"app_name = {app}")
        (src / "app.ini").write_text(ini.replace("default_location = notes.test", f"default_location = {app}.test"))
        done = manage(env, "deploy", str(src), "--node", "local")
        assert done.returncode == 0, done.stdout + done.stderr
        assert cluster_status(cluster) and set(cluster_status(cluster).values()) == {"online"}

        # What runs now: run_embedded and its processes, the node's supervisord (nginx, the app) and the cluster.
        supervisord = int((var / "node/run/supervisor/supervisord.pid").read_text())
        [postmaster] = [int(p.read_text().split()[0]) for p in Path("/var/run/postgresql").glob(f"*-{cluster}.pid")]
        seen = _tree(run.pid) | _tree(supervisord) | {postmaster}
        seen |= _pids_of_groups(_groups(seen))
        assert len(seen) >= 10, seen  # main, 4 processes and their children, supervisord, nginx, the app, postgres

        started = time.monotonic()
        stop = subprocess.run(["make", "-s", "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert f"run_embedded (pid {run.pid})" in stop.stdout and "supervisord" in stop.stdout, stop.stdout
        assert "PostgreSQL cluster" in stop.stdout and cluster in stop.stdout, stop.stdout
        assert run.wait(timeout=10) == 0, out.read_text()[-3000:]
        assert [pid for pid in seen if hosts._pid_alive(pid)] == []
        assert set(cluster_status(cluster).values()) == {"down"}
        assert all(port_free("127.0.0.1", port) for port in (web, flower, node_port, pg_port))
        assert not (var / "run_embedded.json").exists()
        print(f"make stop took {took:.1f}s for {len(seen)} processes: {stop.stdout.strip()}")

        again = subprocess.run(["make", "-s", "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "nothing `make run` started is running" in again.stdout, again.stdout
    finally:
        if run is not None and run.poll() is None:
            seen |= _tree(run.pid)
        try:  # its processes run in sessions of their own: killing run_embedded alone leaves them
            seen |= _pids_of_groups(set(json.loads((var / "run_embedded.json").read_text())["processes"].values()))
        except (OSError, ValueError, KeyError):
            pass
        node = var / "node" / "run"
        for pidfile in (node / "supervisor/supervisord.pid", node / "nginx/nginx.pid"):  # a run that failed early
            pid = hosts._read_pid(str(pidfile))
            if pid and hosts._pid_alive(pid) and str(var) in hosts._cmdline(pid):
                seen |= _tree(pid)
        for pid in seen:
            if hosts._pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if run is not None:
            run.wait()
        hosts.drop_pg_cluster(cluster)
        hosts.drop_app_users(str(var / "node"))
        shutil.rmtree(var, ignore_errors=True)


def _tree(root):
    """root and every live process below it."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if hosts._pid_alive(pid):
            found.add(pid)
        todo += children.get(pid, [])
    return found


def _groups(pids):
    return {os.getpgid(pid) for pid in pids if hosts._pid_alive(pid)}


def _pids_of_groups(groups):
    """Every live process in these process groups (run_embedded starts each of its processes in its own)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) in groups and hosts._pid_alive(int(entry)):
                    found.add(int(entry))
            except ProcessLookupError:
                pass
    return found
