"""nodeops/hostside/node_exec.py (toppcloud-exec) run as a real program by the system python.

No database, no hosts: each test writes an env file the way
nodeops.release.render_env does, runs `/usr/bin/python3 -I node_exec.py`
in a subprocess and checks what the command saw and what became of every
process it started. Commands that start processes write their pids to a
file; the `procs` fixture kills any of them still alive after the test
(a test has failed then), so no test leaves processes behind.
"""

import ast
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeops.release import render_env

SCRIPT = Path(__file__).resolve().parent.parent / "nodeops" / "hostside" / "node_exec.py"
PYTHON = "/usr/bin/python3"  # the node's system python
SYSTEM_PATH = "/usr/bin:/bin"
REPORT_PREFIX = "toppcloud-exec: {"
# Some option that turns on supervise mode without changing anything else.
SUPERVISE = ["--timeout", "60"]
MODES = {"exec": [], "supervise": SUPERVISE}

# A command that starts a background sleep (in its process group) and
# waits: pids of the shell and the sleep go to the file named by $1.
SH_BACKGROUND = 'sleep 300 & echo $! > "$1"; echo $$ >> "$1"; sleep 300'
# A command whose grandchild leaves the process group and the session
# (fork, setsid, fork, parent exits): only the subreaper finds it.
DOUBLE_FORK = r"""
import os, sys, time
def note():
    with open(sys.argv[1], "a") as f:
        f.write("%d\n" % os.getpid())
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        note()
        time.sleep(300)
    time.sleep(0.1)
    os._exit(0)
os.wait()
note()
time.sleep(300)
"""


# --- helpers -----------------------------------------------------------------


def write_env(tmp_path, variables, name="r1.env"):
    path = tmp_path / name
    path.write_text(render_env(variables))
    return path


def exec_argv(env_file, *command, opts=()):
    return [PYTHON, "-I", str(SCRIPT), *opts, str(env_file), "--", *command]


def caller_env(**extra):
    """The caller's environment (this test process's) plus a marker the command must not see."""
    return {**os.environ, "TOPPCLOUD_CALLER_ONLY": "leaked", **extra}


def run(env_file, *command, opts=(), timeout=20, **kwargs):
    kwargs.setdefault("env", caller_env())
    return subprocess.run(exec_argv(env_file, *command, opts=opts), capture_output=True, timeout=timeout, **kwargs)


def report_of(stderr):
    """The report: the last stderr line, valid JSON; no earlier line looks like one."""
    lines = stderr.decode().splitlines()
    assert lines, "no report on stderr"
    assert lines[-1].startswith(REPORT_PREFIX), lines
    assert not [line for line in lines[:-1] if line.startswith(REPORT_PREFIX)], lines
    report = json.loads(lines[-1][len("toppcloud-exec: "):])
    assert {"rc", "signal", "timed_out", "caller_gone", "leftovers", "seconds"} <= set(report)
    assert isinstance(report["seconds"], float)
    return report


def alive(pid):
    """Whether pid is a live process (a zombie counts as gone)."""
    try:
        data = Path("/proc/%d/stat" % pid).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return data[data.rindex(")") + 2] not in "ZX"


def still_alive(pids, within=2.0):
    """The pids still alive after giving the kernel up to `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def finish(p, timeout=10):
    """(stdout, stderr) of a Popen once it has exited; its stdin may be closed already."""
    p.wait(timeout=timeout)
    out, err = p.stdout.read(), p.stderr.read()
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None:
            f.close()
    return out, err


def wait_for(condition, within=5.0):
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


class Procs:
    """What a test started: Popen objects, and the pids its commands wrote to `pidfile`.

    Teardown kills whatever of it is still alive (the test has failed then).
    """

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.popens = []

    def read(self, count=None):
        """The pids written to the pid file (waits until there are `count`)."""
        def pids():
            text = self.pidfile.read_text() if self.pidfile.exists() else ""
            return [int(word) for word in text.split()]
        if count:
            wait_for(lambda: len(pids()) >= count)
        return pids()

    def popen(self, argv, **kwargs):
        kwargs.setdefault("env", caller_env())
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        self.popens.append(p)
        return p

    def cleanup(self):
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for pid in self.read():
            for kill in (os.kill, os.killpg):  # a shell's group holds its foreground child
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path / "pids")
    yield p
    p.cleanup()


@pytest.fixture
def env_file(tmp_path):
    return write_env(tmp_path, {"PATH": SYSTEM_PATH})


# --- the script itself -------------------------------------------------------


def test_script_is_standalone_stdlib_python39():
    """Shipped as one file to nodes with any Python >= 3.9: standard library only."""
    text = SCRIPT.read_text()
    tree = ast.parse(text, feature_version=(3, 9))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.add(node.module.split(".")[0])
    assert imported and imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert 'if __name__ == "__main__":' in text


# --- environment -------------------------------------------------------------

ODD_VALUES = {
    "QUOTES": "it's \"quoted\" 'twice'",
    "SPACES": "  two  spaces  ",
    "NEWLINES": "line 1\nline 2\n\n",
    "DOLLARS": "$x ${HOME} `id` $(id) \\$y",
    "UNICODE": "héllo ✓ 日本語",
    "EMPTY": "",
    "EQUALS": "a=b==c",
    "HASH": "# not a comment",
    "BACKSLASH": "a\\b\\",
}


def parse_env0(output):
    """`env -0` output as a dict."""
    env = {}
    for item in output.decode().split("\0"):
        if item:
            key, _, value = item.partition("=")
            env[key] = value
    return env


@pytest.mark.parametrize("mode", MODES)
def test_environment_is_exactly_lang_and_the_file(tmp_path, mode):
    variables = {"PATH": SYSTEM_PATH, "DATABASE_URL": "postgres://u:p@h/db", **ODD_VALUES}
    env_file = write_env(tmp_path, variables)
    r = run(env_file, "env", "-0", opts=MODES[mode])
    assert r.returncode == 0, r.stderr
    assert parse_env0(r.stdout) == {"LANG": "C.UTF-8", **variables}
    if mode == "supervise":
        assert report_of(r.stderr)["rc"] == 0


def test_file_lang_wins(tmp_path):
    env_file = write_env(tmp_path, {"PATH": SYSTEM_PATH, "LANG": "en_US.UTF-8"})
    r = run(env_file, "env", "-0")
    assert parse_env0(r.stdout) == {"LANG": "en_US.UTF-8", "PATH": SYSTEM_PATH}


def make_program(directory, name, text, mode=0o755):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_program_found_on_the_files_path_not_the_callers(tmp_path, mode):
    first, second, callers = tmp_path / "venv-bin", tmp_path / "other-bin", tmp_path / "caller-bin"
    make_program(first, "tool", "#!/bin/sh\necho first \"$@\"\n")
    make_program(second, "tool", "#!/bin/sh\necho second\n")
    make_program(callers, "only-caller", "#!/bin/sh\necho caller\n")
    env_file = write_env(tmp_path, {"PATH": "%s:%s:%s" % (first, second, SYSTEM_PATH)})
    caller = caller_env(PATH="%s:%s" % (callers, os.environ["PATH"]))

    r = run(env_file, "tool", "a b", opts=MODES[mode], env=caller)
    assert (r.returncode, r.stdout) == (0, b"first a b\n"), r.stderr

    r = run(env_file, "only-caller", opts=MODES[mode], env=caller)
    assert r.returncode == 127
    assert b"only-caller" in r.stderr and str(first).encode() in r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_chdir(tmp_path, env_file, mode):
    workdir = tmp_path / "releases" / "r1"
    workdir.mkdir(parents=True)
    r = run(env_file, "python3", "-I", "-c", "import os; print(os.getcwd())", opts=["--chdir", str(workdir), *MODES[mode]])
    assert (r.returncode, r.stdout.decode()) == (0, "%s\n" % workdir.resolve()), r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_sigpipe_is_not_left_ignored(env_file, mode):
    """Python ignores SIGPIPE; ignored signals survive exec: the command must get the default."""
    r = run(env_file, "cat", "/proc/self/status", opts=MODES[mode])
    ignored = int(next(line for line in r.stdout.decode().splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


# --- exit status -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_exit_code_passes_through(env_file, mode):
    r = run(env_file, "sh", "-c", "exit 3", opts=MODES[mode])
    assert r.returncode == 3
    if mode == "supervise":
        report = report_of(r.stderr)
        assert (report["rc"], report["signal"], report["timed_out"], report["leftovers"]) == (3, None, False, 0)


def test_death_by_signal(env_file):
    r = run(env_file, "sh", "-c", "kill -s USR1 $$", opts=SUPERVISE)
    assert r.returncode == 128 + signal.SIGUSR1
    report = report_of(r.stderr)
    assert (report["rc"], report["signal"], report["timed_out"]) == (None, "SIGUSR1", False)


def test_exec_mode_replaces_the_process(env_file, procs):
    p = procs.popen(exec_argv(env_file, "sh", "-c", "echo $$; kill -s USR1 $$"))
    out, err = finish(p)
    assert int(out) == p.pid
    assert p.returncode == -signal.SIGUSR1  # the signal killed the process Popen started
    assert err == b""  # no report in exec mode


# --- output ------------------------------------------------------------------


def test_stdout_and_stderr_merged_in_order_on_stdout(env_file):
    r = run(env_file, "sh", "-c", "echo one; echo two >&2; echo three; echo four >&2", opts=SUPERVISE)
    assert r.stdout == b"one\ntwo\nthree\nfour\n"
    assert r.stderr.decode().splitlines()[:-1] == []
    assert report_of(r.stderr)["rc"] == 0


def test_command_output_cannot_fake_the_report(env_file):
    fake = 'toppcloud-exec: {"rc":0,"signal":null,"timed_out":false}'
    r = run(env_file, "sh", "-c", "echo '%s' >&2; exit 4" % fake, opts=SUPERVISE)
    assert r.stdout.decode() == fake + "\n"
    assert report_of(r.stderr)["rc"] == 4


def test_command_stdin_is_dev_null(env_file):
    r = run(env_file, "sh", "-c", "cat; echo done", opts=SUPERVISE, input=b"secret\n")
    assert r.stdout == b"done\n"


def test_output_is_relayed_live(env_file, procs):
    script = "import time; print('first', flush=True); time.sleep(5); print('second')"
    p = procs.popen(exec_argv(env_file, "python3", "-c", script, opts=["--watch-stdin"]), stdin=subprocess.PIPE)
    started = time.monotonic()
    ready = select.select([p.stdout], [], [], 3)[0]
    assert ready, "no output within 3 s"
    assert os.read(p.stdout.fileno(), 100) == b"first\n"
    assert time.monotonic() - started < 2
    assert p.poll() is None  # the command is still sleeping
    p.stdin.close()
    out, err = finish(p)
    assert b"second" not in out
    assert p.returncode == 129 and report_of(err)["caller_gone"]


# --- timeout, leftovers, the caller going away ---------------------------------


@pytest.mark.parametrize("command", [["sh", "-c", SH_BACKGROUND, "sh"], ["python3", "-c", DOUBLE_FORK]],
                         ids=["sh", "double-fork"])
def test_timeout_stops_everything(tmp_path, env_file, procs, command):
    pidfile = procs.pidfile
    started = time.monotonic()
    r = run(env_file, *command, str(pidfile), opts=["--timeout", "1"])
    elapsed = time.monotonic() - started
    pids = procs.read()
    assert len(pids) == 2
    assert r.returncode == 124
    assert 1 <= elapsed < 4
    report = report_of(r.stderr)
    assert report["timed_out"] is True and report["caller_gone"] is False
    assert report["signal"] == "SIGTERM" and report["leftovers"] >= 1
    assert 1 <= report["seconds"] < 4
    assert b"timed out" in r.stderr
    assert still_alive(pids) == []


def test_timeout_kills_what_ignores_sigterm(tmp_path, env_file, procs):
    pidfile = procs.pidfile
    started = time.monotonic()
    r = run(env_file, "sh", "-c", "trap '' TERM; " + SH_BACKGROUND, "sh", str(pidfile),
            opts=["--timeout", "0.5", "--kill-grace", "1"])
    elapsed = time.monotonic() - started
    pids = procs.read()
    assert len(pids) == 2
    assert r.returncode == 124
    assert 1.5 <= elapsed < 4  # waited the grace, then SIGKILL
    report = report_of(r.stderr)
    assert report["timed_out"] is True and report["signal"] == "SIGKILL"
    assert still_alive(pids) == []


def test_leftovers_are_stopped_when_the_command_ends(tmp_path, env_file, procs):
    pidfile = procs.pidfile
    started = time.monotonic()
    r = run(env_file, "sh", "-c", 'sleep 300 & echo $! > "$1"; echo started', "sh", str(pidfile), opts=SUPERVISE)
    elapsed = time.monotonic() - started
    pids = procs.read()
    assert len(pids) == 1
    assert (r.returncode, r.stdout) == (0, b"started\n")
    assert elapsed < 3  # not held up by the pipe the sleep kept open
    report = report_of(r.stderr)
    assert (report["rc"], report["leftovers"], report["timed_out"]) == (0, 1, False)
    assert still_alive(pids) == []


def test_watch_stdin_caller_gone(tmp_path, env_file, procs):
    pidfile = procs.pidfile
    p = procs.popen(exec_argv(env_file, "sh", "-c", SH_BACKGROUND, "sh", str(pidfile), opts=["--watch-stdin"]),
                    stdin=subprocess.PIPE)
    pids = procs.read(count=2)
    assert p.poll() is None
    p.stdin.write(b"anything the caller sends is ignored\n")
    p.stdin.flush()
    time.sleep(0.2)
    assert p.poll() is None
    closed = time.monotonic()
    p.stdin.close()
    out, err = finish(p)
    assert time.monotonic() - closed < 2
    assert p.returncode == 129
    report = report_of(err)
    assert report["caller_gone"] is True and report["timed_out"] is False
    assert still_alive(pids) == []


@pytest.mark.parametrize("signum, status, field, value", [
    (signal.SIGTERM, 143, "signalled", "SIGTERM"),
    (signal.SIGINT, 130, "signalled", "SIGINT"),
    (signal.SIGHUP, 129, "caller_gone", True),
], ids=["TERM", "INT", "HUP"])
def test_signal_to_toppcloud_exec_stops_the_command(tmp_path, env_file, procs, signum, status, field, value):
    pidfile = procs.pidfile
    p = procs.popen(exec_argv(env_file, "sh", "-c", SH_BACKGROUND, "sh", str(pidfile), opts=SUPERVISE))
    pids = procs.read(count=2)
    p.send_signal(signum)
    out, err = finish(p)
    assert p.returncode == status
    report = report_of(err)
    assert report[field] == value and report["timed_out"] is False
    assert still_alive(pids) == []


# --- log ---------------------------------------------------------------------

HEADER = r"=== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ %s ===\n"
FOOTER = r"=== exit %s after \d+\.\d{3}s ===\n"


def test_log_appends_framed_output(tmp_path, env_file):
    log = tmp_path / "logs" / "hello" / "cron.log"
    opts = ["--log", str(log), "--label", "cron nightly"]
    r1 = run(env_file, "sh", "-c", "echo one; echo err >&2", opts=opts, umask=0o077)
    assert (r1.returncode, r1.stdout) == (0, b"one\nerr\n")  # still relayed
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    r2 = run(env_file, "sh", "-c", "echo two; exit 2", opts=opts)
    assert r2.returncode == 2 and report_of(r2.stderr)["rc"] == 2
    r3 = run(env_file, "sh", "-c", "kill -s TERM $$", opts=["--log", str(log)])
    assert r3.returncode == 143
    pattern = (HEADER % "cron nightly" + "one\nerr\n" + FOOTER % "0"
               + HEADER % "cron nightly" + "two\n" + FOOTER % "2"
               + HEADER % "sh -c 'kill -s TERM \\$\\$'" + FOOTER % "SIGTERM")
    assert re.fullmatch(pattern, log.read_text()), log.read_text()


def test_log_records_why_the_command_did_not_run(tmp_path, env_file):
    log = tmp_path / "cron.log"
    r = run(env_file, "no-such-program", opts=["--log", str(log), "--label", "job"])
    assert r.returncode == 127 and report_of(r.stderr)["rc"] == 127
    text = log.read_text()
    assert re.fullmatch(HEADER % "job" + "toppcloud-exec: program no-such-program not found on PATH .*\n"
                        + FOOTER % "127", text), text


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_missing_env_file(tmp_path, mode):
    missing = tmp_path / "env" / "r9.env"
    r = run(missing, "true", opts=MODES[mode])
    assert r.returncode == 125
    assert r.stderr.startswith(b"toppcloud-exec: ") and str(missing).encode() in r.stderr
    assert b"No such file" in r.stderr
    if mode == "supervise":
        assert report_of(r.stderr)["rc"] == 125


@pytest.mark.parametrize("mode", MODES)
def test_unknown_program(env_file, mode):
    r = run(env_file, "no-such-program", opts=MODES[mode])
    assert r.returncode == 127
    assert b"no-such-program" in r.stderr and SYSTEM_PATH.encode() in r.stderr
    if mode == "supervise":
        assert report_of(r.stderr)["rc"] == 127


@pytest.mark.parametrize("mode", MODES)
def test_program_not_executable(tmp_path, mode):
    bindir = tmp_path / "bin"
    make_program(bindir, "tc-not-executable", "#!/bin/sh\necho hi\n", mode=0o644)
    env_file = write_env(tmp_path, {"PATH": "%s:%s" % (bindir, SYSTEM_PATH)})
    r = run(env_file, "tc-not-executable", opts=MODES[mode])
    assert r.returncode == 126
    assert str(bindir / "tc-not-executable").encode() in r.stderr and b"permission denied" in r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_missing_chdir(tmp_path, env_file, mode):
    missing = tmp_path / "releases" / "gone"
    r = run(env_file, "true", opts=["--chdir", str(missing), *MODES[mode]])
    assert r.returncode == 125
    assert str(missing).encode() in r.stderr and r.stdout == b""
    if mode == "supervise":
        assert report_of(r.stderr)["rc"] == 125


@pytest.mark.parametrize("argv", [
    ["ENV", "true"],  # no "--"
    ["ENV", "--"],  # no program
    ["--timeout", "0", "ENV", "--", "true"],
    ["--timeout", "soon", "ENV", "--", "true"],
    ["--no-such-option", "ENV", "--", "true"],
], ids=["no-dashes", "no-program", "zero-timeout", "bad-timeout", "unknown-option"])
def test_bad_usage(env_file, argv):
    argv = [str(env_file) if a == "ENV" else a for a in argv]
    r = subprocess.run([PYTHON, "-I", str(SCRIPT), *argv], capture_output=True, timeout=10)
    assert r.returncode == 125 and r.stdout == b""
    assert r.stderr.startswith(b"toppcloud-exec: ")
    if "--timeout" in argv:
        assert report_of(r.stderr)["rc"] == 125


# --- --user: app code never runs as root ---------------------------------------


@pytest.fixture
def nobody_env():
    """An env file only `nobody` (and root) can read, in a directory of its own that nobody can reach
    (pytest's tmp dirs are 0700)."""
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="tc-exec-user-", dir="/tmp"))
    os.chmod(base, 0o755)
    path = write_env(base, {"PATH": SYSTEM_PATH})
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(path, 0o600)
    (base / "logs").mkdir()
    os.chown(base / "logs", nobody.pw_uid, nobody.pw_gid)
    yield path, nobody
    shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
@pytest.mark.parametrize("mode", MODES)
def test_it_becomes_the_user_it_is_given_when_started_as_root(nobody_env, mode):
    path, nobody = nobody_env
    r = run(path, "sh", "-c", "id -u; id -g; id -G; cat /proc/self/status | grep ^CapEff",
            opts=["--user", "nobody", *MODES[mode]])
    assert r.returncode == 0, r.stderr
    uid, gid, groups, caps = r.stdout.decode().splitlines()
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert "0" not in groups.split()  # root's groups are dropped too
    assert caps.split()[1] == "0000000000000000"


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
def test_it_opens_the_log_as_the_user(nobody_env):
    path, nobody = nobody_env
    log = path.parent / "logs" / "cron.log"
    r = run(path, "true", opts=["--user", "nobody", "--log", str(log)])
    assert r.returncode == 0, r.stderr
    assert log.stat().st_uid == nobody.pw_uid
    # A log the user may not write is refused, not written by root.
    r = run(path, "true", opts=["--user", "nobody", "--log", str(path.parent / "root-only.log")])
    assert r.returncode == 125 and "Permission denied" in r.stderr.decode()
    assert not (path.parent / "root-only.log").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
@pytest.mark.parametrize("mode", MODES)
def test_it_refuses_a_user_that_does_not_exist_or_is_root(env_file, mode):
    r = run(env_file, "true", opts=["--user", "tc-no-such-app-here", *MODES[mode]])
    assert r.returncode == 125
    assert "user tc-no-such-app-here does not exist on this node" in r.stderr.decode()
    r = run(env_file, "true", opts=["--user", "root", *MODES[mode]])
    assert r.returncode == 125 and "app code never runs as root" in r.stderr.decode()
