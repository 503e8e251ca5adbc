"""Prepare a node: packages, the root layout, toppcloud's nginx + supervisord.

Idempotent: a second run finds everything in place, changes nothing and
reports `changed: false` on every step.
"""

import hashlib
import json
import os
import shlex

from . import hostside
from .errors import NodeOpError
from . import node_users, runtime
from .layout import NodeLayout
from .steps import run_logged, step
from .transport import CommandFailed
from .validate import validate_address, validate_port, validate_root

NGINX_PROGRAM = "toppcloud-nginx"
HEALTH_PATH = "/.toppcloud/health"

# Binaries setup needs, and the Debian package that provides each.
REQUIRED = {
    "nginx": "nginx-light",
    "supervisord": "supervisor",
    "supervisorctl": "supervisor",
    "rsync": "rsync",
    "python3": "python3",
}

# Constant script; the names to look up arrive as positional parameters.
# sbin dirs are appended because non-root logins often lack them in PATH.
_WHICH_SH = 'PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"; for n do p=$(command -v "$n") && echo "$n=$p"; done; exit 0'


class SetupError(NodeOpError):
    pass


STEPS = ("facts", "packages", "layout", "config", "validate", "start", "app users", "verify")


def setup_node(t, *, root, address, http_port, emit, public=True):
    """public=False (a balancer node): nginx listens on <root>/run/nginx/nginx.sock, HAProxy takes the port."""
    root = validate_root(root)
    address = validate_address(address)
    http_port = validate_port(http_port, "http_port")
    layout = NodeLayout(root)
    changed = []
    emit("plan", steps=list(STEPS))  # lets a follower show progress as n/8

    with step(emit, "facts") as s:
        facts = gather_facts(t, emit)
        emit("node.facts", **facts)
    bins = facts.pop("binaries")
    if not facts["root"] and http_port < 1024:
        raise SetupError(f"http_port {http_port} needs root on the node; the ssh user is not root")

    with step(emit, "packages") as s:
        bins, s.changed = ensure_packages(t, emit, bins, facts)
        changed.append(s.changed)

    with step(emit, "layout") as s:
        argv = [bins["python3"], "-I", "-c", hostside.source("setup_ensure_dirs"), json.dumps(layout.directories())]
        created = json.loads(run_logged(t, emit, argv, step="layout").stdout)
        s.changed = bool(created)
        s.data["paths"] = created
        changed.append(s.changed)

    candidate = f"{layout.tmp}/nginx.conf.candidate"
    with step(emit, "config") as s:
        worker_user = None
        if facts["root"]:
            worker_user = "www-data" if _has_user(t, emit, "www-data") else "nobody nogroup"
        files = {
            layout.supervisor_conf: (0o644, render_supervisord_conf(layout).encode()),
            f"{layout.supervisor_programs}/{NGINX_PROGRAM}.conf": (0o644, render_nginx_program(layout, bins["nginx"]).encode()),
            **runtime.runtime_files(layout),  # how apps' processes start (deploys write them too)
        }
        written = t.put_files(files)
        nginx_text = render_nginx_conf(layout, address, http_port, worker_user,
                                       listen=None if public else f"unix:{layout.nginx_sock}").encode()
        t.put_file(candidate, nginx_text)
        s.changed = bool(written)
        s.data["files"] = written
        changed.append(s.changed)

    # The candidate is tested before it replaces nginx.conf, so a bad config
    # never lands where a (re)starting nginx would pick it up.
    with step(emit, "validate") as s:
        run_logged(t, emit, [bins["nginx"], "-t", "-q", "-e", layout.nginx_error_log, "-c", candidate],
                   step="validate")
        nginx_changed = t.put_file(layout.nginx_conf, nginx_text)
        t.run(["rm", "-f", candidate])
        s.changed = nginx_changed
        changed.append(s.changed)

    with step(emit, "start") as s:
        s.changed = start_services(t, emit, layout, bins, facts, nginx_changed)
        changed.append(s.changed)

    # Apps deployed before each app had its own user get theirs now (their files change hands);
    # their running web processes move to it with their next deploy, which starts the new ones
    # beside them and drains the old: no request fails.
    with step(emit, "app users") as s:
        s.changed, s.data["still_root"] = ensure_app_users(t, emit, layout) if facts["root"] else (False, [])
        changed.append(s.changed)

    with step(emit, "verify") as s:
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}:{http_port}{HEALTH_PATH}" if public else f"http://localhost{HEALTH_PATH}"
        unix = [] if public else [layout.nginx_sock]
        try:
            run_logged(t, emit, [bins["python3"], "-I", "-c", hostside.source("setup_health"),
                                 url, "40", *unix], step="verify")
        except CommandFailed as exc:
            log = t.run(["tail", "-n", "5", layout.nginx_error_log], check=False).stdout.strip()
            raise SetupError(f"{exc}\nnginx error log:\n{log}" if log else str(exc)) from None
        s.data["url"] = url

    result = dict(facts, changed=any(changed), health="ok")
    emit("node.setup", changed=result["changed"], root=root, address=address, http_port=http_port)
    return result


def ensure_app_users(t, emit, layout):
    """Every app on the node has its user and its directories their owners: (changed, [programs that
    still run without user=, to be moved by the app's next deploy])."""
    changed, still_root = False, []
    for app in node_users.list_apps(t, layout):
        try:
            changed |= bool(node_users.ensure_app_user(t, emit, layout, app)["changed"])
        except node_users.UserError as exc:
            raise SetupError(f"app {app}: {exc}") from None
    r = run_logged(t, emit, ["grep", "-L", "-e", "^user = ", "-r", "--include=app-*.conf", layout.supervisor_programs],
                   step="app users", check=False)
    still_root = sorted(os.path.basename(p)[:-len(".conf")] for p in r.stdout.split())
    if still_root:
        emit("log", text=f"still running as root until their app's next deploy: {', '.join(still_root)}")
    return changed, still_root


def _has_user(t, emit, name):
    return run_logged(t, emit, ["id", "-u", name], step="config", check=False).rc == 0


def gather_facts(t, emit):
    def out(argv):
        r = run_logged(t, emit, argv, step="facts", check=False)
        return r.stdout.strip() if r.rc == 0 else None

    which = out(["sh", "-c", _WHICH_SH, "sh", *REQUIRED, "apt-get", "systemctl"]) or ""
    bins = dict(line.split("=", 1) for line in which.splitlines() if "=" in line)

    os_release = {}
    for line in (out(["cat", "/etc/os-release"]) or "").splitlines():
        key, _, value = line.partition("=")
        os_release[key] = " ".join(shlex.split(value)) if value else ""
    mem_kb = None
    for line in (out(["cat", "/proc/meminfo"]) or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])

    def version(name, *args):
        if name not in bins:
            return None
        r = run_logged(t, emit, [bins[name], *args], step="facts", check=False)
        text = (r.stdout + r.stderr).strip()  # nginx -v prints on stderr
        return text.splitlines()[0] if r.rc == 0 and text else None

    nproc = out(["nproc"])
    systemd = run_logged(t, emit, ["test", "-d", "/run/systemd/system"], step="facts", check=False)
    return {
        "os": os_release.get("PRETTY_NAME"),
        "kernel": out(["uname", "-r"]),
        "nproc": int(nproc) if nproc and nproc.isdigit() else None,
        "mem_total_kb": mem_kb,
        "python3": version("python3", "--version"),
        "nginx": version("nginx", "-v"),
        "supervisord": version("supervisord", "--version"),
        "root": out(["id", "-u"]) == "0",
        # sd_booted(): systemd is PID 1 exactly when this directory exists.
        "systemd": systemd.rc == 0,
        "binaries": bins,
    }


def ensure_packages(t, emit, bins, facts):
    missing = [name for name in REQUIRED if name not in bins]
    if not missing:
        return bins, False
    packages = sorted({REQUIRED[name] for name in missing})
    if not (facts["root"] and "apt-get" in bins):
        how = "as root with apt-get" if "apt-get" in bins else "with the system's package manager"
        raise SetupError(
            f"the node is missing {', '.join(missing)}; install {' '.join(packages)} "
            f"{how}, or connect as root so setup can install them"
        )
    apt = ["env", "DEBIAN_FRONTEND=noninteractive", bins["apt-get"]]
    run_logged(t, emit, apt + ["update", "-q"], step="packages", timeout=600)
    run_logged(t, emit, apt + ["install", "-y", "-q", "--no-install-recommends", *packages],
               step="packages", timeout=1800)
    if "nginx" in missing and facts["systemd"] and "systemctl" in bins:
        # Debian starts its own nginx on :80 after install; ours replaces it.
        run_logged(t, emit, [bins["systemctl"], "disable", "--now", "nginx.service"],
                   step="packages", check=False)
    which = run_logged(t, emit, ["sh", "-c", _WHICH_SH, "sh", *REQUIRED], step="packages").stdout
    bins = dict(bins, **dict(line.split("=", 1) for line in which.splitlines() if "=" in line))
    still = [name for name in REQUIRED if name not in bins]
    if still:
        raise SetupError(f"the node still lacks {', '.join(still)} after installing {' '.join(packages)}")
    return bins, True


def _supervisor_running(t, emit, ctl):
    r = run_logged(t, emit, ctl + ["pid"], step="start", check=False)
    return r.rc == 0 and r.stdout.strip().isdigit()


def start_services(t, emit, layout, bins, facts, nginx_changed):
    ctl = [bins["supervisorctl"], "-c", layout.supervisor_conf]
    changed = False
    if facts["systemd"] and facts["root"]:
        changed |= install_unit(t, emit, layout, bins)
    elif facts["systemd"]:
        emit("node.systemd", installed=False, reason="not root: cannot install a systemd unit")
    else:
        emit("node.systemd", installed=False, reason="systemd is not PID 1 on this host")

    if not _supervisor_running(t, emit, ctl):
        if facts["systemd"] and facts["root"]:
            run_logged(t, emit, [bins["systemctl"], "start", unit_name(layout)], step="start")
        else:
            # supervisord daemonizes, so the ssh session returns at once.
            run_logged(t, emit, [bins["supervisord"], "-c", layout.supervisor_conf], step="start")
        run_logged(t, emit, [bins["python3"], "-I", "-c", hostside.source("setup_wait_sock"),
                             layout.supervisor_sock], step="start")
        return True

    reread = run_logged(t, emit, ctl + ["reread"], step="start")
    if "No config updates" not in reread.stdout:
        run_logged(t, emit, ctl + ["update"], step="start")
        changed = True
    status = run_logged(t, emit, ctl + ["status", NGINX_PROGRAM], step="start", check=False)
    if "RUNNING" not in status.stdout:
        run_logged(t, emit, ctl + ["start", NGINX_PROGRAM], step="start")
        changed = True
    elif nginx_changed:
        # HUP = graceful reload: new workers with the new (tested) config.
        run_logged(t, emit, ctl + ["signal", "HUP", NGINX_PROGRAM], step="start")
        changed = True
    return changed


def unit_name(layout):
    return "toppcloud-" + hashlib.sha256(layout.root.encode()).hexdigest()[:8] + ".service"


def install_unit(t, emit, layout, bins):
    unit = f"""\
# Managed by toppcloud node setup; regenerated on every run.
[Unit]
Description=toppcloud supervisord for {layout.root}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={bins['supervisord']} -n -c {layout.supervisor_conf}
ExecReload={bins['supervisorctl']} -c {layout.supervisor_conf} update
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""
    name = unit_name(layout)
    changed = t.put_file(f"/etc/systemd/system/{name}", unit.encode())
    if changed:
        run_logged(t, emit, [bins["systemctl"], "daemon-reload"], step="start")
    enabled = run_logged(t, emit, [bins["systemctl"], "is-enabled", name], step="start", check=False)
    if enabled.stdout.strip() != "enabled":
        run_logged(t, emit, [bins["systemctl"], "enable", name], step="start")
        changed = True
    emit("node.systemd", installed=True, unit=name, changed=changed)
    return changed


def render_supervisord_conf(layout):
    return f"""\
; Managed by toppcloud node setup; regenerated on every run.
[unix_http_server]
file = {layout.supervisor_sock}
chmod = 0700

[supervisord]
pidfile = {layout.supervisor_pid}
logfile = {layout.supervisor_log}
logfile_maxbytes = 10MB
logfile_backups = 3
childlogdir = {layout.logs}
directory = {layout.root}
umask = 022
identifier = toppcloud

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{layout.supervisor_sock}

[include]
files = {layout.supervisor_programs}/*.conf
"""


def render_nginx_program(layout, nginx):
    return f"""\
; Managed by toppcloud node setup; regenerated on every run.
[program:{NGINX_PROGRAM}]
command = {nginx} -e {layout.nginx_error_log} -c {layout.nginx_conf} -g "daemon off;"
autostart = true
autorestart = true
startsecs = 1
; QUIT = graceful shutdown: finish requests in flight.
stopsignal = QUIT
stopwaitsecs = 30
redirect_stderr = true
stdout_logfile = {layout.logs}/{NGINX_PROGRAM}.log
stdout_logfile_maxbytes = 5MB
stdout_logfile_backups = 2
"""


def render_nginx_conf(layout, address, http_port, worker_user=None, listen=None):
    listen = listen or (f"[{address}]:{http_port}" if ":" in address else f"{address}:{http_port}")
    tmp = layout.nginx_tmp
    user = f"user {worker_user};\n" if worker_user else ""
    return f"""\
# Managed by toppcloud node setup; regenerated on every run.
# The front door (nodeops/frontdoor.py) is {layout.nginx_sites}/*.conf, with the default server;
# until the first one is pushed, the server below is the default (the first for its address).
{user}worker_processes auto;
pid {layout.nginx_pid};
error_log {layout.nginx_error_log} warn;

events {{
    worker_connections 1024;
}}

http {{
    types {{
        text/html html htm;
        text/css css;
        text/plain txt;
        text/xml xml;
        application/javascript js mjs;
        application/json json map;
        application/pdf pdf;
        application/wasm wasm;
        image/png png;
        image/jpeg jpg jpeg;
        image/gif gif;
        image/svg+xml svg;
        image/webp webp;
        image/x-icon ico;
        font/woff woff;
        font/woff2 woff2;
    }}
    default_type application/octet-stream;
    sendfile on;
    server_tokens off;
    access_log {layout.nginx_access_log};

    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    server {{
        listen {listen};
        server_name "";

        location = {HEALTH_PATH} {{
            default_type text/plain;
            access_log off;
            return 200 "ok\\n";
        }}

        location / {{
            default_type text/plain;
            return 404 "no app is deployed here\\n";
        }}
    }}

    include {layout.nginx_sites}/*.conf;
}}
"""
