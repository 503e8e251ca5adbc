"""Real test hosts: one sshd per loopback address (127.0.0.2, .3, ...).

Each host has its own directory with host key, authorized_keys, sshd_config,
sshd log and a node root. Everything started here is stopped by pid: the
sshd child we spawned, and the supervisord (with its nginx) that node setup
started under the host's root. Plain Python, no Django.
"""

import fcntl
import glob
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SSHD = "/usr/sbin/sshd"
# Test runs of several sessions share this machine: a host holds an flock on
# its address for its lifetime, and other harness instances skip it. The
# kernel drops the lock when the process dies, so nothing goes stale.
LOCK_DIR = "/tmp/toppcloud-host-locks"


def _lock_address(address):
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(os.path.join(LOCK_DIR, address), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def make_control_key(directory):
    """Create the control plane's key pair; return (private_path, public_text)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "control_key")
    if not os.path.exists(path):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "toppcloud-test", "-f", path],
            check=True, capture_output=True,
        )
    with open(path + ".pub") as f:
        return path, f.read().strip()


def port_free(address, port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As sshd and nginx do: a port with only TIME_WAIT leftovers is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _free_port(address, start, count=100):
    for port in range(start, start + count):
        if port_free(address, port):
            return port
    return None


def _free_pg_port(address, start, count=10):
    """A port for a host's PostgreSQL cluster: free on its address and as a local socket."""
    for port in range(start, start + count):
        if (port_free(address, port) and port_free("127.0.0.1", port)
                and not os.path.exists(f"/var/run/postgresql/.s.PGSQL.{port}")
                and not _pg_port_taken(port)):
            return port
    return None


def _pg_port_taken(port):
    """Another cluster (running or not) is configured with this port."""
    for conf in glob.glob("/etc/postgresql/*/*/postgresql.conf"):
        try:
            with open(conf) as f:
                if re.search(rf"^\s*port\s*=\s*{port}\b", f.read(), re.MULTILINE):
                    return True
        except OSError:
            pass
    return False


def drop_pg_cluster(name):
    """Stop and remove a cluster node setup or a deploy created for a test host (all versions)."""
    for conf_dir in glob.glob(f"/etc/postgresql/*/{name}"):
        version = conf_dir.split("/")[3]
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True, timeout=120)
        shutil.rmtree(conf_dir, ignore_errors=True)  # pg_dropcluster leaves toppcloud's conf.d file


_session_lock = None


def hold_session_lock():
    """Hold a lock named by this process's pid for its lifetime: clusters named tc-<pid>-... are in use.

    A lock, not a look at /proc: test runs of other sessions may see other pid namespaces.
    """
    global _session_lock
    if _session_lock is None:
        os.makedirs(LOCK_DIR, exist_ok=True)
        _session_lock = os.open(os.path.join(LOCK_DIR, f"session-{os.getpid()}"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(_session_lock, fcntl.LOCK_EX)


def _session_alive(pid):
    if pid == os.getpid():
        return True
    path = os.path.join(LOCK_DIR, f"session-{pid}")
    if not os.path.exists(path):
        return _pid_alive(pid)  # a run from before session locks
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    os.unlink(path)
    return False


def drop_stale_pg_clusters():
    """Clusters of test runs that are gone (their names carry the run's pid)."""
    for conf_dir in glob.glob("/etc/postgresql/*/tc-*-*"):
        m = re.fullmatch(r"tc-(\d+)-.*", os.path.basename(conf_dir))
        if m and not _session_alive(int(m.group(1))):
            drop_pg_cluster(os.path.basename(conf_dir))


def drop_app_users(root=None):
    """Delete the system users (and groups) deploys made for apps under a test host's root.

    toppcloud names an app's user in its GECOS field ("toppcloud app NAME")
    and gives it a home at <root>/apps/NAME/home, so a host's own users are
    the ones whose home is under its root. With no root: the users of test
    roots under the temporary directory that no longer exist (runs that died).
    """
    tmp = tempfile.gettempdir().rstrip("/") + "/"
    for user in pwd.getpwall():
        if not user.pw_gecos.startswith("toppcloud app ") or "/apps/" not in user.pw_dir:
            continue
        user_root = user.pw_dir.rsplit("/apps/", 1)[0]
        if root is not None:
            if user_root != root.rstrip("/"):
                continue
        elif not user_root.startswith(tmp) or os.path.exists(user_root):
            continue
        # A process of the app that outlived its supervisord is ours to end (userdel -f alone leaves it running,
        # holding a uid the next useradd may be given), and it must not keep the user.
        subprocess.run(["pkill", "-KILL", "-u", str(user.pw_uid)], capture_output=True, timeout=60)
        subprocess.run(["userdel", "-f", user.pw_name], capture_output=True, timeout=60)
        try:
            grp.getgrnam(user.pw_name)
        except KeyError:
            continue
        subprocess.run(["groupdel", user.pw_name], capture_output=True, timeout=60)


def _pid_alive(pid):
    """True if pid runs and is not a zombie (an orphan nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _terminate_pid(pid, must_contain, timeout=15):
    """SIGTERM `pid` if it is still the process we mean; wait until it is gone."""
    if pid is None or not _pid_alive(pid) or must_contain not in _cmdline(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


class TestHost:
    __test__ = False  # not a pytest test class

    ssh_user = "root"

    def __init__(self, name, address, ssh_port, http_port, directory, authorized_pubkey):
        self.name = name
        self.address = address
        self.ssh_port = ssh_port
        self.http_port = http_port
        self.dir = directory
        self.root = os.path.join(directory, "root")
        self.host_key_path = os.path.join(directory, "host_key")
        self.config_path = os.path.join(directory, "sshd_config")
        self.log_path = os.path.join(directory, "sshd.log")
        self.authorized_keys = os.path.join(directory, "authorized_keys")
        self.sshd = None
        self.host_key = None
        self.lock_fd = None
        # The PostgreSQL cluster a deploy of an app with service.postgresql creates here.
        self.pg_cluster = f"tc-{os.getpid()}-{name}"
        self.pg_port = None
        os.makedirs(directory, exist_ok=True)
        # nginx workers run as www-data and must traverse to the root.
        os.chmod(directory, 0o755)
        # A home of the host's own: this machine's /root/.bashrc runs `pyenv init`
        # (about 0.1 s of CPU) for every command sshd starts, which a real host
        # would not, and which five hosts sharing two cores feel.
        self.home = os.path.join(directory, "home")
        os.makedirs(self.home, exist_ok=True)
        with open(self.authorized_keys, "w") as f:
            f.write(f'environment="HOME={self.home}" {authorized_pubkey.strip()}\n')
        self._make_host_key()
        self._write_config()

    def __repr__(self):
        return f"<TestHost {self.name} {self.address}:{self.ssh_port} http:{self.http_port}>"

    def spec(self, identity_file, control_dir):
        """The dict nodeops.transport.transport_for expects."""
        return {
            "transport": "ssh", "name": self.name, "address": self.address,
            "ssh_port": self.ssh_port, "ssh_user": self.ssh_user,
            "host_key": self.host_key, "identity_file": identity_file,
            "control_dir": control_dir,
        }

    @property
    def url(self):
        return f"http://{self.address}:{self.http_port}"

    def _make_host_key(self):
        for path in (self.host_key_path, self.host_key_path + ".pub"):
            if os.path.exists(path):
                os.unlink(path)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f", self.host_key_path],
            check=True, capture_output=True,
        )
        with open(self.host_key_path + ".pub") as f:
            self.host_key = " ".join(f.read().split()[:2])

    def _write_config(self):
        lines = [
            f"ListenAddress {self.address}",
            f"Port {self.ssh_port}",
            f"HostKey {self.host_key_path}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"PidFile {os.path.join(self.dir, 'sshd.pid')}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # key files live under a temporary directory
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
            # Each multiplexed command is a session on one connection; the
            # default of 10 is too low for parallel work on a node.
            "MaxSessions 64",
            "PermitUserEnvironment yes",  # for the HOME set in authorized_keys
        ]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start_sshd(self, timeout=10):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        log = open(self.log_path, "ab")
        try:
            self.sshd = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", self.config_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                break
            try:
                with socket.create_connection((self.address, self.ssh_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop_sshd()
        with open(self.log_path, errors="replace") as f:
            log_text = f.read()[-2000:]
        raise RuntimeError(f"sshd for {self} did not start:\n{log_text}")

    def stop_sshd(self):
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait()
        self.sshd = None

    def rotate_host_key(self):
        """Give the host a new host key, as if it had been rebuilt."""
        old = self.host_key
        self.stop_sshd()
        self._make_host_key()
        assert self.host_key != old
        self.start_sshd()

    def stop_services(self):
        """Stop the supervisord node setup started under our root (and its nginx)."""
        sup_pid = _read_pid(os.path.join(self.root, "run/supervisor/supervisord.pid"))
        nginx_pid = _read_pid(os.path.join(self.root, "run/nginx/nginx.pid"))
        _terminate_pid(sup_pid, self.root)  # supervisord stops nginx itself
        _terminate_pid(nginx_pid, self.root)  # in case nginx outlived it
        _terminate_pid(_read_pid(os.path.join(self.root, "run/haproxy.pid")), self.root)  # a balancer's, likewise

    def stop(self):
        self.stop_services()
        drop_pg_cluster(self.pg_cluster)
        drop_app_users(self.root)
        self.stop_sshd()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def start_hosts(n, base_dir, authorized_pubkey, first=2, ssh_port=2222, http_port=8080):
    """Start `n` test hosts on 127.0.0.<first>, ... skipping addresses in use."""
    hold_session_lock()
    drop_stale_pg_clusters()
    drop_app_users()
    hosts = []
    last = first
    try:
        while len(hosts) < n:
            if last > 254:
                raise RuntimeError("no free loopback address for a test host")
            address = f"127.0.0.{last}"
            last += 1
            lock_fd = _lock_address(address)
            if lock_fd is None:
                continue  # another test run has a host here
            sp = _free_port(address, ssh_port)
            hp = _free_port(address, http_port)
            pp = _free_pg_port(address, 5400 + 10 * last)  # one range per address: addresses are locked
            tp = _free_port(address, 8443)  # HTTPS, for hosts with a certificate
            if sp is None or hp is None or pp is None or tp is None:
                os.close(lock_fd)
                continue
            name = f"host{len(hosts) + 1}"
            host = TestHost(name, address, sp, hp, os.path.join(base_dir, name), authorized_pubkey)
            host.lock_fd = lock_fd
            host.pg_port = pp
            host.https_port = tp
            try:
                host.start_sshd()
            except RuntimeError:
                host.stop()
                # Another process may have taken the port since we looked.
                if not port_free(address, sp):
                    continue
                raise
            hosts.append(host)
    except BaseException:
        stop_hosts(hosts)
        raise
    return hosts


def stop_hosts(hosts):
    errors = []
    for host in hosts:
        try:
            host.stop()
        except Exception as exc:  # stop the others anyway
            errors.append(f"{host}: {exc}")
    if errors:
        raise RuntimeError("could not stop test hosts: " + "; ".join(errors))
