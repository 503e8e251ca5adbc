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
import tarfile

from . import hostside
from .errors import NodeOpError
from . import progress, runtime
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
    sending = progress.Progress(emit, "upload", "bytes", total=_tree_bytes(src_dir))
    try:
        r = t.rsync(src_dir, dest, link_dest=link_dest, progress=lambda sent: sending.add(sent - sending.done))
    except CommandFailed as exc:
        _emit_result(emit, "upload", exc.result)
        raise
    sending.finish()
    _emit_result(emit, "upload", r)
    sent = re.search(r"Total bytes sent: ([\d,]+)", r.stdout)
    if sent:
        emit("upload.stats", bytes_sent=int(sent.group(1).replace(",", "")))
    if link_dest:  # files linked from a release uploaded with the archive's mtime 0 get a real time once
        t.run(["find", dest, "-not", "-newermt", "@1", "-exec", "touch", "-c", "-h", "{}", "+"], check=False)
    return dest


def _tree_bytes(top):
    """The bytes of the files under `top`: what an upload sends at most (unchanged files are linked, not sent)."""
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(top) for f in files)


# --- virtualenv ---------------------------------------------------------------


def python_installs(layout):
    """Where interpreters toppcloud installed (uv) live on the node."""
    return os.path.join(layout.root, "python")


def find_python(t, emit, layout, wanted, extra_dirs=()) -> dict:
    """The interpreter for app.ini's `python = 3.N` on the node: {"python": path, "version": "3.N.M"}.

    Searched in /usr/bin, /usr/local/bin, python_installs(layout), `extra_dirs`, PATH; none there and uv on
    the node: uv installs it under the node root. None at all: ReleaseError naming the versions the node has
    (nothing was changed on it then).
    """
    if not isinstance(wanted, str) or not re.fullmatch(r"3(\.(0|[1-9][0-9]?))?", wanted):
        raise ValueError(f"python {wanted!r} is invalid: give a Python version as 3 or 3.N")
    dirs = [_safe_path(d.rstrip("/") or "/", "python directory") for d in extra_dirs]
    r = run_logged(t, emit, [PYTHON, "-I", "-c", hostside.source("release_python"), wanted, python_installs(layout),
                             json.dumps(dirs)], step="python", check=False, timeout=1200)
    if r.rc != 0:
        raise ReleaseError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "finding python failed")
    found = json.loads(r.stdout)
    if "error" in found:
        raise ReleaseError(found["error"])
    _safe_path(found["python"], "python")
    return found


def ensure_venv(t, emit, layout, app, release_dir, requirements="requirements.txt", *,
                python=None) -> tuple[str, bool]:
    """The venv for the release's requirements: (path, built). Reused when complete.

    `python`: find_python's answer, the interpreter it is built with (None: the node's python3)."""
    release_dir = _safe_path(release_dir, "release_dir")
    interpreter = _safe_path(python["python"], "python") if python else PYTHON
    if requirements:
        norm = os.path.normpath(requirements)
        if requirements.startswith("/") or norm.startswith("..") or "\0" in requirements:
            raise ReleaseError(f"requirements {requirements!r} is invalid: it must be a path inside the app")
        requirements = norm
    argv = [PYTHON, "-I", "-c", hostside.source("release_venv_key"),
            release_dir, requirements or "", layout.venvs_dir(app),
            GUNICORN, VENV_MARKER, python["python"] if python else "", python["version"] if python else ""]
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
        run_logged(t, emit, [interpreter, "-m", "venv", "--clear", venv], step="venv", timeout=300)
        pip = [f"{venv}/bin/pip", "install", "--no-input", "--disable-pip-version-check",
               "--progress-bar", "off", GUNICORN]
        if found["requirements"]:
            pip += ["-r", found["requirements"]]
        progress.run_counting(t, emit, pip, step="venv", timeout=1800, what="venv", unit="packages",
                              counts=lambda line: line.startswith("Collecting "))
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


# --- build ----------------------------------------------------------------------


def static_dir(layout, app, release, static):
    """The release's static directory on the node (app.ini `static`, a relative path ending in '/')."""
    if not isinstance(static, str) or not static.endswith("/"):
        raise ValueError(f"static {static!r} is invalid: a relative directory ending in '/'")
    return _safe_path(os.path.join(release_dir(layout, app, release), static.rstrip("/")), "static")


def open_static(t, emit, layout, app, release, static, user) -> dict:
    """The release's static directory becomes the app user's to write, for its build commands (made if
    missing; files shared with other releases by hard links are copied first). {"files", "bytes"}."""
    return _static(t, emit, "open", static_dir(layout, app, release, static), validate_user(user))


def seal_static(t, emit, layout, app, release, static) -> dict:
    """After the build: the static directory is the node's again, read-only to the app, readable by nginx;
    a symlink or special file the build left there is a ReleaseError. {"files", "bytes"}."""
    return _static(t, emit, "seal", static_dir(layout, app, release, static))


def _static(t, emit, mode, path, *user):
    r = run_logged(t, emit, [PYTHON, "-I", "-c", hostside.source("release_static"), mode, path, *user],
                   step="build", check=False, timeout=600)
    if r.rc != 0:
        raise ReleaseError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"static {mode} failed")
    return json.loads(r.stdout)


def fetch_static(t, layout, app, release, static, dest) -> bool:
    """Copy the release's static directory on the node (what nginx serves there, built or not) into `dest`
    on this machine; False when the release has none. The node's files are not trusted: no member may
    land outside `dest` nor be anything but a file or a directory."""
    path = static_dir(layout, app, release, static)
    if t.run(["test", "-d", path], check=False).rc != 0:
        return False
    stream = t.open(["tar", "-C", path, "-cf", "-", "."])
    try:
        with tarfile.open(fileobj=stream.stdout, mode="r|") as tar:
            for member in tar:
                if not (member.isfile() or member.isdir()):
                    raise ReleaseError(f"the static directory of {release} holds {member.name}, "
                                       "which is not a file or a directory")
                tar.extract(member, dest, filter="data")
    except BaseException:
        stream.kill()
        raise
    stream.finish()
    return True


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
    and toppcloud-exec (nodeops/hostside/node_exec.py) loads it for every process of
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


def free_port(t, address="127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    address = validate_address(address)
    return int(t.run([PYTHON, "-I", "-c", hostside.source("release_free_port"), address]).stdout.strip())


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
    r = run_logged(t, emit, [PYTHON, "-I", "-c", hostside.source("release_start"),
                             layout.supervisor_sock, program_conf(layout, app, release),
                             name, layout.app_logs(app), _PORT_TOKEN, str(port)],
                   step="start", input=text.encode(), check=False, timeout=60)
    if r.rc != 0:
        tail = _tail(t, error_log(layout, app))
        raise ReleaseError((r.stderr.strip() or f"supervisord could not start {name}")
                           + (f"; log tail: {tail}" if tail else ""))
    return int(r.stdout.strip())


def stop(t, emit, layout, app, release) -> None:
    """Stop the release gracefully and forget its program. Stopping a stopped release is fine."""
    name = program_name(app, release)
    r = run_logged(t, emit, [PYTHON, "-I", "-c", hostside.source("release_stop"), layout.supervisor_sock, name,
                             program_conf(layout, app, release)], step="stop", check=False, timeout=60)
    if r.rc != 0:
        raise ReleaseError(r.stderr.strip() or f"could not stop {name}")


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
    r = run_logged(t, emit, [PYTHON, "-I", "-c", hostside.source("release_apply"),
                             layout.supervisor_sock, program_name(app, release),
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
    r = t.run([PYTHON, "-I", "-c", hostside.source("release_http_request"),
               method, url, host or "", str(wait), f"{request_timeout:g}",
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


def http_get_at(t, address, port, path, *, host, timeout=10) -> tuple[int, str]:
    """GET http://<address>:<port><path> from the machine t reaches (a balancer asking an app node's front
    door directly, past its own rotation): (status, body[:2000]); no answer at all raises ReleaseError."""
    address, port = validate_address(address), validate_port(port, "port")
    if not isinstance(path, str) or not _HTTP_PATH_RE.fullmatch(path):
        raise ValueError(f"path {path!r} is invalid: it must start with '/' and contain no spaces")
    url = f"http://{f'[{address}]' if ':' in address else address}:{port}{path}"
    r = t.run([PYTHON, "-I", "-c", hostside.source("release_http_request"), "GET", url, host or "", "0",
               f"{timeout:g}", "{}"], timeout=timeout + 10)
    answer = json.loads(r.stdout)
    if "error" in answer:
        raise ReleaseError(f"GET {url} (Host: {host}) got no answer: {answer['error']}")
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


def prune(t, emit, layout, app, keep: list[str]) -> list[str]:
    """Remove release dirs (and their env and gunicorn config files) not in `keep`, then venvs no remaining release uses; return the removed ids.

    A release that still has a supervisor program is kept whatever `keep` says.
    """
    keep = [validate_release(k) for k in keep]
    prefix = f"app-{validate_name(app, 'app')}-"  # + release = program_name(app, release)
    argv = [PYTHON, "-I", "-c", hostside.source("release_prune"), layout.releases_dir(app), layout.env_dir(app),
            layout.supervisor_programs, prefix, layout.venvs_dir(app), json.dumps(keep)]
    result = json.loads(run_logged(t, emit, argv, step="prune").stdout)
    if result["removed_venvs"]:
        emit("log", text=f"removed virtualenvs no release uses: {', '.join(result['removed_venvs'])}")
    if result["running"]:
        emit("log", text=f"kept releases that are still running: {', '.join(result['running'])}")
    return result["removed"]
