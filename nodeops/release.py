"""What a deploy does on a node: upload, venv, env, start, check, activate, stop, prune.

See "Deploy (zero downtime)" in DESIGN.md. Each function does one step a
person would do by hand; the deploy flow calls them in order. Commands are
argv lists; anything an app provides reaches the node as an argv element,
on stdin, or (for nginx and supervisor configs) only after validation.

Where things are, for an app `a` and a release `r` under the node root:

    apps/a/releases/r/                  the code (rsync, hard links to the previous release)
    apps/a/venvs/<key>/                 virtualenv; <key> hashes requirements + python + gunicorn
    apps/a/env/r.env                    the release's environment, KEY='value' lines (0600)
    run/supervisor/programs/app-a-r.conf    gunicorn on 127.0.0.1:<port> while the release runs
    logs/a/                             app.log (stdout), error.log (stderr + gunicorn), access.log
"""

import json
import os
import re
import shlex

from .errors import NodeOpError
from . import runtime
from .node_users import app_user
from .steps import run_logged
from .transport import CommandFailed
from .validate import RUNNER_RE, validate_address, validate_name, validate_port

# The WSGI server put into every venv. Part of the venv key: changing the pin
# builds fresh venvs instead of silently mixing versions.
GUNICORN = "gunicorn==27.0.1"
VENV_MARKER = ".toppcloud-complete"
# The node's system python (setup installs Debian's python3): it runs the
# small scripts below and builds the venvs. Not whatever `python3` is first
# on the login PATH: a pyenv shim there costs ~0.1 s per call and would
# build venvs on a python the node's owner may remove.
PYTHON = "/usr/bin/python3"

_RELEASE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Paths written into nginx and supervisor configs: nothing either would read
# as syntax (quotes, ';', '{', '%', spaces, '#').
_SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9._/-]*")
_HTTP_PATH_RE = re.compile(r"/[\x21-\x7e]*")


class ReleaseError(NodeOpError):
    """A release cannot be made to run; the message says why, for the job's summary."""


# --- names and paths ----------------------------------------------------------

def validate_release(value):
    if not isinstance(value, str) or not _RELEASE_RE.fullmatch(value):
        raise ValueError(f"release {value!r} is invalid: use 1 to 64 characters a-z, 0-9 and '-'")
    return value


def _safe_path(value, field):
    if (not isinstance(value, str) or not _SAFE_PATH_RE.fullmatch(value)
            or ".." in value.split("/") or "//" in value):
        raise ValueError(f"{field} {value!r} is invalid: it must be an absolute path of letters, digits, "
                         "'.', '_', '-' and '/'")
    return value


def release_dir(layout, app, release):
    return os.path.join(layout.releases_dir(app), validate_release(release))


def env_file(layout, app, release):
    return os.path.join(layout.env_dir(app), validate_release(release) + ".env")


def gunicorn_conf(layout, app, release):
    """The release's gunicorn config file: it reloads the env file whenever gunicorn reads it (start, HUP)."""
    return os.path.join(layout.env_dir(app), validate_release(release) + ".gunicorn.py")


def program_name(app, release) -> str:
    return f"app-{validate_name(app, 'app')}-{validate_release(release)}"


def program_conf(layout, app, release):
    return os.path.join(layout.supervisor_programs, program_name(app, release) + ".conf")


def error_log(layout, app):
    """Where a release's stderr (tracebacks, gunicorn's own log) goes."""
    return os.path.join(layout.app_logs(app), "error.log")


def _supervisorctl(layout, *args):
    return ["supervisorctl", "-c", layout.supervisor_conf, *args]


def _emit_result(emit, step, r):
    emit("command", step=step, argv=list(r.argv), rc=r.rc, stdout=r.stdout, stderr=r.stderr,
         seconds=round(r.seconds, 3))


# --- upload -------------------------------------------------------------------

def upload(t, emit, layout, app, release, src_dir, previous=None) -> str:
    """Copy `src_dir` (on this machine) to the release dir on the node; return that dir.

    `previous` (a release id or an absolute release dir) is given to rsync as
    --link-dest: files equal to the previous release's become hard links, so
    a deploy sends and stores only what changed.
    """
    dest = release_dir(layout, app, release)
    if not os.path.isdir(src_dir):
        raise ReleaseError(f"{src_dir} is not a directory")
    link_dest = None
    if previous:
        link_dest = previous if previous.startswith("/") else release_dir(layout, app, previous)
        link_dest = _safe_path(link_dest.rstrip("/"), "previous release dir")
        if link_dest == dest:
            link_dest = None  # re-uploading the same release: nothing to link against
    try:
        r = t.rsync(src_dir, dest, link_dest=link_dest)
    except CommandFailed as exc:
        _emit_result(emit, "upload", exc.result)
        raise
    _emit_result(emit, "upload", r)
    sent = re.search(r"Total bytes sent: ([\d,]+)", r.stdout)
    if sent:
        emit("upload.stats", bytes_sent=int(sent.group(1).replace(",", "")))
    return dest


# --- virtualenv ---------------------------------------------------------------

# One round trip decides whether the venv can be reused: the key is computed
# where the venv lives (the node's python3 and the requirements file there).
_VENV_KEY_PY = r"""
import hashlib, json, os, sys
release_dir, req, venvs, pin, marker = sys.argv[1:6]
data = b""
path = None
if req:
    path = os.path.join(release_dir, req)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        sys.exit(f"the requirements file {req} is not in the release")
key = hashlib.sha256(f"{sys.version}\n{pin}\n".encode() + data).hexdigest()[:16]
venv = os.path.join(venvs, key)
# The release says which venv it uses, so prune can remove venvs no release uses.
with open(os.path.join(release_dir, ".toppcloud-venv"), "w") as f:
    f.write(venv)
# pip ignores blank lines and '#' comments; with nothing else, skip -r.
needed = any(l.strip() and not l.strip().startswith("#") for l in data.decode("utf-8", "replace").splitlines())
print(json.dumps({"venv": venv, "complete": os.path.exists(os.path.join(venv, marker)),
                  "requirements": path if needed else None}))
"""


def ensure_venv(t, emit, layout, app, release_dir, requirements="requirements.txt") -> tuple[str, bool]:
    """The venv for the release's requirements: (path, built). Reused when complete."""
    release_dir = _safe_path(release_dir, "release_dir")
    if requirements:
        norm = os.path.normpath(requirements)
        if requirements.startswith("/") or norm.startswith("..") or "\0" in requirements:
            raise ReleaseError(f"requirements {requirements!r} is invalid: it must be a path inside the app")
        requirements = norm
    argv = [PYTHON, "-I", "-c", _VENV_KEY_PY, release_dir, requirements or "", layout.venvs_dir(app),
            GUNICORN, VENV_MARKER]
    try:
        found = json.loads(run_logged(t, emit, argv, step="venv").stdout)
    except CommandFailed as exc:
        raise ReleaseError(exc.result.stderr.strip() or str(exc)) from None
    venv = found["venv"]
    if found["complete"]:
        return venv, False

    # Built in place (venvs are not relocatable). --clear empties what a
    # build that died half-way left behind; the marker is written last, so
    # only a complete venv is ever reused.
    try:
        run_logged(t, emit, [PYTHON, "-m", "venv", "--clear", venv], step="venv", timeout=300)
        pip = [f"{venv}/bin/pip", "install", "--no-input", "--disable-pip-version-check",
               "--progress-bar", "off", GUNICORN]
        if found["requirements"]:
            pip += ["-r", found["requirements"]]
        run_logged(t, emit, pip, step="venv", timeout=1800)
    except CommandFailed as exc:
        t.run(["rm", "-rf", venv], check=False)
        raise ReleaseError(f"requirements failed to install: {_pip_errors(exc.result)}") from None
    t.put_file(f"{venv}/{VENV_MARKER}", f"{GUNICORN}\n".encode())
    return venv, True


def _pip_errors(result):
    """pip's ERROR lines (they name the package), else the last lines of its output."""
    lines = [l.strip() for l in (result.stdout + "\n" + result.stderr).splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("ERROR")]
    return " / ".join((errors or lines)[-5:]) or f"exit code {result.rc}"


# --- environment --------------------------------------------------------------

def render_env(env: dict) -> str:
    lines = ["# Managed by toppcloud: the environment of one release (web, cron, commands)."]
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY_RE.fullmatch(key):
            raise ValueError(f"environment variable name {key!r} is invalid: use A-Z, a-z, 0-9 and '_'")
        value = str(value)
        if "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
        lines.append(f"{key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict:
    """The inverse of render_env; handles values with newlines too."""
    env = {}
    for word in shlex.split(text, comments=True):
        key, _, value = word.partition("=")
        env[key] = value
    return env


def write_env(t, layout, app, release, env: dict, *, user=None) -> str:
    """Write the release's env file (0600, owned by `user`: the app alone reads it), and the node's
    runtime files with it; return its path.

    One round trip. Not logged: the values are secrets. They travel on
    stdin, never in argv. The file is valid POSIX sh (values shell-quoted),
    and toppcloud-exec (nodeops/node_exec.py) loads it for every process of
    the release: web, cron, tasks' requests, commands.
    """
    path = env_file(layout, app, release)
    config = runtime.gunicorn_config(layout, path, layout.request_gate(app))
    files = {path: (0o600, render_env(env).encode(), validate_user(user)),
             # Read by the app's gunicorn; it holds only paths.
             gunicorn_conf(layout, app, release): (0o644, config.encode()),
             **runtime.runtime_files(layout)}
    t.put_files(files, dirs=[(layout.env_dir(app), 0o750 if user else 0o700), (layout.bin, 0o755)])
    return path


# --- running a release ----------------------------------------------------------

_FREE_PORT_PY = r"""
import socket, sys
with socket.socket() as s:
    s.bind((sys.argv[1], 0))
    print(s.getsockname()[1])
"""


def free_port(t, address="127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    address = validate_address(address)
    return int(t.run([PYTHON, "-I", "-c", _FREE_PORT_PY, address]).stdout.strip())


def validate_user(value):
    """A system user name as nodeops.node_users.app_user makes them (None: the node's ssh user)."""
    if value is not None and (not isinstance(value, str) or not _USER_RE.fullmatch(value)):
        raise ValueError(f"user {value!r} is invalid: use 1 to 32 characters a-z, 0-9, '_' and '-'")
    return value


def render_program(layout, app, release, *, port, runner, venv, processes, threads, env_file, user=None):
    name = program_name(app, release)
    user = validate_user(user)
    rdir = release_dir(layout, app, release)
    logs = layout.app_logs(app)
    gunicorn = [
        f"{venv}/bin/gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(processes),
        "--threads", str(threads),
        "--chdir", rdir,
        # On TERM gunicorn stops accepting and lets workers finish their
        # requests for this long; supervisor's stopwaitsecs is longer.
        "--graceful-timeout", "25",
        # gunicorn >= 24 opens a control socket in $HOME by default: two
        # releases running side by side would fight over it.
        "--no-control-socket",
        "--access-logfile", f"{logs}/access.log",
        "--error-logfile", "-",
        "--name", name,
        # Loads the env file again on HUP (config apply); also keeps gunicorn
        # from reading a gunicorn.conf.py the app may ship.
        "--config", gunicorn_conf(layout, app, release),
        # The app's `logging` goes to stderr (error.log) like gunicorn's own log and wsgi.errors.
        "--log-config-json", layout.gunicorn_logging,
        runner,
    ]
    # toppcloud-exec loads the env file and then becomes gunicorn (exec), so
    # supervisord's signals reach gunicorn. (A supervisord `environment=`
    # line would need its own quoting and '%' escaping and would put secrets
    # into supervisor's config.)
    command = shlex.join(runtime.exec_argv(layout, env_file, gunicorn, chdir=rdir, user=user))
    # supervisord expands %(...)s in command; validation keeps '%' out.
    assert "%" not in command, command
    user_line = f"; The app's own system user (nodeops/node_users.py): never root.\nuser = {user}\n" if user else ""
    return f"""\
; Managed by toppcloud: release {release} of {app}; removed when the release stops.
[program:{name}]
command = {command}
directory = {rdir}
{user_line}autostart = true
autorestart = true
startsecs = 1
startretries = 3
; TERM = gunicorn's graceful shutdown: requests in flight are finished.
stopsignal = TERM
stopwaitsecs = 30
killasgroup = true
stdout_logfile = {logs}/app.log
stdout_logfile_maxbytes = 10MB
stdout_logfile_backups = 3
stderr_logfile = {logs}/error.log
stderr_logfile_maxbytes = 10MB
stderr_logfile_backups = 3
"""


# supervisord's XML-RPC over its unix socket, for the programs below (sock_path is theirs).
_RPC_LINES = [
    "import http.client, socket",
    "class _Connection(http.client.HTTPConnection):",
    "    def connect(self):",
    "        self.sock = socket.socket(socket.AF_UNIX)",
    "        self.sock.connect(sock_path)",
    "class _Transport(xmlrpc.client.Transport):",
    "    def make_connection(self, host):",
    "        return _Connection('localhost')",
    "rpc = xmlrpc.client.ServerProxy('http://localhost/RPC2', transport=_Transport()).supervisor",
]

# Starting a release is one program on the node: it picks a free port,
# writes the supervisor program with it, and adds only that program through
# supervisord's XML-RPC (what `supervisorctl update <name>` does), where the
# separate steps took four ssh round trips and a supervisorctl start-up.
_START_PY = r"""
import os, socket, sys, xmlrpc.client
sock_path, conf, name, logs, token, port = sys.argv[1:7]
if port == "0":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
os.makedirs(logs, exist_ok=True)
with open(conf + ".tmp", "w") as f:
    f.write(sys.stdin.read().replace(token, port))
os.replace(conf + ".tmp", conf)
""" + "\n".join(_RPC_LINES) + r"""
[added, changed, _removed] = rpc.reloadConfig()[0]
try:
    if name in changed:  # the program was there with another port or command: replace it
        rpc.stopProcess(f"{name}:{name}", True)
        rpc.removeProcessGroup(name)
    if name in added or name in changed:
        rpc.addProcessGroup(name)  # autostart
    else:  # there already, unchanged (it had died, or a rollback to a release still running)
        rpc.startProcess(f"{name}:{name}", True)
except xmlrpc.client.Fault as exc:
    if "ALREADY_STARTED" not in exc.faultString:
        sys.exit(f"supervisord could not start {name}: {exc.faultString}")
print(port)
"""

_PORT_TOKEN = "@@TOPPCLOUD_PORT@@"


def start(t, emit, layout, app, release, *, port=None, runner, venv, processes, threads, env_file,
          user=None) -> int:
    """Run the release under supervisord on 127.0.0.1:<port> (a free one if None); other programs are not touched.

    Returns the port."""
    port = 0 if port is None else validate_port(port, "port")
    if not isinstance(runner, str) or not RUNNER_RE.fullmatch(runner):
        raise ValueError(f"runner {runner!r} is invalid: it must be module:callable, like app:application")
    for value, field in ((processes, "processes"), (threads, "threads")):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
            raise ValueError(f"{field} {value!r} is invalid: it must be a number from 1 to 64")
    venv, env_file = _safe_path(venv, "venv"), _safe_path(env_file, "env_file")
    name = program_name(app, release)
    text = render_program(layout, app, release, port=_PORT_TOKEN, runner=runner, venv=venv,
                          processes=processes, threads=threads, env_file=env_file, user=user)
    r = run_logged(t, emit, [PYTHON, "-I", "-c", _START_PY, layout.supervisor_sock, program_conf(layout, app, release),
                             name, layout.app_logs(app), _PORT_TOKEN, str(port)],
                   step="start", input=text.encode(), check=False, timeout=60)
    if r.rc != 0:
        tail = _tail(t, error_log(layout, app))
        raise ReleaseError((r.stderr.strip() or f"supervisord could not start {name}")
                           + (f"; log tail: {tail}" if tail else ""))
    return int(r.stdout.strip())


# One program on the node does what `supervisorctl stop`, `rm` and
# `supervisorctl update` did in three ssh round trips and two supervisorctl
# starts: it speaks supervisord's XML-RPC on its unix socket.
_STOP_PY = r"""
import os, sys, xmlrpc.client
sock_path, name, conf = sys.argv[1:4]
""" + "\n".join(_RPC_LINES) + r"""
try:
    # TERM, then wait until gunicorn has finished its requests in flight (at most stopwaitsecs).
    rpc.stopProcess(f"{name}:{name}", True)
except xmlrpc.client.Fault as exc:
    if "BAD_NAME" not in exc.faultString:  # no such group: it was stopped before
        sys.exit(f"supervisord could not stop {name}: {exc.faultString}")
try:
    rpc.removeProcessGroup(name)
except xmlrpc.client.Fault as exc:
    if "BAD_NAME" not in exc.faultString:
        sys.exit(f"supervisord could not forget {name}: {exc.faultString}")
if os.path.exists(conf):
    os.remove(conf)
"""


def stop(t, emit, layout, app, release) -> None:
    """Stop the release gracefully and forget its program. Stopping a stopped release is fine."""
    name = program_name(app, release)
    r = run_logged(t, emit, [PYTHON, "-I", "-c", _STOP_PY, layout.supervisor_sock, name,
                             program_conf(layout, app, release)], step="stop", check=False, timeout=60)
    if r.rc != 0:
        raise ReleaseError(r.stderr.strip() or f"could not stop {name}")


# Applying new config to a running release is one program on the node:
# load the app with the new env file in a separate process (a config that
# breaks the app must not reach gunicorn: its new workers would fail to boot
# and the master would stop), then put the file in place and send gunicorn
# HUP, which starts new workers (their environment from the new file, see
# runtime.gunicorn_config) and stops the old ones gracefully, the listening
# socket never closing. It waits until none of the old workers is left.
_APPLY_PY = r"""
import json, os, subprocess, sys, time, xmlrpc.client
sock_path, name, exec_script, release_dir, new, env, runner, timeout, program_conf, user = sys.argv[1:11]
# The new file gets the owner of the one it replaces (the app's user): its gunicorn reads it on HUP.
owner = os.stat(env) if os.path.exists(env) else None
if owner:
    os.chown(new, owner.st_uid, owner.st_gid)
if os.path.exists(program_conf) and "--config" not in open(program_conf).read():
    os.remove(new)
    sys.exit(f"{name} was started by an older toppcloud, whose gunicorn does not reload its environment: "
             "deploy the app once, then config apply works")
CHECK = ("import importlib, sys; m, _, a = sys.argv[1].partition(':'); "
         "app = getattr(importlib.import_module(m), a); callable(app) or sys.exit(f'{sys.argv[1]} is not callable')")
try:
    check = subprocess.run([sys.executable, "-I", exec_script, "--user", user, "--chdir", release_dir, new, "--",
                            "python", "-c", CHECK, runner], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, errors="replace", timeout=120)
    failed = check.returncode != 0 and (check.stdout + check.stderr).strip().splitlines()[-5:]
except subprocess.TimeoutExpired:
    failed = ["loading it took more than 120 s"]
if failed:
    os.remove(new)
    sys.exit(f"the app does not load with the new environment, which was not applied: {' / '.join(failed)}")
if new != env + ".previous" and os.path.exists(env):  # kept, to put back if the release fails after the reload
    with open(env, "rb") as f, open(os.open(env + ".previous.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                                    "wb") as out:
        out.write(f.read())
        if owner:
            os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
    os.replace(env + ".previous.tmp", env + ".previous")
os.replace(new, env)
""" + "\n".join(_RPC_LINES) + r"""
def workers(pid):
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.add(int(entry))
    return found
def state():
    try:
        return rpc.getProcessInfo(f"{name}:{name}")
    except xmlrpc.client.Fault as exc:  # not under supervisord: the file is all there is to change
        return {"statename": "NOT RUNNING" if "BAD_NAME" in exc.faultString else exc.faultString}
# A release started a moment ago is STARTING until supervisord's startsecs have passed; gunicorn may
# not handle HUP yet (its default action ends the process): wait until it is RUNNING.
info, deadline = state(), time.monotonic() + 30
while info["statename"] == "STARTING" and time.monotonic() < deadline:
    time.sleep(0.1)
    info = state()
if info["statename"] != "RUNNING":
    print(json.dumps({"reloaded": False, "state": info["statename"]}))
    sys.exit(0)
master, started = info["pid"], time.monotonic()
old = workers(master)
rpc.signalProcess(f"{name}:{name}", "HUP")
while True:
    now = workers(master)
    if now and not now & old:
        break
    if time.monotonic() - started > float(timeout):
        sys.exit(f"gunicorn of {name} still has {len(now & old)} old workers {float(timeout):g} s after HUP")
    time.sleep(0.05)
print(json.dumps({"reloaded": True, "master": master, "old_workers": sorted(old), "new_workers": sorted(now),
                  "reload_seconds": round(time.monotonic() - started, 3)}))
"""


def apply_env(t, emit, layout, app, release, env: dict, *, runner, timeout=60) -> dict:
    """Give the running release a new environment without a failed request; what happened, as a dict.

    The env file is replaced only if the app loads with it (else ReleaseError
    and the old file stays); then gunicorn reloads gracefully (HUP). Cron
    runs, tasks and commands read the file each time, so they see the new
    values at once. A release that is not running gets the file only.
    """
    if not isinstance(runner, str) or not RUNNER_RE.fullmatch(runner):
        raise ValueError(f"runner {runner!r} is invalid: it must be module:callable, like app:application")
    path = env_file(layout, app, release)
    new = path + ".new"
    config = runtime.gunicorn_config(layout, path, layout.request_gate(app))
    t.put_files({new: (0o600, render_env(env).encode()),
                 gunicorn_conf(layout, app, release): (0o644, config.encode()),
                 **runtime.runtime_files(layout)}, dirs=[(layout.env_dir(app), 0o700), (layout.bin, 0o755)])
    return _apply(t, emit, layout, app, release, new, runner, timeout)


def revert_env(t, emit, layout, app, release, *, runner, timeout=60) -> dict:
    """Put back the environment the last apply_env replaced, the same way (check, HUP)."""
    return _apply(t, emit, layout, app, release, env_file(layout, app, release) + ".previous", runner, timeout)


def _apply(t, emit, layout, app, release, new, runner, timeout):
    path = env_file(layout, app, release)
    r = run_logged(t, emit, [PYTHON, "-I", "-c", _APPLY_PY, layout.supervisor_sock, program_name(app, release),
                             layout.exec_script, release_dir(layout, app, release), new, path, runner,
                             str(timeout), program_conf(layout, app, release), app_user(app)],
                   step="apply env", check=False, timeout=timeout + 180)
    if r.rc != 0:
        raise ReleaseError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"applying the env of "
                           f"{app} {release} failed (exit {r.rc})")
    return json.loads(r.stdout)


def _tail(t, path, lines=10):
    r = t.run(["tail", "-n", str(lines), path], check=False)
    return " / ".join(l for l in r.stdout.strip().splitlines() if l.strip())[-1500:] if r.rc == 0 else ""


# --- internal requests ----------------------------------------------------------

# Asks one URL on the node, ignoring proxies and not following redirects (a
# health check answered with a redirect to a login page is not healthy).
# Polls until an HTTP answer arrives when given wait > 0. The request's
# method and headers arrive as argv, its body on stdin.
_HTTP_REQUEST_PY = r"""
import json, socket, sys, time, urllib.error, urllib.request
method, url, host, wait, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
headers = json.loads(sys.argv[6])
body = sys.stdin.buffer.read() if method != "GET" else None
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
if host:
    headers["Host"] = host
req = urllib.request.Request(url, data=body, headers=headers, method=method)
deadline = time.monotonic() + wait
started = time.monotonic()
while True:
    try:
        try:
            with opener.open(req, timeout=timeout) as r:
                status, body = r.status, r.read(4000)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read(4000)
        print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")[:2000],
                          "seconds": round(time.monotonic() - started, 3)}))
        break
    except Exception as exc:
        exc = getattr(exc, "reason", exc)  # URLError wraps the socket error
        timed_out = isinstance(exc, (socket.timeout, TimeoutError))
        error = f"no answer within {timeout:g} s" if timed_out else f"{type(exc).__name__}: {exc}"
        if (timed_out and not wait) or time.monotonic() >= deadline:
            print(json.dumps({"error": error, "timed_out": timed_out,
                              "seconds": round(time.monotonic() - started, 3)}))
            break
        time.sleep(0.1)
"""


def _request(t, port, path, host, wait, timeout, *, method="GET", headers=None, body=b"", request_timeout=10):
    port = validate_port(port, "port")
    if not isinstance(path, str) or not _HTTP_PATH_RE.fullmatch(path):
        raise ValueError(f"path {path!r} is invalid: it must start with '/' and contain no spaces")
    if method not in ("GET", "POST"):
        raise ValueError(f"method {method!r} is not GET or POST")
    headers = dict(headers or {})
    for key, value in headers.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key) or not re.fullmatch(r"[\x20-\x7e]*", str(value)):
            raise ValueError(f"header {key!r} is invalid")
    url = f"http://127.0.0.1:{port}{path}"
    r = t.run([PYTHON, "-I", "-c", _HTTP_REQUEST_PY, method, url, host or "", str(wait), f"{request_timeout:g}",
               json.dumps(headers)], input=body if method != "GET" else None, timeout=timeout)
    return json.loads(r.stdout)


def http_get(t, port, path, timeout=10, *, host=None) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path> on the node: (status, body[:2000]).

    Any HTTP status is returned; only no answer at all raises ReleaseError.
    `host` sets the Host header (apps that check it, like Django's
    ALLOWED_HOSTS, refuse 127.0.0.1).
    """
    answer = _request(t, port, path, host, 0, timeout + 10, request_timeout=timeout)
    if "error" in answer:
        raise ReleaseError(f"GET {path} on port {port} got no answer: {answer['error']}")
    return answer["status"], answer["body"]


def internal_request(t, port, path, *, method="GET", body=b"", headers=None, host=None, script_name="",
                     timeout=60) -> dict:
    """An internal request to a release on the node, as cron runs and tasks make them.

    `script_name` is the prefix the app is mounted at ("/blog"), sent as
    nginx sends it, so the app sees the same SCRIPT_NAME and PATH_INFO as for
    a request from outside. Returns {"status", "body", "seconds"} for any
    HTTP answer, or {"error", "timed_out", "seconds"} when none came within
    `timeout` seconds.
    """
    headers = dict(headers or {})
    if script_name:
        headers["SCRIPT_NAME"] = script_name
    return _request(t, port, path, host, 0, timeout + 30, method=method, headers=headers, body=body,
                    request_timeout=timeout)


def wait_until_answers(t, port, path="/", timeout=30, *, log_file=None, host=None) -> tuple[int, str]:
    """Poll until the release answers HTTP at all (any status); (status, body).

    The polling runs on the node, so this is one round trip however long it
    takes. `log_file` (e.g. error_log(layout, app)) adds its tail to the error.
    """
    answer = _request(t, port, path, host, timeout, timeout + 20)
    if "error" not in answer:
        return answer["status"], answer["body"]
    tail = _tail(t, log_file) if log_file else ""
    raise ReleaseError(f"release did not answer on port {port} within {timeout:g} s; last error: "
                       f"{answer['error']}" + (f"; log tail: {tail}" if tail else ""))


# --- cleanup -------------------------------------------------------------------------

_PRUNE_PY = r"""
import json, os, shutil, sys
releases, env_dir, programs, prefix, venvs = sys.argv[1:6]
keep = set(json.loads(sys.argv[6]))
removed, running = [], []
for name in sorted(os.listdir(releases)) if os.path.isdir(releases) else []:
    if name in keep:
        continue
    if os.path.exists(os.path.join(programs, prefix + name + ".conf")):
        running.append(name)  # never pull the code out from under a running release
        continue
    shutil.rmtree(os.path.join(releases, name))
    # Its env file, gunicorn config (and gunicorn's compiled copy of it), kept previous env.
    for where in (env_dir, os.path.join(env_dir, "__pycache__")):
        for entry in os.listdir(where) if os.path.isdir(where) else []:
            if entry.split(".", 1)[0] == name:
                os.unlink(os.path.join(where, entry))
    removed.append(name)
# Venvs that no remaining release uses (each release names its venv in .toppcloud-venv).
used = set()
for name in os.listdir(releases) if os.path.isdir(releases) else []:
    try:
        with open(os.path.join(releases, name, ".toppcloud-venv")) as f:
            used.add(f.read().strip())
    except FileNotFoundError:
        pass
removed_venvs = []
for key in sorted(os.listdir(venvs)) if os.path.isdir(venvs) else []:
    if os.path.join(venvs, key) not in used:
        shutil.rmtree(os.path.join(venvs, key))
        removed_venvs.append(key)
print(json.dumps({"removed": removed, "running": running, "removed_venvs": removed_venvs}))
"""


def prune(t, emit, layout, app, keep: list[str]) -> list[str]:
    """Remove release dirs (and their env and gunicorn config files) not in `keep`, then venvs no remaining release uses; return the removed ids.

    A release that still has a supervisor program is kept whatever `keep` says.
    """
    keep = [validate_release(k) for k in keep]
    prefix = f"app-{validate_name(app, 'app')}-"  # + release = program_name(app, release)
    argv = [PYTHON, "-I", "-c", _PRUNE_PY, layout.releases_dir(app), layout.env_dir(app),
            layout.supervisor_programs, prefix, layout.venvs_dir(app), json.dumps(keep)]
    result = json.loads(run_logged(t, emit, argv, step="prune").stdout)
    if result["removed_venvs"]:
        emit("log", text=f"removed virtualenvs no release uses: {', '.join(result['removed_venvs'])}")
    if result["running"]:
        emit("log", text=f"kept releases that are still running: {', '.join(result['running'])}")
    return result["removed"]
