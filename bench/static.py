#!/usr/bin/env python3
"""Requests/s of a static file through the node's front door vs nginx with a minimal hand config, same run.

pathy (fixtures/apps/pathy, plus a 20 KB static/app.js) is deployed to one
test host by a real deploy job. "node" is the node's own nginx serving the
versioned static URL ($STATIC_URL + file, the front door nodeops/frontdoor.py
rendered, real Host header). "hand" is an nginx of this run on the same
address, another port, with a minimal config: the node's worker_processes,
worker_connections, sendfile and user, and `location /static/ { alias <the
same release's static dir>/; }`. Both are first checked to answer 200 with
the file's bytes (and the node with the immutable Cache-Control). Load: wrk,
the same threads/connections/duration for both, ROUNDS rounds alternating
which goes first; figures are medians. Target: node/hand req/s >= 0.9.

    python bench/static.py [ROUNDS] [SECONDS]     (default 5 rounds x 5 s)

Needs wrk (Debian/Ubuntu: apt-get install -y wrk; macOS: brew install wrk).
"""

import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, configure, deploy_dir, ready_node, start_worker, stop_worker  # noqa: E402

THREADS, CONNECTIONS = 2, 32  # the machine this figure is taken on has 2 cores; wrk shares them with nginx
HOSTNAME = "pathy.test"
TARGET = 0.9
IMMUTABLE = "public, max-age=31536000, immutable"


def app_js(size=20 * 1024):
    """About 20 KB of plausible JavaScript, the same bytes on every run."""
    lines, n = [], 0
    while sum(map(len, lines)) < size:
        lines.append(f"export function handler{n}(event) {{ return event.target.dataset.value * {n} + 1; }}\n")
        n += 1
    return "".join(lines)[:size]


def fetch(address, port, path):
    conn = http.client.HTTPConnection(address, port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": HOSTNAME})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def node_settings(nginx_conf):
    """worker_processes, worker_connections, sendfile and user of the node's nginx.conf, as it is on disk."""
    text = Path(nginx_conf).read_text()
    found = {}
    for key in ("worker_processes", "worker_connections", "sendfile", "user"):
        m = re.search(rf"^\s*{key}\s+([^;]+);", text, re.M)
        if m:
            found[key] = m.group(1).strip()
    missing = {"worker_processes", "worker_connections", "sendfile"} - set(found)
    if missing:
        sys.exit(f"{nginx_conf} has no {', '.join(sorted(missing))}: bench/static.py must learn its new shape")
    return found


def hand_config(directory, listen, static_dir, node):
    user = f"user {node['user']};\n" if "user" in node else ""
    return f"""\
# bench/static.py: the minimal hand config the front door is measured against.
{user}worker_processes {node['worker_processes']};
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
daemon off;

events {{
    worker_connections {node['worker_connections']};
}}

http {{
    types {{
        text/css css;
        application/javascript js;
    }}
    default_type application/octet-stream;
    sendfile {node['sendfile']};
    access_log off;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;

    server {{
        listen {listen};
        location /static/ {{
            alias {static_dir}/;
        }}
    }}
}}
"""


def start_hand_nginx(directory, address, static_dir, node):
    from tests.hosts import port_free

    port = next((p for p in range(18080, 18180) if port_free(address, p)), None)
    if port is None:
        sys.exit(f"no free port on {address} for the hand-configured nginx")
    conf = Path(directory) / "nginx.conf"
    conf.write_text(hand_config(directory, f"{address}:{port}", static_dir, node))
    nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin")
    proc = subprocess.Popen([nginx, "-p", directory, "-e", f"{directory}/error.log", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=open(Path(directory) / "stderr.log", "wb"),
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"hand nginx exited: {(Path(directory) / 'stderr.log').read_text()[-1500:]}")
        if not port_free(address, port):
            return proc, port
        time.sleep(0.05)
    stop_hand_nginx(proc)
    sys.exit("hand nginx did not listen within 10 s")


def stop_hand_nginx(proc):
    """Its master by pid (daemon off: the process we started); it takes its workers with it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)  # graceful: the workers finish and exit
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT[m.group(2)]


def wrk(url, seconds):
    """{'rps', 'p50', 'p99'} of one wrk run (latencies in ms); exits if any answer was not 2xx/3xx or a socket failed."""
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-H", f"Host: {HOSTNAME}", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        sys.exit(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    text = out.stdout
    if "Non-2xx or 3xx responses" in text or "Socket errors" in text:
        sys.exit(f"wrk saw failed requests against {url}:\n{text}")
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not rps:
        sys.exit(f"cannot read wrk's output:\n{text}")
    return {"rps": float(rps.group(1)), "p50": _ms(p50.group(1)) if p50 else None,
            "p99": _ms(p99.group(1)) if p99 else None}


def main(rounds, seconds):
    if not shutil.which("wrk"):
        sys.exit("bench/static.py needs wrk, the HTTP load generator: apt-get install -y wrk "
                 "(Debian/Ubuntu), brew install wrk (macOS), or build https://github.com/wg/wrk")
    configure("toppcloud-bench-static")
    from django.conf import settings

    from jobs.management.commands.ssh_key import ensure_key
    from nodeops.layout import NodeLayout
    from tests.hosts import start_hosts, stop_hosts

    base = tempfile.mkdtemp(prefix="tc-bench-static-", dir="/tmp")
    os.chmod(base, 0o755)
    hand_dir = Path(base) / "hand-nginx"
    hand_dir.mkdir()
    [host] = start_hosts(1, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
    worker = start_worker(Path(base) / "worker.log", "jobs,nodeops,cron", concurrency=2)
    hand = None
    results = {}  # (file, setup) -> [wrk figures]
    try:
        node = ready_node(host)
        app_dir = Path(base) / "pathy"
        shutil.copytree(ROOT / "fixtures" / "apps" / "pathy", app_dir)
        (app_dir / "static" / "app.js").write_text(app_js())
        deploy_dir(app_dir, node)

        status, _, body = fetch(host.address, host.http_port, "/")
        if status != 200:
            sys.exit(f"pathy's page answered {status}: {body[:200]!r}")
        page = json.loads(body)
        static_url = page["static_url"]
        m = re.fullmatch(r"/static/([0-9]{14}-[0-9a-f]{8})/", static_url or "")
        if not m or page["stylesheet"] != static_url + "style.css":
            sys.exit(f"$STATIC_URL is not a versioned static URL: {static_url!r}")
        layout = NodeLayout(host.root)
        static_dir = os.path.join(layout.releases_dir("pathy"), m.group(1), "static")
        node_conf = node_settings(layout.nginx_conf)
        hand, hand_port = start_hand_nginx(str(hand_dir), host.address, static_dir, node_conf)

        files = {}
        for name in ("style.css", "app.js"):
            expected = (app_dir / "static" / name).read_bytes()
            urls = {"node": (host.http_port, static_url + name), "hand": (hand_port, f"/static/{name}")}
            for setup, (port, path) in urls.items():
                status, headers, got = fetch(host.address, port, path)
                if (status, got) != (200, expected):
                    sys.exit(f"{setup} nginx answered {status} for {path} with {len(got)} bytes, not the "
                             f"{len(expected)} bytes of static/{name}: {got[:200]!r}")
                if setup == "node" and headers.get("cache-control") != IMMUTABLE:
                    sys.exit(f"the node served {path} with Cache-Control {headers.get('cache-control')!r}, "
                             f"not {IMMUTABLE!r}")
            files[name] = ({s: f"http://{host.address}:{p}{u}" for s, (p, u) in urls.items()}, len(expected))

        for name, (urls, _) in files.items():  # warm both (open files, page cache) before measuring
            for url in urls.values():
                wrk(url, 1)
        for i in range(rounds):
            order = ("node", "hand") if i % 2 == 0 else ("hand", "node")
            for name, (urls, _) in files.items():
                for setup in order:
                    results.setdefault((name, setup), []).append(wrk(urls[setup], seconds))
    finally:
        if hand is not None:
            stop_hand_nginx(hand)
        stop_worker(worker)
        stop_hosts([host])
        shutil.rmtree(base, ignore_errors=True)

    def med(name, setup, key):
        values = [r[key] for r in results[(name, setup)] if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    print(f"\nGET of a static file, wrk -t{THREADS} -c{CONNECTIONS}, {rounds} rounds x {seconds} s each, order "
          f"alternating; medians. node: the front door's versioned URL (Host: {HOSTNAME}); hand: nginx with a "
          "minimal config serving the same directory\n")
    print(f"{'file':<20}{'setup':<8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'node/hand':>11}")
    ratios = []
    for name, (_, size) in files.items():
        label = f"{name} ({size / 1024:.1f} KB)" if size >= 1024 else f"{name} ({size} B)"
        ratio = med(name, "node", "rps") / med(name, "hand", "rps")
        ratios.append(ratio)
        for setup in ("node", "hand"):
            print(f"{label if setup == 'node' else '':<20}{setup:<8}{med(name, setup, 'rps'):>10.0f}"
                  f"{med(name, setup, 'p50'):>9.2f}{med(name, setup, 'p99'):>9.2f}"
                  f"{(f'{ratio:.2f}' if setup == 'node' else ''):>11}")
        per_round = "  ".join(f"{n['rps'] / h['rps']:.2f}" for n, h in zip(results[(name, 'node')],
                                                                             results[(name, 'hand')]))
        print(f"{'':<20}per round node/hand: {per_round}")
    ok = min(ratios) >= TARGET
    print("\nresult:", f"target met (node/hand >= {TARGET} for every file; lowest {min(ratios):.2f})" if ok
          else f"TARGET MISSED (node/hand {min(ratios):.2f} < {TARGET})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, int(sys.argv[2]) if len(sys.argv) > 2 else 5))
