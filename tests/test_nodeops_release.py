"""nodeops.release against a real test host: upload, venv, env, start, activate, stop, prune.

The tests run in order and share one host (sshd on 127.0.0.x, set up with
setup_node): the hello app goes r1 -> r2 -> r4 like successive deploys.
"""

import os
import shutil
import socket
import threading
import time

import pytest

from nodeops import frontdoor, release as rel
from nodeops.layout import NodeLayout
from nodeops.setup import setup_node
from nodeops.transport import transport_for
from tests.hosts import start_hosts, stop_hosts
from tests.nodeops_helpers import Events, get
from tests.nodeops_conftest_snippet import control_dir, control_key, hosts_dir  # noqa: F401

pytestmark = pytest.mark.hosts

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "apps")
class Node:
    def __init__(self, host, t):
        self.host, self.t = host, t
        self.layout = NodeLayout(host.root)
        self.ports = {}  # release -> port
        self.venv = None

    def page(self, path="/", host="hello.test"):
        return get(self.host.url + path, host)


@pytest.fixture(scope="module")
def node(hosts_dir, control_key, control_dir):  # noqa: F811
    hosts = start_hosts(1, hosts_dir, control_key[1])
    t = transport_for(hosts[0].spec(control_key[0], control_dir))
    try:
        h = hosts[0]
        setup_node(t, root=h.root, address=h.address, http_port=h.http_port, emit=Events())
        yield Node(h, t)
    finally:
        t.close()
        stop_hosts(hosts)  # supervisord stops the app processes with it


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """hello at version 1 and 2: copies with the fixture's mtimes, so unchanged files are equal for rsync."""
    base = tmp_path_factory.mktemp("src")
    v1, v2 = str(base / "v1"), str(base / "v2")
    shutil.copytree(os.path.join(FIXTURES, "hello"), v1)
    shutil.copytree(v1, v2)
    with open(os.path.join(v2, "VERSION"), "w") as f:
        f.write("2\n")
    return {"v1": v1, "v2": v2}


def start_release(node, app, release, venv, events=None):
    events = events if events is not None else Events()
    env_file = rel.write_env(node.t, node.layout, app, release, {"TOPPCLOUD_RELEASE": release})
    port = rel.free_port(node.t)
    rel.start(node.t, events, node.layout, app, release, port=port, runner="app:application", venv=venv,
              processes=2, threads=2, env_file=env_file)
    rel.wait_until_answers(node.t, port, timeout=30, log_file=rel.error_log(node.layout, app))
    node.ports[release] = port
    return port


def front(node, release):
    route = frontdoor.Route(app="hello", host="hello.test", path="/", port=node.ports[release], release=release)
    return frontdoor.render(node.layout, [route], listen=f"{node.host.address}:{node.host.http_port}")


def activate(node, release):
    return frontdoor.push(node.t, Events(), node.layout, front(node, release))


# --- upload and venv ----------------------------------------------------------------

def test_upload_hard_links_files_unchanged_since_the_previous_release(node, sources):
    events = Events()
    r1 = rel.upload(node.t, events, node.layout, "hello", "r1", sources["v1"])
    r2 = rel.upload(node.t, events, node.layout, "hello", "r2", sources["v2"], previous="r1")
    assert r1 == f"{node.host.root}/apps/hello/releases/r1"
    assert open(f"{r2}/VERSION").read() == "2\n"
    assert os.stat(f"{r1}/app.py").st_ino == os.stat(f"{r2}/app.py").st_ino
    assert os.stat(f"{r1}/static/style.css").st_ino == os.stat(f"{r2}/static/style.css").st_ino
    assert os.stat(f"{r1}/VERSION").st_ino != os.stat(f"{r2}/VERSION").st_ino
    rsync = [c for c in events.kinds("command") if c["argv"][0] == "rsync"]
    assert f"--link-dest={r1}" in rsync[1]["argv"] and rsync[1]["step"] == "upload"


def test_the_venv_is_built_once_and_reused(node):
    r1 = rel.release_dir(node.layout, "hello", "r1")
    venv, built = rel.ensure_venv(node.t, Events(), node.layout, "hello", r1)
    assert built is True
    assert venv.startswith(f"{node.host.root}/apps/hello/venvs/")
    assert os.path.isfile(f"{venv}/.toppcloud-complete") and os.access(f"{venv}/bin/gunicorn", os.X_OK)

    again = rel.ensure_venv(node.t, Events(), node.layout, "hello", rel.release_dir(node.layout, "hello", "r2"))
    assert again == (venv, False)
    node.venv = venv


def test_uninstallable_requirements_fail_naming_the_package(node):
    events = Events()
    d = rel.upload(node.t, events, node.layout, "badreq", "b1", os.path.join(FIXTURES, "badreq"))
    with pytest.raises(rel.ReleaseError, match="requirements failed to install: .*toppcloud-no-such-package-xyz"):
        rel.ensure_venv(node.t, events, node.layout, "badreq", d)
    assert os.listdir(node.layout.venvs_dir("badreq")) == []  # the half-built venv is gone
    assert any(c["rc"] != 0 and "pip" in c["argv"][0] for c in events.kinds("command"))


def test_a_missing_requirements_file_is_named(node):
    with pytest.raises(rel.ReleaseError, match="requirements file nope.txt is not in the release"):
        rel.ensure_venv(node.t, Events(), node.layout, "hello", rel.release_dir(node.layout, "hello", "r1"),
                        "nope.txt")


# --- env, start, internal requests ----------------------------------------------------

def test_the_env_file_is_private_and_reaches_the_app(node):
    env = {"TOPPCLOUD_RELEASE": "r1", "SECRET": "it's $HOME; `rm -rf /` \"quoted\"\nline 2", "EMPTY": ""}
    path = rel.write_env(node.t, node.layout, "hello", "r1", env)
    assert path == f"{node.host.root}/apps/hello/env/r1.env"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert rel.parse_env(open(path).read()) == env

    port = rel.free_port(node.t)
    events = Events()
    rel.start(node.t, events, node.layout, "hello", "r1", port=port, runner="app:application", venv=node.venv,
              processes=2, threads=2, env_file=path)
    node.ports["r1"] = port
    assert rel.wait_until_answers(node.t, port, timeout=30)[0] == 200
    assert rel.http_get(node.t, port, "/health") == (200, "ok")
    status, body = rel.http_get(node.t, port, "/")
    assert status == 200 and "hello version 1" in body and "release r1" in body

    # The gunicorn master (what supervisord started) has exactly these values.
    pid = int(node.t.run(["supervisorctl", "-c", node.layout.supervisor_conf, "pid", "app-hello-r1"]).stdout)
    environ = dict(v.split("=", 1) for v in open(f"/proc/{pid}/environ").read().split("\0") if "=" in v)
    assert {k: environ.get(k) for k in env} == env
    assert "--no-control-socket" in open(f"/proc/{pid}/cmdline").read().split("\0")
    conf = open(f"{node.layout.supervisor_programs}/app-hello-r1.conf").read()
    assert "it's" not in conf  # secrets stay in the env file
    assert len(events.kinds("command")) == 1  # port, program and start: one round trip to the node

    # Starting it again (a rollback to a release whose process had died) starts it.
    node.t.run(["supervisorctl", "-c", node.layout.supervisor_conf, "stop", "app-hello-r1"])
    events = Events()
    rel.start(node.t, events, node.layout, "hello", "r1", port=port, runner="app:application", venv=node.venv,
              processes=2, threads=2, env_file=path)
    assert rel.wait_until_answers(node.t, port, "/health", timeout=30) == (200, "ok")


def test_a_port_nobody_answers_on_fails_with_the_log_tail(node):
    port = rel.free_port(node.t)
    log = rel.error_log(node.layout, "hello")
    with pytest.raises(rel.ReleaseError, match=rf"release did not answer on port {port} within 1 s; "
                                               r"last error: ConnectionRefusedError.*; log tail: "):
        rel.wait_until_answers(node.t, port, timeout=1, log_file=log)
    with pytest.raises(rel.ReleaseError, match="got no answer"):
        rel.http_get(node.t, port, "/health")


def test_unhealthy_health_is_returned_not_raised(node):
    rel.upload(node.t, Events(), node.layout, "unhealthy", "u1", os.path.join(FIXTURES, "unhealthy"))
    port = start_release(node, "unhealthy", "u1", node.venv)
    assert rel.http_get(node.t, port, "/health") == (500, "broken")
    rel.stop(node.t, Events(), node.layout, "unhealthy", "u1")


def test_a_slow_release_is_waited_for(node):
    rel.upload(node.t, Events(), node.layout, "slowstart", "s1", os.path.join(FIXTURES, "slowstart"))
    started = time.monotonic()
    port = start_release(node, "slowstart", "s1", node.venv)
    assert time.monotonic() - started > 2.5
    assert rel.http_get(node.t, port, "/health") == (200, "ok")
    rel.stop(node.t, Events(), node.layout, "slowstart", "s1")


# --- activation -------------------------------------------------------------------------

def test_activate_makes_the_release_live_behind_nginx(node):
    assert node.page()[0] == 404  # nothing deployed at hello.test yet: the default server answers
    assert activate(node, "r1") is True
    # No polling: activate returns once nginx's new workers serve the new config.
    status, body = node.page()
    assert status == 200 and "hello version 1" in body
    assert node.page("/static/style.css") == (200, "body { font-family: sans-serif; }\n")
    assert node.page("/", host="other.test")[0] == 404
    site = open(f"{node.layout.nginx_sites}/toppcloud.conf").read()
    assert f"listen {node.host.address}:{node.host.http_port};" in site and "server_name hello.test;" in site
    assert activate(node, "r1") is False  # unchanged: no reload


def test_a_render_nginx_refuses_never_replaces_the_live_one(node):
    live = open(f"{node.layout.nginx_sites}/toppcloud.conf").read()
    bad = front(node, "r1").replace("proxy_read_timeout 60s;", "proxy_read_timeout sixty;")
    with pytest.raises(frontdoor.FrontDoorError, match="nginx refused .* the live config is unchanged: nginx -t: "
                                                       ".*\"proxy_read_timeout\" directive invalid value"):
        frontdoor.push(node.t, Events(), node.layout, bad)
    assert open(f"{node.layout.nginx_sites}/toppcloud.conf").read() == live
    assert [f for f in os.listdir(node.layout.nginx_sites)] == ["toppcloud.conf"]
    assert "hello version 1" in node.page()[1]


def test_a_default_app_answers_every_other_host_and_the_node_health_url_stays(node):
    hello = frontdoor.Route(app="hello", host="hello.test", path="/", port=node.ports["r1"], release="r1")
    fallback = frontdoor.Route(app="fallback", host="*", path="/", port=node.ports["r1"], release="r1")
    inner = frontdoor.Route(app="inner", host="inner.test", path="/in/", port=node.ports["r1"], release="r1")
    text = frontdoor.render(node.layout, [hello, fallback, inner],
                            listen=f"{node.host.address}:{node.host.http_port}")
    assert frontdoor.push(node.t, Events(), node.layout, text) is True
    try:
        assert "hello version 1" in node.page("/in/", host="inner.test")[1]
        # A host whose apps are all below "/": the rest of it is nobody's (not the default app's).
        assert node.page("/", host="inner.test") == (404, "no app is deployed here\n")
        assert "hello version 1" in node.page("/", host="anything.test")[1]
        assert "hello version 1" in node.page("/", host=node.host.address)[1]
        assert node.page(frontdoor.HEALTH_PATH, host="anything.test") == (200, "ok\n")
    finally:
        assert activate(node, "r1") is True
    assert node.page("/", host="anything.test")[0] == 404


def test_switching_releases_drops_no_request_and_stop_closes_the_old_port(node):
    start_release(node, "hello", "r2", node.venv)
    results, done = [], threading.Event()

    def hammer():
        while not done.is_set():
            try:
                results.append(node.page())
            except OSError as exc:
                results.append((0, str(exc)))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.3)
        assert activate(node, "r2") is True
        rel.stop(node.t, Events(), node.layout, "hello", "r1")
        time.sleep(0.3)
    finally:
        done.set()
        thread.join()
    assert [r for r in results if r[0] != 200] == []
    versions = [("hello version 1" in b, "hello version 2" in b) for _, b in results]
    assert versions[0] == (True, False) and versions[-1] == (False, True)
    assert not os.path.exists(f"{node.layout.supervisor_programs}/app-hello-r1.conf")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", node.ports["r1"]), timeout=2).close()
    rel.stop(node.t, Events(), node.layout, "hello", "r1")  # stopping twice is fine


# --- a whole redeploy, and prune ----------------------------------------------------------

def test_a_redeploy_with_unchanged_requirements_reuses_the_venv_and_goes_live(node, sources):
    """The whole redeploy, step by step; how long it takes is bench/deploy.py's to measure."""
    t, layout, events = node.t, node.layout, Events()
    d = rel.upload(t, events, layout, "hello", "r4", sources["v1"], previous="r2")
    venv, built = rel.ensure_venv(t, events, layout, "hello", d)
    assert built is False
    env_file = rel.write_env(t, layout, "hello", "r4", {"TOPPCLOUD_RELEASE": "r4"})
    port = rel.free_port(t)
    rel.start(t, events, layout, "hello", "r4", port=port, runner="app:application", venv=venv,
              processes=2, threads=2, env_file=env_file)
    rel.wait_until_answers(t, port)
    assert rel.http_get(t, port, "/health") == (200, "ok")
    node.ports["r4"] = port
    assert activate(node, "r4") is True
    rel.stop(t, events, layout, "hello", "r2")
    assert "release r4" in node.page()[1]


def test_prune_keeps_only_the_given_releases(node, sources):
    rel.upload(node.t, Events(), node.layout, "hello", "r3", sources["v2"], previous="r2")
    stale = os.path.join(node.layout.venvs_dir("hello"), "0123456789abcdef")  # a venv no release names
    os.makedirs(stale)
    removed = rel.prune(node.t, Events(), node.layout, "hello", ["r2", "r4"])
    assert not os.path.exists(stale)
    assert os.path.isdir(node.venv)  # the one the kept releases use
    assert removed == ["r1", "r3"]
    assert sorted(os.listdir(node.layout.releases_dir("hello"))) == ["r2", "r4"]
    env_dir = node.layout.env_dir("hello")
    assert {name.split(".")[0] for name in os.listdir(env_dir) if name != "__pycache__"} == {"r2", "r4"}
    cache = os.path.join(env_dir, "__pycache__")  # gunicorn's compiled copies of the config files
    assert {name.split(".")[0] for name in (os.listdir(cache) if os.path.isdir(cache) else [])} <= {"r2", "r4"}
    # r4 is running: never removed, whatever keep says.
    events = Events()
    assert rel.prune(node.t, events, node.layout, "hello", []) == ["r2"]
    assert os.listdir(node.layout.releases_dir("hello")) == ["r4"]
    assert events.kinds("log") == [{"text": "kept releases that are still running: r4"}]
    assert "release r4" in node.page()[1]


# --- no host needed ---------------------------------------------------------------------

def test_bad_input_is_refused_before_it_reaches_a_config():
    layout = NodeLayout("/srv/tc")
    with pytest.raises(ValueError, match="release 'R1' is invalid"):
        rel.program_name("hello", "R1")
    with pytest.raises(ValueError, match="runner"):
        rel.start(None, None, layout, "hello", "r1", port=8000, runner="app:application; rm -rf /",
                  venv="/srv/tc/v", processes=1, threads=1, env_file="/srv/tc/e")
    with pytest.raises(ValueError, match="static"):
        frontdoor.render(layout, [frontdoor.Route("hello", "hello.test", "/", 8000, "r1", static="x; }/")],
                         listen="127.0.0.1:80")
    with pytest.raises(ValueError, match="path"):
        frontdoor.render(layout, [frontdoor.Route("hello", "hello.test", "/a b/", 8000, "r1")],
                         listen="127.0.0.1:80")
    release = "20261201195231-e850c967"
    with pytest.raises(ValueError, match="two apps at a.test/x/: one and two"):
        frontdoor.render(layout, [frontdoor.Route("one", "a.test", "/x/", 8000, release),
                                  frontdoor.Route("two", "a.test", "/x/", 8001, release)], listen="127.0.0.1:80")
    with pytest.raises(ValueError, match="a.test/docs/ would be both one's writable directory docs and two's "
                                         "location"):
        frontdoor.render(layout, [frontdoor.Route("one", "a.test", "/", 8000, release, writable=("docs",)),
                                  frontdoor.Route("two", "a.test", "/docs/", 8001, release)], listen="127.0.0.1:80")
    with pytest.raises(ValueError, match="host 'A.test' is not in its canonical form 'a.test'"):
        frontdoor.render(layout, [frontdoor.Route("one", "A.test", "/", 8000, release)], listen="127.0.0.1:80")
    with pytest.raises(ValueError, match="listen"):
        frontdoor.render(layout, [], listen="127.0.0.1:80; include /etc/passwd")
    with pytest.raises(ValueError, match="environment variable name"):
        rel.render_env({"BAD-NAME": "x"})
    with pytest.raises(rel.ReleaseError, match="inside the app"):
        rel.ensure_venv(None, None, layout, "hello", "/srv/tc/apps/hello/releases/r1", "../../etc/passwd")


def test_the_program_runs_gunicorn_through_the_env_file_without_a_shell_string():
    conf = rel.render_program(NodeLayout("/srv/tc"), "hello", "r1", port=8001, runner="app:application",
                              venv="/srv/tc/apps/hello/venvs/abc", processes=2, threads=3,
                              env_file="/srv/tc/apps/hello/env/r1.env")
    command = next(l for l in conf.splitlines() if l.startswith("command = "))
    assert command == (
        "command = /usr/bin/python3 -I /srv/tc/bin/toppcloud-exec --chdir /srv/tc/apps/hello/releases/r1 "
        "/srv/tc/apps/hello/env/r1.env -- /srv/tc/apps/hello/venvs/abc/bin/gunicorn --bind 127.0.0.1:8001 "
        "--workers 2 --threads 3 --chdir /srv/tc/apps/hello/releases/r1 --graceful-timeout 25 "
        "--no-control-socket --access-logfile /srv/tc/logs/hello/access.log --error-logfile - "
        "--name app-hello-r1 --config /srv/tc/apps/hello/env/r1.gunicorn.py "
        "--log-config-json /srv/tc/bin/gunicorn-logging.json app:application"
    )
    assert "stopsignal = TERM" in conf and "stderr_logfile = /srv/tc/logs/hello/error.log" in conf


def test_it_runs_the_program_as_the_apps_user():
    kw = dict(port=8001, runner="app:application", venv="/srv/tc/apps/hello/venvs/abc", processes=2, threads=3,
              env_file="/srv/tc/apps/hello/env/r1.env")
    conf = rel.render_program(NodeLayout("/srv/tc"), "hello", "r1", user="tc-hello", **kw)
    assert "\nuser = tc-hello\n" in conf  # supervisord starts it as the user...
    command = next(l for l in conf.splitlines() if l.startswith("command = "))
    # ... and toppcloud-exec would drop to it too, were it started as root.
    assert command.startswith("command = /usr/bin/python3 -I /srv/tc/bin/toppcloud-exec --user tc-hello --chdir ")
    for bad in ("root\nuser = root", "tc hello", "Tc-hello", "x" * 33, ""):
        with pytest.raises(ValueError, match="user"):
            rel.render_program(NodeLayout("/srv/tc"), "hello", "r1", user=bad, **kw)


def test_a_python_uv_cannot_install_is_refused_naming_what_the_node_has(tmp_path):
    """uv on the node (the test venv's), asked for a Python it has no download of (and this machine has no
    internet): refused with uv's own words and the versions the node has; nothing is left under the root."""
    import sys

    from nodeops.transport import LocalTransport

    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "uv").symlink_to(os.path.join(os.path.dirname(sys.executable), "uv"))
    (tmp_path / "root").mkdir()
    layout = NodeLayout(str(tmp_path / "root"))
    events = Events()
    with pytest.raises(rel.ReleaseError) as refused:
        rel.find_python(LocalTransport(), events, layout, "3.99", [str(tools)])
    said = str(refused.value)
    assert said.startswith("no Python 3.99 on the node (it has: 3.11 (/usr/bin/python3.11)"), said
    assert "`uv python install 3.99` exited 2: error: No download found for request: cpython-3.99" in said, said
    assert list((tmp_path / "root").iterdir()) == []
    with pytest.raises(ValueError, match="python '3.12; rm -rf /' is invalid"):
        rel.find_python(LocalTransport(), events, layout, "3.12; rm -rf /")
