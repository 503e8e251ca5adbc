import os

import pytest

from nodeops.layout import NodeLayout
from nodeops.ping import ping
from nodeops.setup import SetupError, render_nginx_conf, setup_node
from nodeops.transport import CommandFailed, transport_for
from tests.nodeops_helpers import NO_PROXY, Events, get
from tests.nodeops_conftest_snippet import control_dir, control_key, hosts_dir, test_hosts  # noqa: F401

pytestmark = pytest.mark.hosts

STEPS = ["facts", "packages", "layout", "config", "validate", "start", "app users", "verify"]
@pytest.fixture(scope="module")
def transports(test_hosts, control_key, control_dir):
    ts = [transport_for(h.spec(control_key[0], control_dir)) for h in test_hosts]
    yield ts
    for t in ts:
        t.close()


@pytest.fixture(scope="module")
def first_runs(test_hosts, transports):
    """Set up every test host once; (result, events) per host."""
    runs = []
    for host, t in zip(test_hosts, transports):
        events = Events()
        result = setup_node(t, root=host.root, address=host.address, http_port=host.http_port, emit=events)
        runs.append((result, events))
    return runs


def test_it_sets_up_each_host_and_serves_health(test_hosts, first_runs):
    for host, (result, events) in zip(test_hosts, first_runs):
        assert result["changed"] is True
        assert result["health"] == "ok"
        assert result["root"] is True and result["systemd"] is False
        assert result["nginx"].startswith("nginx version: nginx/")
        assert [d["step"] for d in events.kinds("step.started")] == STEPS
        assert all(d["ok"] for d in events.finished().values())
        assert events.kinds("node.facts")[0]["os"]
        assert events.kinds("node.setup") == [{"changed": True, "root": host.root,
                                                "address": host.address, "http_port": host.http_port}]
        assert get(host.url + "/.toppcloud/health") == (200, "ok\n")
        assert get(host.url + "/anything") == (404, "no app is deployed here\n")


def test_it_listens_only_on_the_hosts_own_address(test_hosts, first_runs):
    # Both hosts use the same http port on their own addresses; a wildcard
    # listener would also answer on an address no host has.
    assert len({h.http_port for h in test_hosts}) == 1
    with pytest.raises(OSError):
        NO_PROXY.open(f"http://127.0.0.254:{test_hosts[0].http_port}/", timeout=2)


def test_it_leaves_the_documented_layout_on_disk(test_hosts, first_runs):
    for host in test_hosts:
        layout = NodeLayout(host.root)
        for path, mode in layout.directories():
            assert os.path.isdir(path), path
            assert os.stat(path).st_mode & 0o7777 == mode, path
        for path in (layout.nginx_conf, layout.supervisor_conf, layout.supervisor_pid, layout.nginx_pid,
                     f"{layout.supervisor_programs}/toppcloud-nginx.conf"):
            assert os.path.isfile(path), path
        assert os.path.exists(layout.supervisor_sock)
        assert os.stat(layout.supervisor_sock).st_mode & 0o777 == 0o700
        conf = open(layout.nginx_conf).read()
        assert f"listen {host.address}:{host.http_port};" in conf
        assert f"include {layout.nginx_sites}/*.conf;" in conf
        assert "user www-data;" in conf
        assert not os.path.exists(f"{layout.tmp}/nginx.conf.candidate")
        sup = open(layout.supervisor_conf).read()
        assert f"files = {layout.supervisor_programs}/*.conf" in sup
        # nginx really runs under that supervisord, with our config.
        nginx_pid = int(open(layout.nginx_pid).read())
        sup_pid = int(open(layout.supervisor_pid).read())
        assert int(open(f"/proc/{nginx_pid}/stat").read().rsplit(")", 1)[1].split()[1]) == sup_pid
        assert layout.nginx_conf in open(f"/proc/{nginx_pid}/cmdline").read()


def test_it_changes_nothing_the_second_time(test_hosts, transports, first_runs):
    for host, t in zip(test_hosts, transports):
        nginx_pid = open(NodeLayout(host.root).nginx_pid).read()
        events = Events()
        result = setup_node(t, root=host.root, address=host.address, http_port=host.http_port, emit=events)
        assert result["changed"] is False
        finished = events.finished()
        assert {s: finished[s].get("changed") for s in STEPS if s not in ("facts", "verify")} == {
            "packages": False, "layout": False, "config": False, "validate": False, "start": False,
            "app users": False,
        }
        assert events.kinds("node.setup")[0]["changed"] is False
        # Nothing was restarted.
        assert open(NodeLayout(host.root).nginx_pid).read() == nginx_pid
        assert get(host.url + "/.toppcloud/health") == (200, "ok\n")


def test_it_emits_every_command_it_runs(first_runs):
    result, events = first_runs[0]
    commands = events.kinds("command")
    assert commands and all(set(c) == {"step", "argv", "rc", "stdout", "stderr", "seconds"} for c in commands)
    assert any(c["argv"][1:3] == ["-t", "-q"] and c["step"] == "validate" for c in commands)


def test_it_keeps_serving_when_a_site_config_is_broken(test_hosts, transports, first_runs):
    host, t = test_hosts[0], transports[0]
    layout = NodeLayout(host.root)
    before = open(layout.nginx_conf).read()
    broken = f"{layout.nginx_sites}/broken.conf"
    with open(broken, "w") as f:
        f.write("server { this is not nginx }\n")
    try:
        events = Events()
        with pytest.raises(CommandFailed, match="nginx"):
            setup_node(t, root=host.root, address=host.address, http_port=host.http_port + 1, emit=events)
        finished = events.finished()
        assert finished["validate"]["ok"] is False
        assert "start" not in finished
        assert open(layout.nginx_conf).read() == before  # the good config stays in place
        assert get(host.url + "/.toppcloud/health") == (200, "ok\n")
    finally:
        os.unlink(broken)


def test_it_restarts_nginx_that_was_stopped(test_hosts, transports, first_runs):
    host, t = test_hosts[1], transports[1]
    layout = NodeLayout(host.root)
    t.run(["supervisorctl", "-c", layout.supervisor_conf, "stop", "toppcloud-nginx"])
    with pytest.raises(OSError):
        NO_PROXY.open(host.url + "/.toppcloud/health", timeout=2)
    events = Events()
    result = setup_node(t, root=host.root, address=host.address, http_port=host.http_port, emit=events)
    assert result["changed"] is True and events.finished()["start"]["changed"] is True
    assert get(host.url + "/.toppcloud/health") == (200, "ok\n")


def test_it_reloads_nginx_when_its_config_changes(test_hosts, transports, first_runs):
    host, t = test_hosts[1], transports[1]
    layout = NodeLayout(host.root)
    master = open(layout.nginx_pid).read()
    new_port = host.http_port + 1
    try:
        events = Events()
        setup_node(t, root=host.root, address=host.address, http_port=new_port, emit=events)
        assert events.finished()["validate"]["changed"] is True
        assert any(c["argv"][-3:] == ["signal", "HUP", "toppcloud-nginx"] for c in events.kinds("command"))
        assert open(layout.nginx_pid).read() == master  # graceful reload, same master
        assert get(f"http://{host.address}:{new_port}/.toppcloud/health") == (200, "ok\n")
    finally:
        setup_node(t, root=host.root, address=host.address, http_port=host.http_port, emit=Events())
    assert get(host.url + "/.toppcloud/health") == (200, "ok\n")


def test_it_rejects_bad_input_before_touching_the_host(transports):
    events = Events()
    with pytest.raises(ValueError, match="root '/etc' is invalid"):
        setup_node(transports[0], root="/etc", address="127.0.0.2", http_port=8080, emit=events)
    with pytest.raises(ValueError, match="http_port 0 is invalid"):
        setup_node(transports[0], root="/srv/x", address="127.0.0.2", http_port=0, emit=events)
    assert events == []


def test_it_pings(transports, first_runs):
    events = Events()
    data = ping(transports[0], events, root="/")
    assert set(data) == {"round_trip_seconds", "uptime_seconds", "load1", "load5", "load15", "mem_total_bytes",
                         "mem_available_bytes", "disk_total_bytes", "disk_free_bytes"}
    assert 0 < data["round_trip_seconds"] < 5 and data["uptime_seconds"] > 0
    assert 0 < data["mem_available_bytes"] <= data["mem_total_bytes"]
    assert 0 < data["disk_free_bytes"] <= data["disk_total_bytes"]  # the dashboard's disk figure (jobs/dashboard.py)
    assert events.kinds("node.ping") == [data]
    assert [c["argv"] for c in events.kinds("command")] == [["cat", "/proc/uptime", "/proc/loadavg", "/proc/meminfo"],
                                                             ["df", "-P", "-k", "--", "/"]]


def test_it_renders_ipv6_listen_addresses():
    conf = render_nginx_conf(NodeLayout("/srv/tc"), "::1", 8080)
    assert "listen [::1]:8080;" in conf
    assert "user " not in conf


def test_it_names_missing_packages_when_it_cannot_install():
    from nodeops import setup as setup_mod

    with pytest.raises(SetupError) as e:
        setup_mod.ensure_packages(None, None, {"python3": "/usr/bin/python3"}, {"root": False, "systemd": False})
    assert str(e.value) == (
        "the node is missing nginx, supervisord, supervisorctl, rsync; install nginx-light rsync "
        "supervisor with the system's package manager, or connect as root so setup can install them"
    )
