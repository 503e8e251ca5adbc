"""The balancer's config as rendered from plain data, run by a real HAProxy on this machine (no test host):
which app a request reaches for each host and path rule, what render() refuses, `haproxy -c` of every kind
of location. The servers are small HTTP servers in this process, each answering with its own name.
"""

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from nodeops import balancer, hostside
from nodeops.layout import NodeLayout
from tests.hosts import port_free
from tests.tlsca import issue, make_ca

HAPROXY = shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin")


class _Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"{self.server.name} {self.path}".encode()
        self.send_response(200 if self.path != "/down/health" else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Quiet(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a health check that hangs up early is no error here


def _server(name):
    s = _Quiet(("127.0.0.1", 0), _Answer)
    s.name = name
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def root():
    path = tempfile.mkdtemp(prefix="tc-lbr-")
    layout = NodeLayout(path)
    for d in (layout.run, layout.logs, balancer.Paths(layout).dir, balancer.Paths(layout).tls):
        os.makedirs(d, exist_ok=True)
    yield layout
    shutil.rmtree(path, ignore_errors=True)


def loc(app, host, path, servers, **kw):
    return balancer.Location(app=app, host=host, path=path,
                             servers=tuple(balancer.Server(s.name, "127.0.0.1", s.server_address[1]) for s in servers),
                             **kw)


@pytest.fixture(scope="module")
def running(root):
    """HAProxy (master-worker, as on an lb node) with six apps at clashing hosts and paths."""
    servers = {n: _server(n) for n in ("site", "blog", "wild", "deep", "any", "down")}
    locations = [
        loc("any", "*", "/", [servers["any"]]),
        loc("wild", "*.shop.test", "/", [servers["wild"]]),
        loc("deep", "*.eu.shop.test", "/", [servers["deep"]]),
        loc("blog", "shop.test", "/blog/", [servers["blog"]]),
        loc("site", "shop.test", "/", [servers["site"]]),
        loc("down", "down.test", "/down/", [servers["down"]], health_check="/health"),
    ]
    port = _port()
    paths = balancer.Paths(root)
    text = balancer.render(paths, locations, listen=f"127.0.0.1:{port}")
    with open(paths.cfg, "w") as f:
        f.write(text)
    proc = subprocess.Popen([HAPROXY, "-W", "-db", "-f", paths.cfg, "-S", f"{paths.master_sock},mode,600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while port_free("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.5)  # two health checks: rise 2
    yield port, text
    proc.send_signal(signal.SIGUSR1)  # soft stop
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for s in servers.values():
        s.shutdown()
        s.server_close()


def get(port, host, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize("host, path, app", [
    ("shop.test", "/", "site"),
    ("SHOP.test:8080", "/x", "site"),        # the Host header's case and port do not matter
    ("shop.test", "/blog/post", "blog"),     # the longest prefix first
    ("shop.test", "/blog", "blog"),          # the prefix without its slash (the app node redirects)
    ("shop.test", "/bloggers", "site"),
    ("a.shop.test", "/", "wild"),
    ("a.eu.shop.test", "/", "deep"),         # the longer wildcard first
    ("eu.shop.test", "/", "wild"),
    ("other.test", "/", "any"),              # '*': any other host
    ("shop.test.evil", "/", "any"),
])
def test_it_sends_each_request_to_the_app_its_host_and_path_pick(running, host, path, app):
    port, _ = running
    status, body = get(port, host, path)
    assert (status, body.split()[0]) == (200, app), body


def test_a_server_failing_its_health_check_is_out_and_nothing_else_answers_for_it(running, root):
    port, text = running
    assert "http-check send meth GET uri /down/health ver HTTP/1.1 hdr Host down.test" in text
    assert get(port, "down.test", "/down/x")[0] == 503  # its only server is DOWN: HAProxy's 503
    rows = {(r["backend"], r["server"]): r for r in _states(root)}
    assert rows["app_down", "down"]["state"] == "DOWN" and rows["app_site", "site"]["state"] == "UP"
    assert get(port, "any.test", "/.toppcloud/health") == (200, "ok\n")


def _states(layout):
    r = subprocess.run(["python3", "-I", "-c", hostside.source("lb_admin"), "states", balancer.Paths(layout).sock],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_every_kind_of_location_renders_a_config_haproxy_accepts(root, tmp_path):
    ca = make_ca(tmp_path)
    leaf = issue(ca, ["shop.test", "*.shop.test"], tmp_path)
    cert = balancer.Certificate(host="shop.test", chain_pem=leaf.cert_path.read_text(), key_pem=leaf.key_path.read_text())
    paths = balancer.Paths(root)
    path, (mode, pem) = cert.file(paths)
    assert mode == 0o600 and path.startswith(paths.tls + "/shop.test-") and path.endswith(".pem")
    with open(path, "wb") as f:
        f.write(pem)
    server = balancer.Server("n1", "127.0.0.9", 8080)
    locations = [balancer.Location("a", "shop.test", "/", (server,), "/health", cache=True),
                 balancer.Location("b", "*.shop.test", "/x/", (server,)),
                 balancer.Location("c", "*", "/", (server,))]
    text = balancer.render(paths, locations, listen="127.0.0.9:8080", tls_listen="127.0.0.9:8443",
                           certificates=[cert], source="127.0.0.9")
    assert "bind 127.0.0.9:8443 ssl crt" in text and "source 127.0.0.9" in text
    assert "redirect location https://%[var(txn.host)]:8443%[capture.req.uri] code 301" in text
    candidate = tmp_path / "haproxy.cfg"
    candidate.write_text(text)
    r = subprocess.run([HAPROXY, "-c", "-f", str(candidate)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    os.remove(path)


@pytest.mark.parametrize("locations, message", [
    ([balancer.Location("a", "x.test", "/", ()), balancer.Location("b", "x.test", "/", ())], "two apps at x.test/"),
    ([balancer.Location("a", "X.test", "/", ())], "not in its canonical form"),
    ([balancer.Location("a b", "x.test", "/", ())], "app"),
    ([balancer.Location("a", "x.test", "/", (), health_check="/h; rm")], "health check path"),
    ([balancer.Location("a", "x.test", "/", (balancer.Server("n 1", "127.0.0.1", 80),))], "server"),
])
def test_it_refuses_what_haproxy_must_never_see(root, locations, message):
    with pytest.raises(ValueError, match=message):
        balancer.render(balancer.Paths(root), locations, listen="127.0.0.1:80")
