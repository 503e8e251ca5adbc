"""manage.py warm: keep Django started, so toppcloud's commands start in milliseconds instead of a second.

    manage.py warm &               # `make run` starts it; a production host can run it beside the worker
    manage.py deploy app --node web1   # now forked from the warm process: no Django start-up

Most of a short command's time is Python importing Django, Celery and the
models (about half a second of CPU). This process does that once and listens
on $TOPPCLOUD_VAR_DIR/run/manage.sock (0600, the same user only). manage.py
(its warm_client) hands it the command line, the working directory, the
environment and its own stdin, stdout and stderr; a fork of this process runs
the command on them and reports its exit code, and Ctrl-C reaches it. The
command runs exactly as it would have: same code path, same output, same
exit code. manage.py runs the command itself, as before, when this process
is not running, or its environment differs from the command's in anything
but the terminal's own variables (another DATABASE_URL, another log key):
it never runs a command with settings that are not the command's own.
Restart it after upgrading toppcloud (it runs the code it started with).
"""

import json
import os
import signal
import socket
import struct
import sys
import traceback
from pathlib import Path

from django.conf import settings
from django.core.management import execute_from_command_line, get_commands, load_command_class
from django.db import connections

from jobs import cli

# Variables that belong to the terminal a command is typed in, not to toppcloud's settings.
TERMINAL_VARIABLES = frozenset({
    "PWD", "OLDPWD", "SHLVL", "_", "TERM", "COLUMNS", "LINES", "USER", "LOGNAME", "USERNAME", "MAIL", "PS1",
    "PS2", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "SSH_AUTH_SOCK", "TMUX", "TMUX_PANE", "STY", "WINDOW",
    "DISPLAY", "LS_COLORS", "COLORTERM", "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "HISTFILE", "HISTSIZE",
    "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR",  # `make run` started it
})
# Set by Django itself at start-up (TZ from settings.TIME_ZONE), whatever the command's environment says.
SET_BY_DJANGO = ("TZ",)


def socket_path():
    return Path(settings.VAR_DIR) / "run" / "manage.sock"


def settings_environment(env):
    return {k: v for k, v in env.items() if k not in TERMINAL_VARIABLES and k not in SET_BY_DJANGO}


class Command(cli.Command):
    help = "Keep Django started so toppcloud's commands start at once (manage.py forks them from here)."

    def handle(self, **opts):
        for name, app in get_commands().items():  # every command's module imported once, here
            if app in ("jobs", "toppcloud_site.records"):
                load_command_class(app, name)
        connections.close_all()  # a fork must never share a database connection
        path = socket_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            server.bind(str(path))
        finally:
            os.umask(old_umask)
        server.listen(64)
        signal.signal(signal.SIGCHLD, _reap)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        self.stdout.write(f"warm: commands start from here ({path}); stop with Ctrl-C or SIGTERM")
        self.stdout.flush()
        mine = settings_environment(os.environ)
        try:
            while True:
                conn, _ = server.accept()
                try:
                    self._serve(conn, server, mine)
                finally:
                    conn.close()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def _serve(self, conn, server, mine):
        """Fork the command if it is for this process (same user, same settings); else say no."""
        fds = []
        try:
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
            request = json.loads(message)
            ours = uid == os.getuid() and len(fds) == 3 and settings_environment(request["env"]) == mine
            if not ours:
                conn.send(b"no")  # the client runs the command itself
            else:
                pid = os.fork()
                if pid == 0:
                    _child(conn, server, request, fds)  # never returns
                self.stdout.write(f"warm: pid {pid} runs {' '.join(['manage.py', *request['argv'][1:2]])}")
                self.stdout.flush()
        except (OSError, ValueError, KeyError, TypeError):
            pass
        finally:
            for fd in fds:
                os.close(fd)


def _reap(*_):
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _child(conn, server, request, fds):
    """The forked command: the client's stdio, cwd and environment; its exit code back to the client."""
    code = 1
    try:
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        server.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1 if os.isatty(1) else -1)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)
        os.chdir(request["cwd"])
        kept = {k: os.environ[k] for k in SET_BY_DJANGO if k in os.environ}
        os.environ.clear()
        os.environ.update(request["env"], **kept)
        conn.send(f"pid {os.getpid()}".encode())
        try:
            execute_from_command_line(request["argv"])
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            conn.send(f"exit {code}".encode())
        except BaseException:
            pass
        os._exit(code if 0 <= code < 256 else 1)
