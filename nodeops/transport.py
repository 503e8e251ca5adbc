"""Running commands on a node: locally or through the system OpenSSH client.

Commands are always argv lists. Over SSH the remote command line is built
with shlex.join, so every element reaches the remote program verbatim
whatever it contains.
"""

import base64
import fcntl
import hashlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass

from . import hostside
from .errors import NodeOpError
from .validate import validate_address, validate_host_key, validate_port


@dataclass
class CommandResult:
    argv: list
    rc: int
    stdout: str
    stderr: str
    seconds: float


class TransportError(NodeOpError):
    """The host cannot be reached or we cannot log in."""


class HostKeyMismatch(TransportError):
    """The host presented a key other than the pinned one."""


class CommandFailed(NodeOpError):
    def __init__(self, result, where=""):
        self.result = result
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        on = f" on {where}" if where else ""
        super().__init__(
            f"command {shlex.join(hostside.label(result.argv))!r}{on} failed with exit code "
            f"{result.rc}" + (f": {tail}" if tail else "")
        )


class CommandTimeout(CommandFailed):
    def __init__(self, result, where="", timeout=None):
        self.result = result
        on = f" on {where}" if where else ""
        Exception.__init__(
            self, f"command {shlex.join(hostside.label(result.argv))!r}{on} timed out after {timeout} seconds"
        )


def fingerprint(host_key: str) -> str:
    """'SHA256:...' exactly as ssh-keygen -l prints it."""
    blob = base64.b64decode(validate_host_key(host_key).split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


class Transport:
    def run(self, argv: list[str], *, input: bytes | None = None, timeout: float | None = None,
            check: bool = True) -> CommandResult:
        """Run argv on the node. check=True raises CommandFailed on rc != 0."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def put_file(self, path: str, data: bytes, mode: int = 0o644) -> bool:
        """Atomically make `path` hold `data` with `mode`; True if it changed."""
        if isinstance(data, str):
            data = data.encode()
        return bool(self.put_files({path: (mode, data)}))

    def put_files(self, files: dict, dirs=()) -> list[str]:
        """Make each path hold its bytes with its mode ({path: (mode, bytes)} or (mode, bytes, owner):
        a user name, its group too), in one round trip, after making the missing directories of
        `dirs` ((path, mode) pairs); the paths that changed."""
        for path in [*files, *(d for d, _ in dirs)]:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"put_files path {path!r} must be absolute")
        header = json.dumps({"dirs": [[d, "%o" % m] for d, m in dirs],
                             "files": [[p, "%o" % f[0], len(f[1]), f[2] if len(f) > 2 else None]
                                       for p, f in files.items()]})
        body = b"".join(f[1] for f in files.values())
        result = self.run(["python3", "-I", "-c", hostside.source("put_files")], input=header.encode() + b"\n" + body)
        return json.loads(result.stdout)

    def open(self, argv: list[str]) -> "Stream":
        """Start argv on the node with its stdin and stdout as pipes, for data that streams
        (backups, restores) instead of being held in memory. See Stream."""
        raise NotImplementedError

    def _open_argv(self, local_argv, argv):
        if not isinstance(argv, (list, tuple)) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a list of strings, got {argv!r}")
        err = tempfile.TemporaryFile()  # a file, so a chatty stderr can never block the stream
        proc = subprocess.Popen(local_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        for pipe in (proc.stdin, proc.stdout):  # fewer, bigger reads and writes for bulk data
            try:
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
        return Stream(self, list(argv), proc, err)

    def _run_argv(self, local_argv, argv, input, timeout, check):
        """Run `local_argv` here; report the result as the run of `argv`."""
        if not isinstance(argv, (list, tuple)) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a list of strings, got {argv!r}")
        started = time.monotonic()
        try:
            proc = subprocess.run(
                local_argv,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            result = CommandResult(list(argv), -1, _text(exc.stdout), _text(exc.stderr),
                                   time.monotonic() - started)
            raise CommandTimeout(result, self.describe(), timeout) from None
        result = CommandResult(list(argv), proc.returncode, _text(proc.stdout),
                               _text(proc.stderr), time.monotonic() - started)
        self._check_transport(result)
        if check and result.rc != 0:
            raise CommandFailed(result, self.describe())
        return result

    def _rsync_counting(self, local_argv, argv, progress):
        """Run rsync (with --info=progress2) here, handing progress() each figure of bytes sent so far as it
        comes; its result, its stdout the other lines (its --stats), raising as _run_argv does."""
        stream = self._open_argv(local_argv, argv)
        stream.stdin.close()
        out, carry = [], b""
        for chunk in iter(lambda: stream.stdout.read1(1 << 16), b""):
            *lines, carry = re.split(rb"[\r\n]", carry + chunk)  # progress2 rewrites one line with \r
            for line in lines:
                m = _PROGRESS2_RE.match(line)
                if m:
                    progress(int(m.group(1).replace(b",", b"")))
                else:
                    out.append(line + b"\n")
        out.append(carry)
        result = stream.finish(check=False)
        result = CommandResult(result.argv, result.rc, _text(b"".join(out)), result.stderr, result.seconds)
        if result.rc != 0:
            raise CommandFailed(result, self.describe())
        return result

    def _check_transport(self, result):
        pass


class Stream:
    """A command running on a node: write .stdin, read .stdout, then finish()."""

    def __init__(self, transport, argv, proc, err):
        self.transport, self.argv, self.proc, self._err = transport, argv, proc, err
        self.stdin, self.stdout = proc.stdin, proc.stdout
        self.started = time.monotonic()

    def finish(self, check=True, timeout=None) -> CommandResult:
        """Close stdin, wait for the end; the result (stdout is the caller's to read)."""
        try:
            if not self.stdin.closed:
                self.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise CommandTimeout(self._result(-1), self.transport.describe(), timeout) from None
        result = self._result(rc)
        self.transport._check_transport(result)
        if check and rc != 0:
            raise CommandFailed(result, self.transport.describe())
        return result

    def _result(self, rc):
        self._err.seek(0)
        stderr = _text(self._err.read())
        self._err.close()
        self.stdout.close()
        return CommandResult(self.argv, rc, "", stderr, time.monotonic() - self.started)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# rsync --info=progress2: "     1,234,567  45%  1.20MB/s    0:00:01 (xfr#3, to-chk=2/10)"
_PROGRESS2_RE = re.compile(rb"\s*([\d,]+)\s+\d+%\s")


def _text(data):
    if data is None:
        return ""
    return data.decode("utf-8", errors="replace")


class LocalTransport(Transport):
    def run(self, argv, *, input=None, timeout=None, check=True) -> CommandResult:
        try:
            return self._run_argv(list(argv), argv, input, timeout, check)
        except FileNotFoundError as exc:
            result = CommandResult(list(argv), 127, "", str(exc), 0.0)
            if check:
                raise CommandFailed(result, self.describe()) from None
            return result

    def describe(self):
        return "local"

    def open(self, argv):
        return self._open_argv(list(argv), argv)

    def rsync(self, src_dir, dest_dir, link_dest=None, delete=True, progress=None):
        argv = _rsync_argv(src_dir, dest_dir, link_dest, delete, progress=progress is not None)
        return self._rsync_counting(argv, argv, progress) if progress else self.run(argv)

    def send_file(self, local_path, remote_path):
        return self.run(["rsync", "-a", "--mkpath", "--", local_path, remote_path])


def _rsync_argv(src_dir, dest, link_dest, delete, ssh_cmd=None, progress=False):
    # --checksum: release files are unpacked with one fixed mtime, so rsync's
    # size+mtime check would call two different files of equal size the same
    # (and hard-link the old one). --stats: the bytes sent, for the job's events.
    # --mkpath: the destination's missing parents are made, without an ssh round trip of their own.
    # --no-owner --no-group --chmod=go-w: the release belongs to the node's ssh user (root), whoever
    # owned the files on the control plane, and no app's user can write into it.
    # --no-times: the archive's mtimes are all 0 (nginx would say Last-Modified 1970); a file written
    # gets the time it reached the node, an unchanged one stays a hard link with its first time.
    argv = ["rsync", "-a", "--no-times", "--no-owner", "--no-group", "--chmod=go-w", "--checksum", "--stats",
            "--mkpath"]
    if delete:
        argv.append("--delete")
    if link_dest:
        argv.append("--link-dest=" + link_dest)
    if progress:  # the whole transfer's bytes so far, on one line rewritten with \r
        argv.append("--info=progress2")
    if ssh_cmd:
        argv += ["-e", ssh_cmd]
    # Trailing slashes: copy the contents of src into dest, not src itself.
    return argv + ["--", src_dir.rstrip("/") + "/", dest.rstrip("/") + "/"]


# ssh's own failures (exit 255) as opposed to a remote command exiting 255.
_SSH_ERROR_RE = re.compile(
    r"^ssh: |kex_exchange_identification|Connection (closed|reset|timed out|refused)|"
    r"Permission denied \(|Bad owner|Load key|Identity file .* not accessible|"
    r"mux_client|Control ?socket|ControlPath|Could not resolve|banner exchange|"
    r"Received disconnect|Disconnected from|No route to host|Network is unreachable",
    re.MULTILINE | re.IGNORECASE,
)
_HOST_KEY_RE = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed")


class SSHTransport(Transport):
    def __init__(self, address, port, user, host_key, identity_file, control_dir,
                 connect_timeout=10, node=None):
        self.address = validate_address(address)
        self.port = validate_port(port, "ssh_port")
        self.host_key = validate_host_key(host_key)
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", user or ""):
            raise ValueError(f"ssh_user {user!r} is invalid: it must be a Unix user name")
        self.user = user
        self.identity_file = identity_file
        self.connect_timeout = connect_timeout
        self.node = node
        os.makedirs(control_dir, mode=0o700, exist_ok=True)
        # The pinned key is part of the name, so a re-pinned node never reuses
        # a master that was authenticated against the old key.
        ident = hashlib.sha256(
            "\0".join([user, self.address, str(self.port), self.host_key]).encode()
        ).hexdigest()[:16]
        self.control_path = os.path.join(control_dir, ident)
        if len(self.control_path) > 100:
            # ssh appends a random suffix while creating the socket; unix
            # socket paths are limited to 108 bytes.
            raise ValueError(f"control_dir {control_dir!r} is too long for ssh control sockets")
        self.known_hosts = self.control_path + ".known_hosts"
        # ssh looks a host on the default port up without brackets.
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        _write_if_changed(self.known_hosts, f"{host} {self.host_key}\n")

    def describe(self):
        return f"{self.address}:{self.port}"

    def ssh_options(self):
        """The ssh argv without destination; shared by run, rsync and close."""
        return [
            "ssh",
            "-F", "none",  # no user/system ssh_config: behave the same everywhere
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "UpdateHostKeys=no",
            "-o", "CheckHostIP=no",
            "-o", "IdentitiesOnly=yes",
            # AES-GCM first: with AES instructions (any server CPU of the last decade)
            # it moves backups and uploads at less CPU than ssh's default.
            "-o", "Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self.control_path}",
            # Longer than a minute: an every-minute cron entry finds the connection still open.
            "-o", "ControlPersist=300",
            "-o", f"ConnectTimeout={int(self.connect_timeout)}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
            "-i", self.identity_file,
            "-p", str(self.port),
            "-l", self.user,
        ]

    def run(self, argv, *, input=None, timeout=None, check=True) -> CommandResult:
        if not argv:
            raise ValueError("argv must not be empty")
        local = self.ssh_options() + ["--", self.address, shlex.join(argv)]
        return self._run_argv(local, argv, input, timeout, check)

    def open(self, argv):
        if not argv:
            raise ValueError("argv must not be empty")
        return self._open_argv(self.ssh_options() + ["--", self.address, shlex.join(argv)], argv)

    def _check_transport(self, result):
        if result.rc != 255:
            return
        if _HOST_KEY_RE.search(result.stderr):
            node = self.node or "NODE"
            raise HostKeyMismatch(
                f"the host at {self.describe()} presented a host key that does not "
                f"match the key pinned for it ({fingerprint(self.host_key)}). If the "
                f"host was really rebuilt, re-pin its key with `manage.py node "
                f"pin-key {node}`; otherwise someone may be intercepting the connection."
            )
        if _SSH_ERROR_RE.search(result.stderr):
            lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
            raise TransportError(f"cannot reach {self.describe()} over ssh: {' / '.join(lines[-3:])}")

    def rsync(self, src_dir, dest_dir, link_dest=None, delete=True, progress=None):
        """Copy the contents of local `src_dir` into `dest_dir` on the host (progress(bytes): how far it is)."""
        # rsync splits -e on whitespace honouring quotes, like a shell does.
        ssh_cmd = shlex.join(self.ssh_options())
        host = f"[{self.address}]" if ":" in self.address else self.address
        argv = _rsync_argv(src_dir, f"{host}:{dest_dir}", link_dest, delete, ssh_cmd, progress=progress is not None)
        # rsync >= 3.2.4 passes remote paths to the remote shell safely
        # (like --protect-args), so spaces or quotes in paths are fine.
        if progress:
            return self._rsync_counting(argv, argv, progress)
        return self._run_argv(argv, argv, None, None, True)

    def send_file(self, local_path, remote_path):
        """Copy one local file to `remote_path` on the host (its directory is made)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        argv = ["rsync", "-a", "--mkpath", "-e", shlex.join(self.ssh_options()), "--", local_path,
                f"{host}:{remote_path}"]
        return self._run_argv(argv, argv, None, None, True)

    def close(self):
        if os.path.exists(self.control_path):
            subprocess.run(
                self.ssh_options() + ["-O", "exit", "--", self.address],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
            )
            # The master removes its socket just after answering; wait for
            # it so that the next run surely opens a fresh connection.
            deadline = time.monotonic() + 3
            while os.path.exists(self.control_path) and time.monotonic() < deadline:
                time.sleep(0.02)


def _write_if_changed(path, text):
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def transport_for(spec: dict) -> Transport:
    kind = spec.get("transport", "ssh")
    if kind == "local":
        return LocalTransport()
    if kind != "ssh":
        raise ValueError(f"transport {kind!r} is invalid: use 'local' or 'ssh'")
    return SSHTransport(
        spec["address"], spec.get("ssh_port", 22), spec.get("ssh_user", "root"),
        spec["host_key"], spec["identity_file"], spec["control_dir"],
        connect_timeout=spec.get("connect_timeout", 10), node=spec.get("name"),
    )


def scan_host_key(address: str, port: int, timeout: float = 5) -> str:
    """Ask the host for its ed25519 key (trust on first use); 'type base64'."""
    address = validate_address(address)
    port = validate_port(port, "ssh_port")
    try:
        proc = subprocess.run(
            ["ssh-keyscan", "-T", str(int(timeout)), "-t", "ed25519", "-p", str(port), "--", address],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout + 5,
        )
    except subprocess.TimeoutExpired:
        raise TransportError(f"cannot scan the host key of {address}:{port}: timed out") from None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            return validate_host_key(f"{parts[1]} {parts[2]}")
    why = proc.stderr.strip().splitlines()[-1:] or ["no ed25519 key offered"]
    raise TransportError(f"cannot scan the host key of {address}:{port}: {why[0]}")
