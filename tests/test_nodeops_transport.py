import json
import os
import subprocess
import time

import pytest

from tests.hosts import port_free
from nodeops.transport import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    LocalTransport,
    SSHTransport,
    TransportError,
    fingerprint,
    scan_host_key,
    transport_for,
)
from tests.nodeops_conftest_snippet import control_dir, control_key, hosts_dir, test_hosts  # noqa: F401

# Each element must reach the program exactly as written.
NASTY = ["a b", "it's", '"double"', "$(touch {marker})", "`touch {marker}`", "; touch {marker}",
         "&& true", "*", "~", "\\", "$HOME", "line1\nline2", "", "-n", "ü €"]
ECHO_ARGV_PY = "import json, sys; print(json.dumps(sys.argv[1:]))"


def nasty(marker):
    return [a.format(marker=marker) for a in NASTY]


@pytest.fixture
def ssh(test_hosts, control_key, control_dir):
    t = transport_for(test_hosts[0].spec(control_key[0], control_dir))
    yield t
    t.close()


# --- local ---------------------------------------------------------------

def test_it_runs_local_commands():
    r = LocalTransport().run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (r.argv, r.rc, r.stdout, r.stderr) == (["sh", "-c", "echo out; echo err >&2; exit 3"], 3, "out\n", "err\n")
    assert r.seconds >= 0


def test_it_passes_local_argv_verbatim(tmp_path):
    marker = tmp_path / "pwned"
    args = nasty(marker)
    r = LocalTransport().run(["python3", "-c", ECHO_ARGV_PY, *args])
    assert json.loads(r.stdout) == args
    assert not marker.exists()


def test_it_raises_command_failed_with_argv_rc_and_stderr():
    with pytest.raises(CommandFailed) as e:
        LocalTransport().run(["sh", "-c", "echo one >&2; echo two >&2; exit 4"])
    assert e.value.result.rc == 4
    assert str(e.value) == (
        "command \"sh -c 'echo one >&2; echo two >&2; exit 4'\" on local failed with exit code 4: one\ntwo"
    )


def test_it_reports_a_missing_program_as_a_failed_command():
    with pytest.raises(CommandFailed) as e:
        LocalTransport().run(["/nonexistent/prog"])
    assert e.value.result.rc == 127


def test_it_times_out():
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="timed out after 0.5 seconds"):
        LocalTransport().run(["sleep", "5"], timeout=0.5)
    assert time.monotonic() - started < 3


def test_it_feeds_stdin():
    assert LocalTransport().run(["cat"], input=b"hello\x00bytes").stdout == "hello\x00bytes"


def test_it_puts_files_locally_idempotently(tmp_path):
    t = LocalTransport()
    path = str(tmp_path / "conf")
    assert t.put_file(path, b"one\n") is True
    assert t.put_file(path, b"one\n") is False
    assert t.put_file(path, b"two\n") is True
    assert open(path, "rb").read() == b"two\n"
    assert t.put_file(path, b"two\n", mode=0o600) is True  # a mode change is a change
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["conf"]  # no temp files left behind


def test_it_rejects_relative_put_file_paths():
    with pytest.raises(ValueError, match="must be absolute"):
        LocalTransport().put_file("conf", b"")


def test_it_fingerprints_like_ssh_keygen(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    pub = (tmp_path / "k.pub").read_text()
    expected = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")],
                              capture_output=True, text=True, check=True).stdout.split()[1]
    assert fingerprint(pub) == expected


def test_it_refuses_bad_transport_specs(tmp_path):
    with pytest.raises(ValueError, match="transport 'telnet' is invalid"):
        transport_for({"transport": "telnet"})
    base = {"address": "127.0.0.1", "ssh_port": 22, "ssh_user": "root",
            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "identity_file": "/k", "control_dir": str(tmp_path)}
    with pytest.raises(ValueError, match="address '-oProxyCommand=id' is invalid"):
        transport_for(dict(base, address="-oProxyCommand=id"))
    with pytest.raises(ValueError, match="ssh_user 'root; id' is invalid"):
        transport_for(dict(base, ssh_user="root; id"))
    with pytest.raises(ValueError, match="too long for ssh control sockets"):
        transport_for(dict(base, control_dir=str(tmp_path / ("x" * 100))))
    assert isinstance(transport_for({"transport": "local"}), LocalTransport)


# --- ssh -----------------------------------------------------------------


@pytest.mark.hosts
def test_it_runs_commands_over_ssh(ssh, test_hosts):
    r = ssh.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (r.rc, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert ssh.describe() == f"{test_hosts[0].address}:{test_hosts[0].ssh_port}"
    assert ssh.run(["cat"], input=b"via stdin").stdout == "via stdin"


@pytest.mark.hosts
def test_it_passes_ssh_argv_verbatim(ssh, hosts_dir):
    marker = os.path.join(hosts_dir, "pwned")
    args = nasty(marker)
    r = ssh.run(["python3", "-c", ECHO_ARGV_PY, *args])
    assert json.loads(r.stdout) == args
    assert not os.path.exists(marker)


@pytest.mark.hosts
def test_it_reuses_one_master_connection(ssh):
    ssh.run(["true"])
    assert os.path.exists(ssh.control_path)  # the master socket
    ssh.close()
    assert not os.path.exists(ssh.control_path)
    assert ssh.run(["echo", "again"]).stdout == "again\n"


@pytest.mark.hosts
def test_it_returns_a_remote_exit_255_as_a_result(ssh):
    r = ssh.run(["sh", "-c", "exit 255"], check=False)
    assert r.rc == 255
    with pytest.raises(CommandFailed, match="failed with exit code 255"):
        ssh.run(["sh", "-c", "exit 255"])


@pytest.mark.hosts
def test_it_names_the_host_when_a_remote_command_fails(ssh, test_hosts):
    with pytest.raises(CommandFailed) as e:
        ssh.run(["ls", "/nonexistent dir"])
    host = test_hosts[0]
    assert str(e.value).startswith(
        f"command \"ls '/nonexistent dir'\" on {host.address}:{host.ssh_port} failed with exit code 2: ls: "
    )


@pytest.mark.hosts
def test_it_puts_files_over_ssh_idempotently(ssh, hosts_dir):
    path = os.path.join(hosts_dir, "remote file.conf")
    assert ssh.put_file(path, b"a = 1\n", mode=0o640) is True
    assert ssh.put_file(path, b"a = 1\n", mode=0o640) is False
    assert open(path, "rb").read() == b"a = 1\n"
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert ssh.put_file(path, b"a = 2\n", mode=0o640) is True
    assert open(path, "rb").read() == b"a = 2\n"


@pytest.mark.hosts
def test_it_rsyncs_a_directory_with_link_dest(ssh, hosts_dir, tmp_path):
    src = tmp_path / "src"
    (src / "sub dir").mkdir(parents=True)
    (src / "app.py").write_text("print('hi')\n")
    (src / "sub dir" / "it's.txt").write_text("quoted\n")
    dest1 = os.path.join(hosts_dir, "releases", "r1")
    dest2 = os.path.join(hosts_dir, "releases", "r 2")
    ssh.run(["mkdir", "-p", dest1, dest2])
    ssh.rsync(str(src), dest1)
    ssh.rsync(str(src), dest2, link_dest=dest1)
    for dest in (dest1, dest2):
        assert open(os.path.join(dest, "sub dir", "it's.txt")).read() == "quoted\n"
    # Unchanged files of the new release are hard links into the previous one.
    assert os.stat(os.path.join(dest1, "app.py")).st_ino == os.stat(os.path.join(dest2, "app.py")).st_ino
    (src / "app.py").unlink()
    ssh.rsync(str(src), dest1)  # delete=True removes files gone from src
    assert not os.path.exists(os.path.join(dest1, "app.py"))


@pytest.mark.hosts
def test_it_scans_the_host_key(test_hosts):
    host = test_hosts[0]
    assert scan_host_key(host.address, host.ssh_port) == host.host_key


@pytest.mark.hosts
def test_it_refuses_a_host_whose_key_changed(test_hosts, control_key, control_dir):
    host = test_hosts[1]
    t = transport_for(host.spec(control_key[0], control_dir))
    pinned = host.host_key
    assert t.run(["true"]).rc == 0
    t.close()  # an open master would keep using the old, verified connection
    host.rotate_host_key()
    with pytest.raises(HostKeyMismatch) as e:
        t.run(["true"])
    assert str(e.value) == (
        f"the host at {host.address}:{host.ssh_port} presented a host key that does not match "
        f"the key pinned for it ({fingerprint(pinned)}). If the host was really rebuilt, re-pin "
        f"its key with `manage.py node pin-key {host.name}`; otherwise someone may be "
        f"intercepting the connection."
    )
    # Re-pinning (a new transport with the new key) works and uses a new master.
    repinned = transport_for(host.spec(control_key[0], control_dir))
    assert repinned.control_path != t.control_path
    assert repinned.run(["echo", "ok"]).stdout == "ok\n"
    repinned.close()


@pytest.mark.hosts
def test_it_refuses_a_wrong_pinned_key(test_hosts, control_key, control_dir, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text()
    spec = dict(test_hosts[0].spec(control_key[0], control_dir), host_key=other)
    with pytest.raises(HostKeyMismatch):
        transport_for(spec).run(["true"])


@pytest.mark.hosts
def test_it_fails_fast_on_an_unreachable_port(test_hosts, control_key, control_dir):
    host = test_hosts[0]
    port = next(p for p in range(2300, 2400) if port_free(host.address, p))
    spec = dict(host.spec(control_key[0], control_dir), ssh_port=port)
    started = time.monotonic()
    with pytest.raises(TransportError) as e:
        transport_for(spec).run(["true"])
    assert time.monotonic() - started < 5
    assert not isinstance(e.value, HostKeyMismatch)
    assert str(e.value).startswith(f"cannot reach {host.address}:{port} over ssh: ")
    assert "Connection refused" in str(e.value)


@pytest.mark.hosts
def test_it_reports_a_refused_login(test_hosts, control_dir, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    host = test_hosts[0]
    t = SSHTransport(host.address, host.ssh_port, "root", host.host_key, str(tmp_path / "stranger"), control_dir)
    with pytest.raises(TransportError) as e:
        t.run(["true"])
    assert "Permission denied" in str(e.value)
