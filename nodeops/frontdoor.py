"""A node's front door: the one nginx config of every app, host and path on it, rendered in one place.

The control plane knows what is live where; it hands render() the node's
routes (an app at a host and path prefix, on the port of its live
release) and push() makes the text live: the certificates it names are
put on the node first, then the candidate is tested with `nginx -t`
together with the node's nginx.conf, and only if nginx accepts it does it
replace the live file (atomically) before nginx reloads gracefully. A
render nginx refuses never replaces a good one.

What a route serves, for an app at host H and prefix P (P is "/" or "/blog/"):

    P...                        the app (gunicorn on 127.0.0.1:port); SCRIPT_NAME = P without its last '/'
    Pstatic/<release-id>/F      the release's static/F, far-future cached ($STATIC_URL); any release
                                still on the node's disk, so pages of an old release keep their files
    Pstatic/F                   the live release's static/F, cached for an hour (the older pattern)
    P<name>/F                   a writable static directory (app.ini writable_static_files)

A route in maintenance answers 503 with a short page instead, for all of P.
Host "*" is the node's default server (any host no other site names);
"*.example.com" matches every name below example.com. A host with a
certificate is served over HTTPS on the node's TLS port, and its plain
HTTP redirects there (ACME http-01 challenges excepted).
"""

import dataclasses
import hashlib
import os
import re

from . import hostside
from .errors import NodeOpError
from .setup import HEALTH_PATH
from .appini import WRITABLE_NAME_RE
from .release import validate_release
from .steps import run_logged
from .transport import CommandFailed
from .validate import DEFAULT_HOST, validate_address, validate_location, validate_name, validate_port

PYTHON = "/usr/bin/python3"
SITE = "toppcloud.conf"  # the one file in run/nginx/sites/ (older per-app files are removed on push)
# A release id as jobs/steps/releases.py makes them: only these are versioned static URLs, so a
# directory under static/ with any other name is still served by the older pattern.
RELEASE_ID_RE = r"[0-9]{14}-[0-9a-f]{8}"
STATIC_MAX_AGE = 31536000
_LISTEN_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]+):[0-9]{1,5}")
_STATIC_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/")

MAINTENANCE_PAGE = ("<!doctype html><html><head><meta charset=utf-8><title>Down for maintenance</title></head>"
                    "<body><h1>Down for maintenance</h1><p>{app} is being worked on and will be back shortly."
                    "</p></body></html>")


class FrontDoorError(NodeOpError):
    """The front door could not be changed; the live config is as it was (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Route:
    """One app served at host + path prefix on this node."""
    app: str
    host: str
    path: str
    port: int
    release: str  # the live release (its static/ is served unversioned)
    static: str | None = "static/"  # the static directory inside a release, or None
    writable: tuple[str, ...] = ()  # writable static directory names
    maintenance: bool = False


@dataclasses.dataclass(frozen=True)
class Certificate:
    host: str
    chain_pem: str
    key_pem: str  # secret: reaches the node only inside put_files' stdin

    def files(self, layout):
        """{path: (mode, bytes)} of its two files, named by their content (a new one never overwrites the live one)."""
        digest = hashlib.sha256((self.chain_pem + "\0" + self.key_pem).encode()).hexdigest()[:16]
        base = os.path.join(layout.tls_dir, f"{_file_host(self.host)}-{digest}")
        return {base + ".crt": (0o644, self.chain_pem.encode()), base + ".key": (0o600, self.key_pem.encode())}


def static_url(path, release):
    """$STATIC_URL: where nginx serves the release's static/ with far-future caching (see the module doc)."""
    if re.fullmatch(RELEASE_ID_RE, release):
        return f"{path}static/{release}/"
    return f"{path}static/"  # not a release id toppcloud made: only the older pattern can serve it


def _file_host(host):
    return host.replace("*", "_wildcard")


def _listen(value, field):
    if field == "listen" and isinstance(value, str) and re.fullmatch(r"unix:/[A-Za-z0-9._/-]+", value):
        return value  # a balancer node's own nginx (nodeops/setup.py public=False)
    if not isinstance(value, str) or not _LISTEN_RE.fullmatch(value):
        raise ValueError(f"{field} {value!r} is invalid: it must be address:port")
    validate_port(int(value.rsplit(":", 1)[1]), field)
    return value


def listen_address(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _check_route(r):
    validate_name(r.app, "app")
    if validate_location(r.host, r.path) != (r.host, r.path):
        raise ValueError(f"host {r.host!r} is not in its canonical form {validate_location(r.host, r.path)[0]!r}")
    validate_port(r.port)
    validate_release(r.release)
    if r.static is not None and not _STATIC_RE.fullmatch(r.static):
        raise ValueError(f"static {r.static!r} is invalid: a relative directory ending in '/'")
    for name in r.writable:
        if not WRITABLE_NAME_RE.fullmatch(name) or name == "static":
            raise ValueError(f"writable static directory {name!r} is invalid")


def select(routes):
    """Split routes into those render() takes and those it would refuse: (usable, [(route, why), ...]).

    One app's bad record (a host or path no rule allows, a prefix another app has) must not keep every
    other app of the node from being served, so the caller renders the usable ones and reports the rest.
    Routes are taken in order: of two that clash, the later one is left out.
    """
    usable, refused, by_host = [], [], {}
    for r in routes:
        try:
            _check_route(r)
            here = by_host.get(r.host, {})
            if r.path in here:
                raise ValueError(f"two apps at {r.host}{r.path}: {here[r.path].app} and {r.app}")
            _check_prefixes(r.host, [*here.values(), r])
        except ValueError as exc:
            refused.append((r, str(exc)))
            continue
        by_host.setdefault(r.host, {})[r.path] = r
        usable.append(r)
    return usable, refused


def render(layout, routes, *, listen, tls_listen=None, certificates=(), trusted_proxy=None):
    """The nginx text (server blocks, included in nginx.conf's http block) for these routes.

    trusted_proxy: the address of the group's balancer; its X-Forwarded-Proto is passed on to the apps
    (from anyone else the scheme nginx saw is)."""
    listen = _listen(listen, "listen")
    by_host = {}
    for r in routes:
        _check_route(r)
        if r.path in by_host.setdefault(r.host, {}):
            raise ValueError(f"two apps at {r.host}{r.path}: {by_host[r.host][r.path].app} and {r.app}")
        by_host[r.host][r.path] = r
    for host, routes_here in by_host.items():
        _check_prefixes(host, routes_here.values())
    certs = {c.host: c for c in certificates}
    if certs:
        tls_listen = _listen(tls_listen, "tls_listen")
    out = [f"# Managed by toppcloud: rendered from the control plane's records; {len(routes)} routes.\n",
           _NAMES_HASH]
    proto, forwarded_for = "$scheme", "$proxy_add_x_forwarded_for"
    if trusted_proxy is not None:
        # Behind the group's balancer: its forwarding headers are passed on; anyone else's are replaced.
        proxy = validate_address(trusted_proxy)
        out.append(f"map $remote_addr $toppcloud_forwarded_proto {{\n    default $scheme;\n"
                   f"    {proxy} $http_x_forwarded_proto;\n}}\n"
                   f"map $remote_addr $toppcloud_forwarded_for {{\n    default $remote_addr;\n"
                   f"    {proxy} $proxy_add_x_forwarded_for;\n}}\n")
        proto, forwarded_for = "$toppcloud_forwarded_proto", "$toppcloud_forwarded_for"
    if certs:
        out.append(_TLS_SETTINGS)
    if DEFAULT_HOST not in by_host:
        by_host[DEFAULT_HOST] = {}  # the node's own default server: its health URL and a 404
    for host in sorted(by_host, key=lambda h: (h == DEFAULT_HOST, h)):
        locations = "".join(_locations(layout, r, proto, forwarded_for) for r in sorted(by_host[host].values(),
                                                                   key=lambda r: (-len(r.path), r.path)))
        if "/" not in by_host[host]:
            locations += _NOTHING_HERE  # what no app's prefix matches
        if host == DEFAULT_HOST:
            out.append(_server(f"{listen} default_server", "_", _DEFAULT_LOCATIONS + locations))
            continue
        cert = _certificate_for(host, certs)
        if cert is None:
            out.append(_server(listen, host, locations))
            continue
        crt, key = sorted(cert.files(layout))
        port = tls_listen.rsplit(":", 1)[1]
        target = "https://$host" + ("" if port == "443" else f":{port}") + "$request_uri"
        out.append(_server(listen, host, _acme(layout) + f"    location / {{\n        return 301 {target};\n    }}\n"))
        out.append(_server(f"{tls_listen} ssl http2", host,
                           f"    ssl_certificate {crt};\n    ssl_certificate_key {key};\n"
                           f'    add_header Strict-Transport-Security "max-age=63072000" always;\n\n' + locations))
    return "\n".join(out)


def _check_prefixes(host, routes):
    """Two apps' URL prefixes on one host may not be the same location (nginx would refuse the whole config)."""
    owner = {}
    for r in routes:
        prefixes = {r.path: f"{r.app}'s location"}
        if r.static and not r.maintenance:
            prefixes[f"{r.path}static/"] = f"{r.app}'s static files"
        for name in () if r.maintenance else r.writable:
            prefixes[f"{r.path}{name}/"] = f"{r.app}'s writable directory {name}"
        for prefix, what in prefixes.items():
            if prefix in owner and owner[prefix] != what:
                raise ValueError(f"{host}{prefix} would be both {owner[prefix]} and {what}; "
                                 "move one of the apps or rename the directory")
            owner[prefix] = what


def _certificate_for(host, certs):
    """The certificate for a host: its own, else a wildcard one covering it (one label down)."""
    if host in certs:
        return certs[host]
    if not host.startswith("*.") and "." in host:
        return certs.get("*." + host.split(".", 1)[1])
    return None


def _server(listen, name, body):
    return f"server {{\n    listen {listen};\n    server_name {name};\n\n{body}}}\n"


def _acme(layout):
    return (f"    location ^~ /.well-known/acme-challenge/ {{\n        root {layout.acme_dir};\n"
            f"        default_type text/plain;\n    }}\n")


def _locations(layout, r, proto="$scheme", forwarded_for="$proxy_add_x_forwarded_for"):
    p = r.path
    if r.maintenance:
        page = MAINTENANCE_PAGE.format(app=r.app).replace('"', '\\"')
        return (f"    # {r.app} is in maintenance (manage.py enable {r.app} ends it).\n"
                f"    location {p} {{\n        default_type text/html;\n"
                f"        add_header Retry-After 300 always;\n        add_header Cache-Control no-store always;\n"
                f'        return 503 "{page}";\n    }}\n')
    script_name = p.rstrip("/")
    text = [f"    # {r.app}, release {r.release} on port {r.port}.\n"
            f"    location {p} {{\n"
            f"        proxy_pass http://127.0.0.1:{r.port};\n"
            "        proxy_set_header Host $host;\n"
            f"        proxy_set_header X-Forwarded-For {forwarded_for};\n"
            f"        proxy_set_header X-Forwarded-Proto {proto};\n"
            "        proxy_set_header X-Real-IP $remote_addr;\n"
            # gunicorn takes SCRIPT_NAME from its trusted proxy (127.0.0.1) and strips it off PATH_INFO;
            # nginx sends no header with an empty value, so an app at "/" gets SCRIPT_NAME "".
            f'        proxy_set_header SCRIPT_NAME "{script_name}";\n'
            # Only toppcloud's own internal requests (cron, tasks) carry these.
            '        proxy_set_header X-Toppcloud-Cron "";\n'
            '        proxy_set_header X-Toppcloud-Task "";\n'
            '        proxy_set_header X-Toppcloud-Task-Attempt "";\n'
            "        proxy_read_timeout 60s;\n"
            "    }\n"]
    releases = layout.releases_dir(r.app)
    if r.static:
        static = r.static.rstrip("/")
        text.append(f'    location ~ "^{re.escape(p)}static/({RELEASE_ID_RE})/(.*)$" {{\n'
                    f"        alias {releases}/$1/{static}/$2;\n"
                    f'        add_header Cache-Control "public, max-age={STATIC_MAX_AGE}, immutable";\n'
                    "        access_log off;\n"
                    # A release's files never change: keep them open (the regex location's captured alias
                    # costs a lookup per request otherwise). Misses are not cached (open_file_cache_errors).
                    "        open_file_cache max=1000;\n    }\n"
                    f"    location {p}static/ {{\n"
                    f"        alias {releases}/{r.release}/{static}/;\n"
                    "        expires 1h;\n        access_log off;\n    }\n")
    for name in r.writable:
        text.append(f"    location ^~ {p}{name}/ {{\n        alias {layout.writable_dir(r.app)}/{name}/;\n    }}\n")
    return "".join(text)


_DEFAULT_LOCATIONS = f"""\
    location = {HEALTH_PATH} {{
        default_type text/plain;
        access_log off;
        return 200 "ok\\n";
    }}
"""
_NOTHING_HERE = """\
    location / {
        default_type text/plain;
        return 404 "no app is deployed here\\n";
    }
"""
# nginx's default bucket (one CPU cache line, 64 bytes) holds no host name longer than about 60
# characters, and then refuses the whole config: make room for the longest name a location may have.
_NAMES_HASH = "server_names_hash_bucket_size 512;\n"
# Mozilla's "intermediate" profile: TLS 1.2 and 1.3, forward-secret AEAD ciphers only.
_TLS_SETTINGS = """\
ssl_protocols TLSv1.2 TLSv1.3;
ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384;
ssl_prefer_server_ciphers off;
ssl_session_cache shared:toppcloud_tls:10m;
ssl_session_timeout 1d;
ssl_session_tickets off;
"""


def push(t, emit, layout, text, certificates=()) -> bool:
    """Make `text` the node's front door: certificates first, then test, swap, reload.

    True if it changed (and nginx reloaded). FrontDoorError if nginx refused
    it (the live config is untouched) or did not reload.
    """
    files = {}
    for cert in certificates:
        files.update(cert.files(layout))
    if files:  # never logged: the keys travel on stdin
        t.put_files(files, dirs=[(layout.tls_dir, 0o700)])
    argv = [PYTHON, "-I", "-c", hostside.source("frontdoor_push"),
            layout.nginx_conf, layout.nginx_sites, SITE, layout.tmp,
            layout.nginx_error_log, layout.tls_dir, layout.nginx_pid, *sorted(files)]
    try:
        r = run_logged(t, emit, argv, step="front door", input=text.encode(), timeout=60)
    except CommandFailed as exc:
        said = exc.result.stderr.strip()
        if "changed" in exc.result.stdout:  # swapped in, but nginx did not reload
            raise FrontDoorError(said or str(exc)) from None
        raise FrontDoorError(f"nginx refused the new front door config; the live config is unchanged: "
                             f"{said[-1500:]}") from None
    return r.stdout.strip() != "unchanged"


def read_live(t, layout) -> str:
    """The front door config live on the node ('' if none)."""
    r = t.run(["cat", os.path.join(layout.nginx_sites, SITE)], check=False)
    return r.stdout if r.rc == 0 else ""


def describe(routes) -> list:
    """The routes as event data (no secrets in them)."""
    return [dataclasses.asdict(r) | {"writable": list(r.writable)} for r in routes]
