"""toppcloud-exec: run an app's code on a node in the release's environment.

Every way an app's code runs on a node goes through this one script: the
web process (gunicorn under supervisord), cron scripts, one-off `run`
commands and database-update scripts. So all of them get exactly the same
environment, the release's env file, and nothing else: not whatever the
ssh session, cron or supervisord happened to have.

It is shipped to each node as this one file (`<root>/bin/toppcloud-exec`)
and run by the node's system python (`/usr/bin/python3 -I ...`), so it uses
the standard library only and runs on Python 3.9 and later. It imports
nothing from toppcloud.

    toppcloud-exec [--user NAME] [--chdir DIR] [--timeout SECONDS] [--kill-grace SECONDS]
                   [--log FILE] [--label TEXT] [--watch-stdin]
                   ENV_FILE -- PROGRAM [ARG...]

--user NAME: started as root, this script first becomes NAME (its
groups, then its uid: initgroups, setgid, setuid), before it reads the env
file or opens the log, so app code never runs as root and everything the
command touches is touched as the app (125 if it cannot). Started as any
other user (NAME itself, by supervisord's `user=`; the ssh user of a node
whose ssh user is not root), nothing changes.

The environment is {"LANG": "C.UTF-8"} updated with the variables of
ENV_FILE (KEY='value' lines as nodeops.release.render_env writes them).
PROGRAM is looked up on that environment's PATH (os.defpath if the file
sets none) after changing to --chdir DIR.

Exec mode (none of --timeout, --log, --watch-stdin): this process is
replaced by the program (os.execve). Signals from supervisord reach the
program directly; gunicorn is started this way.

Supervise mode (any of --timeout, --log, --watch-stdin): the program runs
as a child in its own session, stdin /dev/null, its stdout and stderr
merged into one pipe that is relayed as it comes to this process's stdout
and, with --log, appended to FILE between a header line and an exit line.
This process becomes a child subreaper, so whatever the command starts
(background jobs, double forks) stays findable; all of it is stopped
(SIGTERM, --kill-grace seconds, SIGKILL) when:

    --timeout passes                      exit 124 (like coreutils timeout)
    --watch-stdin: stdin reaches EOF      exit 129: the caller (an ssh
      or fails, or SIGHUP arrives           session) went away. What
                                            arrives on stdin is discarded.
    SIGTERM or SIGINT arrives             exit 128+N, "signalled" in the report
    the program exits on its own          its exit status; processes it left
                                            running ("leftovers") are stopped:
                                            they never outlive the command

Otherwise the exit status is the program's: its exit code, or 128+N if
signal N killed it. Problems before the program runs: 125 (bad usage,
unreadable env file or log, missing --chdir directory), 126 (program not
executable), 127 (program not found), as a shell would.

In supervise mode the last line written to stderr is always a report the
control plane parses, compact JSON after "toppcloud-exec: ":

    toppcloud-exec: {"rc":0,"signal":null,"timed_out":false,"caller_gone":false,
                     "leftovers":0,"seconds":0.012,"signalled":null,"exit":0}

rc is the program's exit code (null if a signal killed it; the
125/126/127 status if it never ran), signal the name of the signal that
killed it, leftovers the number of processes other than the program
itself that had to be stopped, signalled the signal (SIGTERM, SIGINT) that
made this script stop the command, exit this script's exit status. Every
other stderr line of this script is "toppcloud-exec: " and words; the
command's own output never goes to stderr.
"""

import argparse
import ctypes
import fcntl
import ipaddress
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

PROG = "toppcloud-exec"

EXIT_TIMEOUT = 124
EXIT_USAGE = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_CALLER_GONE = 128 + signal.SIGHUP  # 129

BASE_ENV = {"LANG": "C.UTF-8"}
POLL_SECONDS = 0.05  # how soon exits, timeouts, EOF and signals are noticed
DEFAULT_KILL_GRACE = 5.0
READ_SIZE = 65536
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
LOG_MODE = 0o640
LOG_DIR_MODE = 0o750

# Options that take a value: the word after them is never the "--" that
# ends the options.
VALUE_OPTIONS = ("--user", "--chdir", "--timeout", "--kill-grace", "--log", "--label")
SUPERVISE_OPTIONS = ("--timeout", "--log", "--watch-stdin")


class ExecError(Exception):
    """The command cannot run: a message for stderr and an exit status."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def say(message):
    """A message on stderr. Never starts with "{": only the report does."""
    try:
        os.write(2, ("%s: %s\n" % (PROG, message)).encode("utf-8", "replace"))
    except OSError:
        pass


# --- command line ---------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ExecError("%s (see %s --help)" % (message, PROG), EXIT_USAGE)


def positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("%r is not a positive number of seconds" % text)
    return value


def grace_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("%r is not a number of seconds >= 0" % text)
    return value


def make_parser():
    p = Parser(
        prog=PROG,
        allow_abbrev=False,
        description="Run PROGRAM in the environment of ENV_FILE (and nothing else).",
    )
    p.add_argument("--user", metavar="NAME", help="run as this user (started as root: become it first)")
    p.add_argument("--chdir", metavar="DIR", help="working directory of the command")
    p.add_argument("--timeout", metavar="SECONDS", type=positive_seconds,
                   help="stop the command and everything it started after SECONDS (exit 124)")
    p.add_argument("--kill-grace", metavar="SECONDS", type=grace_seconds, default=DEFAULT_KILL_GRACE,
                   help="seconds between SIGTERM and SIGKILL when stopping (default %(default)s)")
    p.add_argument("--log", metavar="FILE", help="also append the command's output to FILE (0640)")
    p.add_argument("--label", metavar="TEXT", help="what the log's header line calls the run (default: the command)")
    p.add_argument("--watch-stdin", action="store_true",
                   help="stdin is the caller's channel: at its EOF stop the command (exit 129)")
    p.add_argument("env_file", metavar="ENV_FILE", help="the release's env file (KEY='value' lines)")
    return p


def split_command(argv):
    """(option words, command words after "--") or (argv, None) if no "--"."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[:i], argv[i + 1:]
        i += 2 if word in VALUE_OPTIONS else 1
    return argv, None


def parse_args(argv):
    head, command = split_command(argv)
    parser = make_parser()
    args = parser.parse_args(head)
    if not command:
        parser.error("missing '-- PROGRAM [ARG...]'")
    args.command = command
    args.supervise = args.timeout is not None or args.log is not None or args.watch_stdin
    return args


def wants_supervise(argv):
    """Whether argv asks for supervise mode, read without argparse (for usage errors)."""
    head, _ = split_command(argv)
    return any(word.split("=", 1)[0] in SUPERVISE_OPTIONS for word in head)


# --- environment and program ----------------------------------------------


def parse_env(text):
    """The variables of an env file; the same as nodeops.release.parse_env."""
    env = {}
    for word in shlex.split(text, comments=True):
        key, _, value = word.partition("=")
        env[key] = value
    return env


def read_env(path):
    """The command's whole environment: LANG=C.UTF-8 updated with the file's variables."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        variables = parse_env(text)
    except OSError as e:
        raise ExecError("cannot read env file %s: %s" % (path, e.strerror or e), EXIT_USAGE)
    except (UnicodeDecodeError, ValueError) as e:
        raise ExecError("cannot parse env file %s: %s" % (path, e), EXIT_USAGE)
    for key, value in variables.items():
        if not key or "\0" in key or "\0" in value:
            raise ExecError("env file %s sets an invalid variable %r" % (path, key), EXIT_USAGE)
    env = dict(BASE_ENV)
    env.update(variables)
    return env


# Variables gunicorn's master sets for itself; reload_environment keeps them.
GUNICORN_OWN = ("SERVER_SOFTWARE",)


def reload_environment(path):
    """Make this process's environment the env file's again (gunicorn's own variables kept).

    The gunicorn config file of a release calls this when gunicorn reads it:
    at start and on every HUP. `manage.py config apply` rewrites the env file
    and sends HUP, so the workers gunicorn then starts see the new values and
    nothing of the old ones, while the old workers finish their requests.
    """
    env = read_env(path)
    for key in [k for k in os.environ if k not in env and k not in GUNICORN_OWN]:
        del os.environ[key]
    os.environ.update(env)


# --- the client's address ---------------------------------------------------

# The node's own nginx: gunicorn listens on 127.0.0.1 only, so every request comes from there.
NGINX_PEERS = ("127.0.0.1", "::1")


def real_client_address(worker):
    """gunicorn's post_worker_init: the app's REMOTE_ADDR is the client nginx believes, not nginx itself.

    gunicorn sets REMOTE_ADDR to the socket's peer, which behind the node's
    nginx is always 127.0.0.1. nginx sends X-Real-IP: the connection's own
    address, or the load balancer's X-Forwarded-For when the connection
    comes from the balancer (nodeops/frontdoor.py); a value that is not an
    IP address is not used. Requests from the node itself without it (cron,
    tasks) keep 127.0.0.1.
    """
    app = worker.wsgi

    def application(environ, start_response):
        real = environ.get("HTTP_X_REAL_IP")
        if real and environ.get("REMOTE_ADDR") in NGINX_PEERS:
            try:
                environ["REMOTE_ADDR"] = str(ipaddress.ip_address(real.strip()))
            except ValueError:
                pass
        return app(environ, start_response)

    worker.wsgi = application


# --- holding requests while the app's data are swapped -----------------------

HOLD_MAX_SECONDS = 30.0  # never hold a request longer, whatever a swap left behind
HOLD_POLL_SECONDS = 0.005


class RequestGate:
    """gunicorn's pre_request/post_request for one app: hold requests while a restore swaps its data.

    The gate file (<root>/apps/<app>/requests.gate) is written by the swap
    (nodeops/hostside/node_data.py _requests_held): while it holds a deadline, a new
    request waits here (at most until that deadline, and HOLD_MAX_SECONDS);
    each request in flight holds a shared flock on it, so the swap's
    exclusive lock means "none in flight". After a swap the file's mtime is
    new: the thread then closes its Django database connections (the swap
    terminated them) before the app runs, so a persistent connection
    (CONN_MAX_AGE) never meets a terminated backend. Each thread has its own
    descriptor (flock locks belong to an open file). Anything that goes wrong
    here lets the request through: the gate must never fail a request itself.
    """

    def __init__(self, path):
        self.path = path
        self.local = threading.local()
        try:  # made at start (root can), so no request is ever in flight untracked; else the first swap makes it
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        except OSError:
            pass

    def _fd(self):
        fd = getattr(self.local, "fd", None)
        if fd is None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                return None
            self.local.fd, self.local.seen = fd, None
        return fd

    def _held_until(self, fd):
        if os.fstat(fd).st_size == 0:
            return 0.0
        try:
            return float(os.pread(fd, 64, 0).decode().strip() or 0)
        except ValueError:
            return 0.0

    def pre_request(self, worker, req):
        try:
            fd = self._fd()
            if fd is None:
                return
            give_up = time.monotonic() + HOLD_MAX_SECONDS
            while time.time() < self._held_until(fd) and time.monotonic() < give_up:
                time.sleep(HOLD_POLL_SECONDS)
            while time.monotonic() < give_up:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    self.local.locked = True
                    break
                except BlockingIOError:  # a swap got its lock first: wait for it too
                    time.sleep(HOLD_POLL_SECONDS)
            mtime = os.fstat(fd).st_mtime_ns
            if mtime != self.local.seen:
                # None: this thread's first look; it may have connected before the gate existed.
                self.local.seen = mtime
                close_django_connections()
        except Exception as e:
            say("request gate %s: %r; the request goes on" % (self.path, e))

    def post_request(self, worker, req, environ, resp):
        if getattr(self.local, "locked", False):
            self.local.locked = False
            try:
                fcntl.flock(self.local.fd, fcntl.LOCK_UN)
            except OSError:
                pass


def close_django_connections():
    """Close this thread's Django database connections, if the app is a Django app (else nothing)."""
    db = sys.modules.get("django.db")
    if db is not None:
        db.connections.close_all()


def become(name):
    """Started as root: become user `name` (its groups, gid, then uid). Otherwise nothing changes."""
    if os.geteuid() != 0:
        return  # not root: the command runs as the caller, who cannot become anyone else
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ExecError("user %s does not exist on this node: deploy the app (or run setup_node) to make it"
                         % name, EXIT_USAGE)
    if pw.pw_uid == 0:
        raise ExecError("user %s is root: app code never runs as root" % name, EXIT_USAGE)
    try:
        os.initgroups(name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as e:
        raise ExecError("cannot become user %s: %s" % (name, e.strerror or e), EXIT_USAGE)


def change_dir(path):
    try:
        os.chdir(path)
    except OSError as e:
        raise ExecError("cannot change to directory %s: %s" % (path, e.strerror or e), EXIT_USAGE)


def find_program(name, env):
    """The file PROGRAM names, looked up on the env's PATH like a shell does."""
    if "/" in name:
        candidates = [name]
        where = ""
    else:
        search = env.get("PATH", os.defpath)
        candidates = [os.path.join(d or ".", name) for d in search.split(os.pathsep)]
        where = " on PATH %s" % search
    denied = None
    for path in candidates:
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = denied or path
    if denied:
        raise ExecError("cannot execute %s: permission denied" % denied, EXIT_CANNOT_EXECUTE)
    raise ExecError("program %s not found%s" % (name, where), EXIT_NOT_FOUND)


def start_failure(name, e):
    """A ExecError for an OSError from exec: 127 for a missing file (or interpreter), else 126."""
    status = EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else EXIT_CANNOT_EXECUTE
    return ExecError("cannot execute %s: %s" % (name, e.strerror or e), status)


def restore_signals():
    """Python ignores SIGPIPE and SIGXFSZ; ignored signals survive exec, so undo that."""
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def run_exec(args):
    """Exec mode: become the program. Returns only if that fails."""
    if args.user:
        become(args.user)
    env = read_env(args.env_file)
    if args.chdir:
        change_dir(args.chdir)
    path = find_program(args.command[0], env)
    restore_signals()
    try:
        os.execve(path, args.command, env)
    except OSError as e:
        raise start_failure(args.command[0], e)


# --- processes ------------------------------------------------------------


def become_subreaper():
    """Orphans of the command's processes get re-parented to this process."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:  # no prctl: process group and parent chains still find most
        pass


def process_table():
    """{pid: (state, ppid, pgrp, name)} from /proc/*/stat."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                data = f.read()
            # "pid (name) state ppid pgrp ...": the name may hold spaces and ")".
            name = data[data.index(b"(") + 1:data.rindex(b")")].decode("utf-8", "replace")
            fields = data[data.rindex(b")") + 2:].split()
            table[int(entry)] = (fields[0].decode(), int(fields[1]), int(fields[2]), name)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
    return table


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %d" % number


class Supervisor:
    """Supervise mode: run the command, relay its output, stop it and all it started."""

    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.proc = None
        self.out = None  # read end of the command's output pipe
        self.log = None  # fd of --log FILE
        self.relay_stdout = True
        self.status = None  # the command's wait status once reaped
        self.timed_out = False
        self.caller_gone = False
        self.signalled = None
        self.leftovers = 0
        self.stopping = False  # signals that arrive from here on change nothing

    # Output ---------------------------------------------------------------

    def write_log(self, data):
        if self.log is None:
            return
        try:
            write_all(self.log, data)
        except OSError as e:
            self.log = None
            say("cannot write log %s: %s; output goes on to stdout only" % (self.args.log, e.strerror or e))

    def relay(self, data):
        if self.relay_stdout:
            try:
                write_all(1, data)
            except OSError:
                self.relay_stdout = False  # nobody reads stdout any more; the log still gets it
        self.write_log(data)

    def notice(self, message):
        """A message of this script: on stderr and in the log."""
        say(message)
        self.write_log(("%s: %s\n" % (PROG, message)).encode("utf-8", "replace"))

    def open_log(self):
        path = self.args.log
        try:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, mode=LOG_DIR_MODE, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, LOG_MODE)
                os.fchmod(fd, LOG_MODE)  # whatever the umask
            except FileExistsError:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise ExecError("cannot open log %s: %s" % (path, e.strerror or e), EXIT_USAGE)
        self.log = fd
        label = self.args.label or shlex.join(self.args.command)
        label = label.replace("\r", " ").replace("\n", " ")
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.write_log(("=== %s %s ===\n" % (now, label)).encode("utf-8", "replace"))

    # Processes --------------------------------------------------------------

    def main_alive(self):
        return self.proc is not None and self.status is None

    def strays(self):
        """{pid: name} of live processes of the command, the program itself included.

        Every process whose parent chain leads here (as a subreaper, orphans
        are re-parented here), plus the command's process group.
        """
        table = process_table()
        me = os.getpid()
        group = self.proc.pid if self.proc else None
        found = {}
        for pid, (state, ppid, pgrp, name) in table.items():
            if pid == me or state in ("Z", "X"):
                continue
            if pgrp == group:
                found[pid] = name
                continue
            seen = set()
            parent = ppid
            while parent and parent not in seen:
                if parent == me:
                    found[pid] = name
                    break
                seen.add(parent)
                parent = table[parent][1] if parent in table else 0
        return found

    def send(self, signum, pids):
        if self.main_alive():
            try:
                os.killpg(self.proc.pid, signum)
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    def reap(self):
        """Collect every exited child: the program's status, and orphans' as subreaper."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.proc is not None and pid == self.proc.pid:
                self.status = status
                self.proc.returncode = exit_code(status)  # so Popen never waits for it

    def pump(self, timeout, watch_stdin=False):
        """Wait up to `timeout` for output or stdin, relay what came, reap exits."""
        fds = []
        if self.out is not None:
            fds.append(self.out)
        if watch_stdin and not self.caller_gone:
            fds.append(0)
        if fds:
            try:
                ready = select.select(fds, [], [], timeout)[0]
            except (OSError, ValueError):
                ready = [0] if 0 in fds else []  # stdin unusable: read() fails: the caller is gone
                time.sleep(timeout)
        else:
            ready = []
            time.sleep(timeout)
        if self.out is not None and self.out in ready:
            try:
                data = os.read(self.out, READ_SIZE)
            except OSError:
                data = b""
            if data:
                self.relay(data)
            else:
                self.close_output()
        if 0 in ready:
            try:
                data = os.read(0, READ_SIZE)  # whatever the caller sends is discarded
            except OSError:
                data = b""
            if not data:
                self.caller_gone = True
        self.reap()

    def drain(self):
        """Relay what is already in the pipe, then close it: never wait for a writer."""
        while self.out is not None:
            try:
                ready = select.select([self.out], [], [], 0)[0]
            except (OSError, ValueError):
                ready = []
            if not ready:
                self.close_output()
                return
            self.pump(0)

    def close_output(self):
        if self.out is not None:
            os.close(self.out)
            self.out = None

    def stop(self):
        """SIGTERM the command and all its processes, SIGKILL what is left after the grace."""
        self.send(signal.SIGTERM, self.strays())
        deadline = time.monotonic() + self.args.kill_grace
        while time.monotonic() < deadline:
            self.pump(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            if not self.main_alive() and not self.strays():
                return
        for _ in range(100):  # repeated: processes may still fork while being killed
            left = self.strays()
            if not left and not self.main_alive():
                return
            self.send(signal.SIGKILL, left)
            self.pump(POLL_SECONDS)
        self.notice("gave up stopping processes %s" % describe(self.strays()))

    # The run ---------------------------------------------------------------

    def setup(self):
        """Everything before the command starts; ExecError if it cannot."""
        if self.args.user:
            become(self.args.user)  # first: the log and the env file are opened as the app
        if self.args.log is not None:
            self.open_log()
        env = read_env(self.args.env_file)
        if self.args.chdir:
            change_dir(self.args.chdir)
        path = find_program(self.args.command[0], env)
        become_subreaper()
        read_end, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                self.args.command, executable=path, env=env,
                stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end,
                start_new_session=True,
            )
        except OSError as e:
            os.close(read_end)
            raise start_failure(self.args.command[0], e)
        finally:
            os.close(write_end)
        self.out = read_end

    def supervise(self):
        """Wait for the program, a timeout, the caller leaving or a signal; stop leftovers."""
        deadline = self.start + self.args.timeout if self.args.timeout else None
        while True:
            self.pump(POLL_SECONDS, watch_stdin=self.args.watch_stdin)
            if not self.main_alive():
                break
            if self.signalled == "SIGHUP":
                self.signalled, self.caller_gone = None, True
            if self.signalled:
                why = "received %s" % self.signalled
            elif self.caller_gone:
                why = "the caller went away (stdin closed)" if self.args.watch_stdin else "the caller went away (SIGHUP)"
            elif deadline is not None and time.monotonic() >= deadline:
                self.timed_out = True
                why = "timed out after %gs" % self.args.timeout
            else:
                continue
            self.stopping = True
            self.leftovers = len(set(self.strays()) - {self.proc.pid})
            self.notice("%s: stopping the command and its processes" % why)
            self.stop()
            break
        if not self.stopping:
            self.stopping = True
            left = self.strays()
            if left:
                self.leftovers = len(left)
                self.notice("the command left %d process%s running, stopping %s"
                            % (len(left), "" if len(left) == 1 else "es", describe(left)))
                self.stop()
        self.drain()
        self.reap()

    def exit_status(self):
        if self.timed_out:
            return EXIT_TIMEOUT
        if self.caller_gone:
            return EXIT_CALLER_GONE
        if self.signalled:
            return 128 + getattr(signal, self.signalled)
        if self.status is None:
            return EXIT_USAGE  # never reaped (it would not die): should not happen
        return exit_code(self.status, shell=True)

    def finish(self, status, rc, signame):
        """The log's exit line and the report; returns the exit status."""
        seconds = round(time.monotonic() - self.start, 3)
        if self.log is not None:
            result = signame or (str(rc) if rc is not None else "unknown")
            self.write_log(("=== exit %s after %.3fs ===\n" % (result, seconds)).encode())
            os.close(self.log)
            self.log = None
        report = {
            "rc": rc, "signal": signame, "timed_out": self.timed_out, "caller_gone": self.caller_gone,
            "leftovers": self.leftovers, "seconds": seconds, "signalled": self.signalled, "exit": status,
        }
        write_report(report)
        return status

    def run(self):
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        try:
            self.setup()
        except ExecError as e:
            self.notice(str(e))
            return self.finish(e.status, e.status, None)
        try:
            self.supervise()
        except Exception as e:  # a bug here must not leave the command running
            self.notice("internal error: %r; stopping the command" % (e,))
            self.send(signal.SIGKILL, self.strays())
            return self.finish(EXIT_USAGE, None, None)
        rc = signame = None
        if self.status is not None:
            if os.WIFSIGNALED(self.status):
                signame = signal_name(os.WTERMSIG(self.status))
            else:
                rc = exit_code(self.status)
        return self.finish(self.exit_status(), rc, signame)

    def on_signal(self, signum, frame):
        if not self.stopping and self.signalled is None and not self.caller_gone:
            self.signalled = signal_name(signum)


def exit_code(status, shell=False):
    """A wait status as an exit code: negative signal number, or 128+N with shell=True."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status) if shell else -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return EXIT_USAGE


def describe(procs):
    shown = ", ".join("%d (%s)" % (pid, name) for pid, name in sorted(procs.items())[:10])
    return shown + (", ..." if len(procs) > 10 else "")


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_report(report):
    line = "%s: %s\n" % (PROG, json.dumps(report, separators=(",", ":")))
    try:
        write_all(2, line.encode())
    except OSError:
        pass


def open_standard_fds():
    """Closed stdin, stdout or stderr become /dev/null, so no pipe or file takes their number."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.set_inheritable(os.open(os.devnull, os.O_RDWR), True)  # the lowest free number: fd


def main(argv):
    open_standard_fds()
    try:
        args = parse_args(argv)
    except ExecError as e:
        say(str(e))
        if wants_supervise(argv):
            write_report({"rc": e.status, "signal": None, "timed_out": False, "caller_gone": False,
                          "leftovers": 0, "seconds": 0.0, "signalled": None, "exit": e.status})
        return e.status
    if args.supervise:
        return Supervisor(args).run()
    try:
        run_exec(args)
    except ExecError as e:
        say(str(e))
        return e.status
    return EXIT_USAGE  # not reached: run_exec returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
