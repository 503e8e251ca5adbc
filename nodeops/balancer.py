"""A server group's load balancer node: HAProxy in front of the group's app nodes, rendered from plain data.

HAProxy (Debian's package) runs under the node's own supervisord in master-worker mode (`-W`, master
socket `<root>/run/haproxy-master.sock`), its config at `<root>/haproxy/haproxy.cfg`, its runtime API
(admin level) on `<root>/run/haproxy.sock`. The lb node's own nginx keeps to a unix socket, so the
public port is HAProxy's.

What it serves: every app location of the group (host + path prefix, wildcard hosts and '*' ordered
as the node front door orders them, nodeops/frontdoor.py) goes to the backend `app_<app>`, whose servers
are the app nodes where the app is live (server name = the node's name, address:http_port, the Host
header kept). Each server is health-checked with a GET of the location's path + the app's health check
path (`inter 1s fall 2 rise 2`: a dead node leaves within 3 s), `retries 3` + `option redispatch`.
The balancer sets X-Forwarded-For/-Proto, and answers with X-Toppcloud-Node naming the server.
Hosts with a certificate are served over HTTPS (their plain HTTP redirects there); a location with
cache=True is cached at the balancer (only answers marked public or max-age, X-Cache HIT/MISS).

push(): the candidate is written beside the live file and checked with `haproxy -c` before it replaces
it; then the servers' states are saved (server-state-file) and the master reloads: the new worker
takes over the listening sockets and loads the states, so a drained node stays drained.
"""

import dataclasses
import hashlib
import json
import os
import re

from . import hostside
from .errors import NodeOpError
from .frontdoor import listen_address
from .setup import HEALTH_PATH
from .steps import run_logged, step
from .transport import CommandFailed
from .validate import DEFAULT_HOST, validate_address, validate_location, validate_name, validate_port

PROGRAM = "toppcloud-haproxy"
PYTHON = "/usr/bin/python3"
CACHE = "toppcloud"
STATES = ("ready", "drain", "maint")
STEPS = ("haproxy package", "haproxy config", "haproxy start", "haproxy verify")


class BalancerError(NodeOpError):
    """The balancer could not do what was asked; its live config is as it was (the message says why)."""


class Paths:
    """Where the balancer's files live under a node's root."""

    def __init__(self, layout):
        j = os.path.join
        self.dir = j(layout.root, "haproxy")
        self.cfg = j(self.dir, "haproxy.cfg")
        self.tls = j(self.dir, "tls")  # one pem (chain + key, 0600) per certificate
        self.state_file = j(self.dir, "server-state")
        self.sock = j(layout.run, "haproxy.sock")
        self.master_sock = j(layout.run, "haproxy-master.sock")
        self.pid = j(layout.run, "haproxy.pid")  # the master's
        self.log = j(layout.logs, f"{PROGRAM}.log")
        self.program_conf = j(layout.supervisor_programs, f"{PROGRAM}.conf")


def backend_name(app):
    return "app_" + validate_name(app, "app")


@dataclasses.dataclass(frozen=True)
class Server:
    """An app node the app is live on."""
    name: str  # the node's name
    address: str
    port: int


@dataclasses.dataclass(frozen=True)
class Location:
    """One app served at host + path prefix through the balancer."""
    app: str
    host: str
    path: str
    servers: tuple  # of Server
    health_check: str | None = None  # the app's health check path (app.ini), relative to `path`; an app's
    # servers are checked at its first location in render()'s list (give its own, app.ini's, first)
    cache: bool = False


@dataclasses.dataclass(frozen=True)
class Certificate:
    host: str
    chain_pem: str
    key_pem: str  # secret: reaches the node only inside put_files' stdin

    def file(self, paths):
        """(path, (mode, bytes)): HAProxy's pem, the chain then the key, named by its content."""
        pem = self.chain_pem.rstrip("\n") + "\n" + self.key_pem.rstrip("\n") + "\n"
        digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
        return os.path.join(paths.tls, f"{self.host.replace('*', '_wildcard')}-{digest}.pem"), (0o600, pem.encode())


def _check(loc):
    validate_name(loc.app, "app")
    if validate_location(loc.host, loc.path) != (loc.host, loc.path):
        raise ValueError(f"host {loc.host!r} of {loc.app} is not in its canonical form")
    if loc.health_check is not None and not re.fullmatch(r"/[A-Za-z0-9._~/%-]*", loc.health_check):
        raise ValueError(f"health check path {loc.health_check!r} of {loc.app} is invalid")
    for s in loc.servers:
        validate_name(s.name, "server")
        validate_address(s.address)
        validate_port(s.port)


def order(locations):
    """Most specific first, as nginx picks a server and a location: exact hosts, then '*.' wildcards
    (the longest suffix first), then '*'; on a host, the longest path prefix first."""
    def key(loc):
        kind = 2 if loc.host == DEFAULT_HOST else 1 if loc.host.startswith("*.") else 0
        return (kind, -len(loc.host), loc.host, -len(loc.path), loc.path)
    return sorted(locations, key=key)


def _host_cond(host):
    if host == DEFAULT_HOST:
        return ""
    if host.startswith("*."):
        return f"{{ var(txn.host) -m end {host[1:]} }}"
    return f"{{ var(txn.host) -m str {host} }}"


def _path_cond(path):
    if path == "/":
        return ""
    return f"{{ path_beg {path} }} || {{ path {path.rstrip('/')} }}"


def _check_request(loc):
    """The health check of the app's servers: GET its location's path + its health check path."""
    host = loc.host
    if host == DEFAULT_HOST:
        host = "toppcloud-check.invalid"  # any name no other site has: the node's default server
    elif host.startswith("*."):
        host = "toppcloud-check" + host[1:]
    uri = loc.path + (loc.health_check or "/").lstrip("/")
    return f"    http-check send meth GET uri {uri} ver HTTP/1.1 hdr Host {host}\n"


def render(paths, locations, *, listen, tls_listen=None, certificates=(), source=None):
    """The whole haproxy.cfg for these locations (ValueError names what is wrong).

    source: the address the balancer connects to app nodes from (theirs trust its forwarding headers)."""
    source_line = f"    source {validate_address(source)}\n" if source else ""
    for loc in locations:
        _check(loc)
    seen = {}
    for loc in locations:
        if (loc.host, loc.path) in seen:
            raise ValueError(f"two apps at {loc.host}{loc.path}: {seen[loc.host, loc.path]} and {loc.app}")
        seen[loc.host, loc.path] = loc.app
    ordered = order(locations)
    certs = {c.host: c for c in certificates}
    if certs and not tls_listen:
        raise ValueError("certificates need a TLS port")
    out = [f"""\
# Managed by toppcloud: the group's balancer, rendered from the control plane's records; {len(locations)} locations.
global
    master-worker
    stats socket {paths.sock} mode 600 level admin expose-fd listeners
    stats timeout 30s
    # An old worker still holding a long request after a reload or a stop ends after this.
    hard-stop-after 60s
    server-state-file {paths.state_file}
    log stdout format raw local0 notice
    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
    tune.ssl.default-dh-param 2048

defaults
    mode http
    log global
    option dontlognull
    option forwardfor
    option redispatch
    retries 3
    # A GET whose server died under it (reset, empty answer) is sent again, to another server.
    retry-on all-retryable-errors
    load-server-state-from-file global
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s
    timeout check 2s
    default-server inter 1s fall 2 rise 2
{source_line}
cache {CACHE}
    total-max-size 64
    max-object-size 1048576
    max-age 3600

frontend public
    bind {listen}
"""]
    if certs:
        out.append(f"    bind {tls_listen} ssl crt {paths.tls}/ alpn h2,http/1.1\n")
    out.append(f"""\
    http-request return status 200 content-type text/plain string "ok\\n" if {{ path {HEALTH_PATH} }}
    http-request set-var(txn.host) req.hdr(host),field(1,:),lower
    # What a client says it forwarded is not believed: the balancer's option forwardfor names the client.
    http-request del-header X-Forwarded-For
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
""")
    tls_port = tls_listen.rsplit(":", 1)[1] if tls_listen else None
    for host in sorted({loc.host for loc in ordered if _certificate_for(loc.host, certs)}):
        target = "https://%[var(txn.host)]" + ("" if tls_port == "443" else f":{tls_port}") + "%[capture.req.uri]"
        out.append(f"    http-request redirect location {target} code 301 if !{{ ssl_fc }} {_host_cond(host)} "
                   "!{ path_beg /.well-known/acme-challenge/ }\n")
    for i, loc in enumerate(ordered):
        cond = " ".join(c for c in (_host_cond(loc.host), ) if c)
        path = _path_cond(loc.path)
        if path:
            # (host and path_beg) or (host and path): HAProxy's || binds looser than juxtaposition.
            a, b = path.split(" || ")
            conds = [f"{cond} {a}".strip(), f"{cond} {b}".strip()]
        else:
            conds = [cond]
        for c in conds:
            out.append(f"    http-request set-var(txn.route) str(r{i}) if !{{ var(txn.route) -m found }} {c}\n"
                       .replace(" \n", "\n"))
        if loc.cache:
            out.append(f"    http-request set-var(txn.cache) bool(true) if {{ var(txn.route) -m str r{i} }}\n")
    for i, loc in enumerate(ordered):
        out.append(f"    use_backend {backend_name(loc.app)} if {{ var(txn.route) -m str r{i} }}\n")
    out.append("    default_backend nothing_here\n\n"
               "backend nothing_here\n"
               '    http-request return status 404 content-type text/plain string "no app is deployed here\\n"\n')

    by_app = {}
    for loc in locations:
        by_app.setdefault(loc.app, []).append(loc)
    for app in sorted(by_app):
        first = by_app[app][0]  # the health check asks the app's first location as given: its own (app.ini)
        servers = {s.name: s for loc in by_app[app] for s in loc.servers}
        cached = any(loc.cache for loc in by_app[app])
        text = [f"\nbackend {backend_name(app)}\n", "    balance roundrobin\n", "    option httpchk\n",
                _check_request(first), "    http-check expect status 200-399\n"]
        if cached:
            text.append(f"    http-request cache-use {CACHE} if {{ var(txn.cache) -m bool }}\n"
                        # Only what the app marks cacheable: public or max-age, never private/no-store/no-cache
                        # (nor an answer without Cache-Control, which HAProxy would keep for its max-age).
                        f"    http-response cache-store {CACHE} if {{ var(txn.cache) -m bool }} "
                        "{ res.hdr(cache-control) -m reg -i (^|[,\\ ])(public|s-maxage=[1-9]|max-age=[1-9]) } "
                        "!{ res.hdr(cache-control) -m reg -i (^|[,\\ ])(private|no-store|no-cache) }\n"
                        "    http-response set-header X-Cache MISS if { var(txn.cache) -m bool } { srv_id -m found }\n"
                        "    http-response set-header X-Cache HIT if { var(txn.cache) -m bool } !{ srv_id -m found }\n")
        text.append("    http-response set-header X-Toppcloud-Node %[srv_name] if { srv_id -m found }\n")
        for s in sorted(servers.values(), key=lambda s: s.name):
            text.append(f"    server {s.name} {listen_address(s.address, s.port)} check\n")
        out.append("".join(text))
    return "".join(out)


def _certificate_for(host, certs):
    if host in certs:
        return certs[host]
    if not host.startswith("*") and "." in host:
        return certs.get("*." + host.split(".", 1)[1])
    return None


def describe(locations):
    """The locations as event data."""
    return [dataclasses.asdict(loc) | {"servers": [s.name for s in loc.servers]} for loc in locations]


# Setup

def render_program(paths, haproxy):
    return f"""\
; Managed by toppcloud balancer setup; regenerated on every run.
[program:{PROGRAM}]
command = {haproxy} -W -db -f {paths.cfg} -p {paths.pid} -S {paths.master_sock},mode,600
autostart = true
autorestart = true
startsecs = 1
; USR1 = soft stop: the listeners close, requests in flight finish.
stopsignal = USR1
stopwaitsecs = 30
redirect_stderr = true
stdout_logfile = {paths.log}
stdout_logfile_maxbytes = 5MB
stdout_logfile_backups = 2
"""


def _which_haproxy(t, emit):
    return run_logged(t, emit, ["sh", "-c", _WHICH], step="haproxy package").stdout.strip()


_WHICH = 'PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"; command -v haproxy; exit 0'


def ensure_haproxy(t, emit):
    """(path of haproxy, whether it was installed now): Debian's package, as setup ensures nginx."""
    found = _which_haproxy(t, emit)
    if found:
        return found, False
    root = t.run(["id", "-u"]).stdout.strip() == "0"
    apt = t.run(["sh", "-c", 'command -v apt-get; exit 0']).stdout.strip()
    if not (root and apt):
        raise BalancerError("the node has no haproxy; install the haproxy package as root, or connect as root "
                            "so setup can install it")
    env = ["env", "DEBIAN_FRONTEND=noninteractive", apt]
    run_logged(t, emit, env + ["update", "-q"], step="haproxy package", timeout=600)
    run_logged(t, emit, env + ["install", "-y", "-q", "--no-install-recommends", "haproxy"],
               step="haproxy package", timeout=1800)
    # Debian starts its own haproxy after install; ours runs under the node's supervisord.
    run_logged(t, emit, ["systemctl", "disable", "--now", "haproxy.service"], step="haproxy package", check=False)
    found = _which_haproxy(t, emit)
    if not found:
        raise BalancerError("the node still has no haproxy after installing the haproxy package")
    return found, True


def setup_balancer(t, emit, layout, *, address, http_port, https_port=None):
    """HAProxy installed, configured (no locations yet, or the live config kept) and running under the
    node's supervisord, answering its health URL on address:http_port. Idempotent."""
    address = validate_address(address)
    http_port = validate_port(http_port, "http_port")
    paths = Paths(layout)
    ctl = ["supervisorctl", "-c", layout.supervisor_conf]
    with step(emit, "haproxy package") as s:
        haproxy, s.changed = ensure_haproxy(t, emit)
        version = run_logged(t, emit, [haproxy, "-v"], step="haproxy package").stdout.splitlines()[0]
        s.data["version"] = version

    with step(emit, "haproxy config") as s:
        t.run(["mkdir", "-p", paths.dir, paths.tls])
        t.run(["chmod", "0700", paths.tls])
        live = t.run(["cat", paths.cfg], check=False)
        written = []
        if live.rc != 0:  # first setup: nothing served yet but the health URL and a 404
            text = render(paths, [], listen=listen_address(address, http_port))
            candidate = paths.cfg + ".first"
            t.put_file(candidate, text.encode())
            try:
                run_logged(t, emit, [haproxy, "-c", "-f", candidate], step="haproxy config")
            finally:
                t.run(["rm", "-f", candidate])
            t.put_file(paths.cfg, text.encode())
            written.append(paths.cfg)
        written += t.put_files({paths.program_conf: (0o644, render_program(paths, haproxy).encode())})
        s.changed = bool(written)
        s.data["files"] = written

    with step(emit, "haproxy start") as s:
        reread = run_logged(t, emit, ctl + ["reread"], step="haproxy start")
        s.changed = False
        if "No config updates" not in reread.stdout:
            run_logged(t, emit, ctl + ["update"], step="haproxy start")
            s.changed = True
        status = run_logged(t, emit, ctl + ["status", PROGRAM], step="haproxy start", check=False)
        if "RUNNING" not in status.stdout:
            run_logged(t, emit, ctl + ["start", PROGRAM], step="haproxy start")
            s.changed = True

    with step(emit, "haproxy verify") as s:
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}:{http_port}{HEALTH_PATH}"
        try:
            run_logged(t, emit, [PYTHON, "-I", "-c", hostside.source("setup_health"), url, "40"],
                       step="haproxy verify")
        except CommandFailed as exc:
            log = t.run(["tail", "-n", "5", paths.log], check=False).stdout.strip()
            raise BalancerError(f"{exc}\nhaproxy log:\n{log}" if log else str(exc)) from None
        s.data["url"] = url
    emit("balancer.setup", address=address, http_port=http_port, version=version)
    return {"haproxy": version, "url": url}


# Push

def push(t, emit, layout, text, certificates=()) -> bool:
    """Make `text` the balancer's config: certificates first, then `haproxy -c`, swap, reload.

    True if it changed (and HAProxy reloaded). BalancerError if HAProxy refused it (the live config
    is untouched) or did not reload.
    """
    paths = Paths(layout)
    files = dict(c.file(paths) for c in certificates)
    if files:  # never logged: the keys travel on stdin
        t.put_files(files, dirs=[(paths.tls, 0o700)])
    argv = [PYTHON, "-I", "-c", hostside.source("lb_admin"), "push", paths.cfg, paths.state_file, paths.sock,
            paths.master_sock]
    try:
        r = run_logged(t, emit, argv, step="balancer", input=text.encode(), timeout=60)
    except CommandFailed as exc:
        said = exc.result.stderr.strip()
        if "changed" in exc.result.stdout:
            raise BalancerError(said or str(exc)) from None
        raise BalancerError(f"haproxy refused the new balancer config; the live config is unchanged: "
                            f"{said[-1500:]}") from None
    changed = r.stdout.strip() != "unchanged"
    if changed and files is not None:
        keep = set(files)
        listing = t.run(["ls", "-1", paths.tls], check=False).stdout.split()
        old = [os.path.join(paths.tls, f) for f in listing if os.path.join(paths.tls, f) not in keep]
        if old:
            t.run(["rm", "-f", "--", *old])
    return changed


def read_live(t, layout) -> str:
    r = t.run(["cat", Paths(layout).cfg], check=False)
    return r.stdout if r.rc == 0 else ""


# The runtime API

def _admin(t, emit, layout, *args, step_name="balancer", timeout=60, check=True):
    argv = [PYTHON, "-I", "-c", hostside.source("lb_admin"), args[0], Paths(layout).sock, *args[1:]]
    if emit is None:
        return t.run(argv, timeout=timeout, check=check)
    return run_logged(t, emit, argv, step=step_name, timeout=timeout, check=check)


def server_states(t, layout):
    """Every server of every backend: [{backend, server, state, admin, last_change_s, ...}]."""
    try:
        r = _admin(t, None, layout, "states")
    except CommandFailed as exc:
        raise BalancerError(f"the balancer's runtime API did not answer: {exc.result.stderr.strip()[-500:]}") from None
    return json.loads(r.stdout)


def set_server_state(t, emit, layout, backend, server, state):
    """ready | drain | maint for one server (drain: no new requests, those in flight finish)."""
    if state not in STATES:
        raise ValueError(f"state {state!r} is invalid: one of {', '.join(STATES)}")
    validate_name(server, "server")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", backend or ""):
        raise ValueError(f"backend {backend!r} is invalid")
    try:
        _admin(t, emit, layout, "set", backend, server, state)
    except CommandFailed as exc:
        raise BalancerError(f"could not set {backend}/{server} to {state}: {exc.result.stderr.strip()}") from None
    emit("balancer.server_state", backend=backend, server=server, admin=state)


def wait_idle(t, emit, layout, backend, server, timeout=30) -> int:
    """Wait until the server has no request in flight; the seconds it took (BalancerError on timeout)."""
    validate_name(server, "server")
    try:
        r = _admin(t, emit, layout, "wait_idle", backend, server, str(float(timeout)), timeout=timeout + 30)
    except CommandFailed as exc:
        if exc.result.rc == 3:
            left = json.loads(exc.result.stdout or "{}").get("sessions")
            raise BalancerError(f"{backend}/{server} still had {left} requests in flight after {timeout} s") from None
        raise BalancerError(f"could not wait for {backend}/{server}: {exc.result.stderr.strip()}") from None
    seconds = json.loads(r.stdout)["seconds"]
    emit("balancer.idle", backend=backend, server=server, seconds=seconds)
    return int(round(seconds))
