"""How an app's code runs on a node: one environment, one entry script, live output.

Everything an app runs on a node (the web process under supervisord, cron
scripts, `manage.py run` commands, `script:` database updates) starts
through `<root>/bin/toppcloud-exec` (nodeops/hostside/node_exec.py) with the
release's env file, so each sees exactly the same environment. Web
processes also get the logging configuration below: stderr, wsgi.errors and
Python logging all land in logs/<app>/error.log.

The env file and these runtime files are written in one round trip (Transport.put_files).
"""

import codecs
import json
import os
import select
import time
from dataclasses import dataclass

from . import hostside
from .errors import NodeOpError


class ExecError(NodeOpError):
    """No report from toppcloud-exec (it could not start at all), or no end of the command in time.

    A command that could not start (no such program: 127) is reported as an
    ExecResult with that exit code and toppcloud-exec's message in .error.
    """


PYTHON = "/usr/bin/python3"  # the node's system python (see nodeops/release.py)
EXEC_SOURCE = hostside.source("node_exec")
REPORT_PREFIX = "toppcloud-exec: {"

# gunicorn's --log-config-json. The root logger (an app's `logging` calls)
# writes INFO and above to stderr, which supervisord appends to error.log,
# where gunicorn's own messages and wsgi.errors go too. "loggers" is empty
# on purpose: gunicorn's defaults would move its access log to stdout.
GUNICORN_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["app"]},
    "loggers": {},
    "handlers": {"app": {"class": "logging.StreamHandler", "formatter": "app", "stream": "ext://sys.stderr"}},
    "formatters": {"app": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"}},
}


def runtime_files(layout):
    """{path: (mode, bytes)} of the files every node needs to run apps (setup and deploys write them)."""
    return {
        layout.exec_script: (0o755, EXEC_SOURCE.encode()),
        layout.gunicorn_logging: (0o644, (json.dumps(GUNICORN_LOGGING, indent=2) + "\n").encode()),
    }


def gunicorn_config(layout, env_file, gate):
    """The text of a release's gunicorn config file (gunicorn --config).

    gunicorn runs it at start and again on every HUP: it makes the master's
    environment the env file's as the file is then, so applying new config
    is "rewrite the env file, send HUP" (nodeops.release.apply_env). Its
    pre_request/post_request hooks are the app's request gate (`gate`,
    node_exec.RequestGate): requests wait while a restore swaps the data.
    Its post_worker_init gives the app the client's address as REMOTE_ADDR
    (node_exec.real_client_address).
    """
    return (
        "# Managed by toppcloud: gunicorn reads this at start and on HUP (config apply).\n"
        "import runpy\n"
        f"_exec = runpy.run_path({layout.exec_script!r}, run_name='toppcloud_exec')\n"
        f"_exec['reload_environment']({env_file!r})\n"
        "# Requests wait here while a restore or a revert swaps the app's data in (nodeops/hostside/node_data.py).\n"
        f"_gate = _exec['RequestGate']({gate!r})\n"
        "pre_request, post_request = _gate.pre_request, _gate.post_request\n"
        "# REMOTE_ADDR: the client nginx believes (its X-Real-IP), not nginx's 127.0.0.1.\n"
        "post_worker_init = _exec['real_client_address']\n"
    )


def exec_argv(layout, env_file, argv, *, user, chdir=None, timeout=None, log=None, label=None, watch_stdin=False):
    """The argv that runs `argv` on the node through toppcloud-exec with the env file, as `user`
    (nodeops.node_users.app_user; None only where nothing runs as root)."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"a command must be a non-empty list of words, got {argv!r}")
    words = [PYTHON, "-I", layout.exec_script]
    if user:
        words += ["--user", user]
    if chdir:
        words += ["--chdir", chdir]
    if timeout is not None:
        words += ["--timeout", f"{float(timeout):g}"]
    if log:
        words += ["--log", log, "--label", label or ""]
    if watch_stdin:
        words.append("--watch-stdin")
    return words + [env_file, "--", *argv]


@dataclass
class ExecResult:
    rc: int
    timed_out: bool
    signal: str | None
    leftovers: int
    seconds: float
    output_bytes: int
    error: str  # what toppcloud-exec itself said on stderr (not the command's output)
    tail: str = ""  # the last lines of the command's output


    def describe(self):
        if self.timed_out:
            said = f"killed after its timeout ({self.seconds:.1f} s)"
        elif self.signal:
            said = f"killed by {self.signal}"
        else:
            said = f"exited {self.rc}"
        if self.error:
            said += f": {self.error[-500:]}"
        if self.tail and self.rc != 0:
            said += f"; its output ended: {self.tail}"
        return said


def run_streaming(t, argv, on_output, *, timeout, flush_every=0.25):
    """Run argv (an exec_argv with watch_stdin) on the node; hand its output to on_output as it comes.

    on_output(text) gets the output decoded (UTF-8, invalid bytes replaced),
    in pieces at most flush_every seconds apart. Our end of stdin stays open:
    if this process dies, the node sees EOF and toppcloud-exec stops the
    command. `timeout` bounds the wait here, beyond the node's own timeout.
    """
    stream = t.open(argv)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = stream.stdout.fileno()
    pending, total, tail = [], 0, ""
    last_flush = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExecError(f"no end of the command on {t.describe()} within {timeout:g} s; it was stopped")
            ready, _, _ = select.select([fd], [], [], min(left, flush_every))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                pending.append(decoder.decode(chunk))
            if pending and (time.monotonic() - last_flush >= flush_every or sum(map(len, pending)) > 1 << 16):
                tail = (tail + "".join(pending))[-4000:]
                on_output("".join(pending))
                pending, last_flush = [], time.monotonic()
        pending.append(decoder.decode(b"", final=True))
        if "".join(pending):
            tail = (tail + "".join(pending))[-4000:]
            on_output("".join(pending))
        result = stream.finish(check=False)
    except BaseException:
        stream.kill()
        raise
    return _exec_result(result, total, _tail(tail))


def _tail(text, chars=300):
    return " / ".join(l.strip() for l in text.splitlines() if l.strip())[-chars:]


def _exec_result(result, total, tail=""):
    lines = result.stderr.rstrip("\n").splitlines()
    report = None
    if lines and lines[-1].startswith(REPORT_PREFIX):
        try:
            report = json.loads(lines[-1][len(REPORT_PREFIX) - 1:])
        except ValueError:
            report = None
    if report is None:  # toppcloud-exec itself did not run (no python3, no script, ssh cut)
        said = " / ".join(line for line in lines if line.strip())[-1000:]
        raise ExecError(said or f"toppcloud-exec exited {result.rc} without a report")
    error = "\n".join(lines[:-1]).strip()
    return ExecResult(rc=result.rc, timed_out=bool(report.get("timed_out")), signal=report.get("signal"),
                      leftovers=int(report.get("leftovers") or 0), seconds=float(report.get("seconds") or 0),
                      output_bytes=total, error=error, tail=tail)
