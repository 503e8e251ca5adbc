"""Data services on a node (PostgreSQL databases, files directories) and moving their data:
backup into an archive, restore from one, clear.

The work happens on the node, in node_data, sent as a program; these
functions run it over a transport and report through `emit`. Secrets travel
on stdin, never in argv, and the events name the program, not its source.

A spec says where one app's data is on the node:
    postgresql: {"version": "15", "port": 5433, "dbname": "blog", "role": "blog"}
    files:      {"dir": "/srv/toppcloud/apps/blog/files"}
    writable:   {"dir": "/srv/toppcloud/apps/blog/writable", "names": ["docs", "uploads"]}
                (app.ini writable_static_files; a backup holds every <name>/ in dir)
"""

import base64
import hashlib
import hmac
import json
import os
import posixpath
import shutil
import tempfile
import threading
from urllib.parse import quote

from . import progress
from .hostside import node_data
from .appini import WRITABLE_NAME_RE, writable_env_name
from .hostside.node_data import FILES, SQL, WRITABLE, DataError
from .release import PYTHON
from .validate import validate_address, validate_name, validate_port

_SOURCE = open(node_data.__file__, encoding="utf-8").read()


def _argv(command, spec):
    return [PYTHON, "-I", "-c", _SOURCE, command, json.dumps(spec, sort_keys=True)]


def _emit_command(emit, command, spec, r):
    emit("command", step=command, argv=["node_data", command, json.dumps(spec, sort_keys=True)], rc=r.rc,
         stdout=r.stdout, stderr=r.stderr, seconds=round(r.seconds, 3))


def _call(t, emit, command, spec, *, input=None, timeout=900):
    r = t.run(_argv(command, spec), input=input, check=False, timeout=timeout)
    _emit_command(emit, command, spec, r)
    if r.rc != 0:
        raise DataError(r.stderr.strip()[-1500:] or f"node_data {command} exited {r.rc}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- installing services ----------------------------------------------------------

def ensure_cluster(t, emit, *, cluster, port, listen) -> dict:
    """The node's PostgreSQL cluster for apps: created, listening on `listen`, running. {version, changed}."""
    spec = {"cluster": validate_name(cluster, "pg_cluster"), "port": validate_port(port, "pg_port"),
            "listen": validate_address(listen)}
    return _call(t, emit, "pg-ensure", spec)


def ensure_database(t, emit, pg, password) -> list:
    """The app's role with this password, and its database owned by it; what changed."""
    verifier = scram_verifier(password)
    return _call(t, emit, "pg-app", pg, input=(verifier + "\n").encode())["changed"]


def ensure_files(t, emit, directory) -> list:
    return _call(t, emit, "files-ensure", {"dir": directory})["changed"]


def writable_spec(writable_dir, names) -> dict:
    """The spec of an app's writable static directories: <writable_dir>/<name> of each name."""
    for name in names:
        if not isinstance(name, str) or not WRITABLE_NAME_RE.fullmatch(name) or name == "static":
            raise ValueError(f"writable static directory {name!r} is invalid: use 1 to 40 characters a-z, 0-9, "
                             "'_' and '-', starting with a letter or digit")
    return {"dir": writable_dir, "names": list(names)}


def ensure_writable(t, emit, spec) -> list:
    """The writable static directories exist (0755); their content is never touched. What changed."""
    return _call(t, emit, "writable-ensure", spec)["changed"]


def writable_env(spec) -> dict:
    """$CONFIG_WRITABLE_<NAME> of each writable static directory: its path on the node."""
    return {writable_env_name(name): posixpath.join(spec["dir"], name) for name in spec["names"]}


def scram_verifier(password, iterations=4096):
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677), so the
    password itself never reaches the node's server, its logs or its errors.

    The salt is derived from the password: the same password gives the same
    verifier, so an unchanged password is not written again.
    """
    salt = hmac.new(password.encode(), b"toppcloud scram salt", hashlib.sha256).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _pg_url(pg, host, port, password):
    host_in_url = f"[{host}]" if ":" in host else host
    return (f"postgres://{quote(pg['role'], safe='')}:{quote(password, safe='')}@"
            f"{host_in_url}:{port}/{quote(pg['dbname'], safe='')}")


def service_env(*, pg=None, host=None, password=None, files_dir=None, replica=None) -> dict:
    """The variables an app reads its services from.

    pg: DATABASE_URL and CONFIG_PG_* of the primary (read-write). replica: (host, port) of a
    streaming replica of it: DATABASE_REPLICA_URL and CONFIG_PG_REPLICA_* (read-only; the same
    role, password and database, which physical replication copies).
    """
    env = {}
    if pg:
        env.update({
            "CONFIG_PG_DBNAME": pg["dbname"],
            "CONFIG_PG_USER": pg["role"],
            "CONFIG_PG_PASSWORD": password,
            "CONFIG_PG_HOST": host,
            "CONFIG_PG_PORT": str(pg["port"]),
            "DATABASE_URL": _pg_url(pg, host, pg["port"], password),
        })
    if pg and replica:
        replica_host, replica_port = replica
        env.update({
            "CONFIG_PG_REPLICA_DBNAME": pg["dbname"],
            "CONFIG_PG_REPLICA_USER": pg["role"],
            "CONFIG_PG_REPLICA_PASSWORD": password,
            "CONFIG_PG_REPLICA_HOST": replica_host,
            "CONFIG_PG_REPLICA_PORT": str(replica_port),
            "DATABASE_REPLICA_URL": _pg_url(pg, replica_host, replica_port, password),
        })
    if files_dir:
        env["CONFIG_FILES"] = files_dir
    return env


# --- streaming replication ------------------------------------------------------
#
# A cluster spec here: {"version": "15", "port": 5433, "cluster": "toppcloud"}. The replication role's
# password travels on stdin: to the primary as its SCRAM verifier, to the replica (its passfile) as is.

REPLICATION_ROLE = "toppcloud_replication"


def slot_name(node_name) -> str:
    """The primary's physical replication slot for a replica node, also the replica's application_name
    (what synchronous_standby_names lists): toppcloud_<node name, '-' as '_'>. A name that would pass
    PostgreSQL's 63 characters keeps its first 44 and a hash of the whole."""
    name = "toppcloud_" + validate_name(node_name, "node name").replace("-", "_")
    if len(name) > 63:
        name = name[:53] + "_" + hashlib.sha256(node_name.encode()).hexdigest()[:9]
    return name


def _cluster_spec(spec):
    return {"version": str(spec["version"]), "port": validate_port(spec["port"], "pg_port"),
            "cluster": validate_name(spec["cluster"], "pg_cluster")}


def ensure_primary(t, emit, spec, password, *, slot, addresses) -> list:
    """The primary can feed replicas: replication settings, the replication role with this password, the
    replica's slot, a pg_hba replication line for each replica address (all of the group's). What changed."""
    full = {**_cluster_spec(spec), "role": REPLICATION_ROLE, "slot": slot,
            "addresses": [validate_address(a) for a in addresses]}
    return _call(t, emit, "pg-primary", full, input=(scram_verifier(password) + "\n").encode())["changed"]


def ensure_standby(t, emit, spec, password, *, slot, primary_host, primary_port) -> dict:
    """The cluster streams from the primary through `slot`: left alone if it does already, else cloned
    (pg_basebackup -R -X stream -c fast) and started. {changed, cloned, basebackup_seconds?}."""
    full = {**_cluster_spec(spec), "role": REPLICATION_ROLE, "slot": slot,
            "primary_host": validate_address(primary_host), "primary_port": validate_port(primary_port, "pg_port")}
    return _call(t, emit, "pg-standby", full, input=(_password_line(password)), timeout=3600)


def standby_status(t, emit, spec) -> dict:
    """A replica as it sees itself: running, in_recovery, receiver {status, slot_name, sender_host, ...},
    last_replay_s (seconds since the last transaction it replayed was committed on the primary)."""
    return _call(t, emit, "pg-standby-status", _cluster_spec(spec))


def replication_status(t, emit, spec) -> dict:
    """The primary's view of its replicas: {"replicas": [{application_name, state, sync_state,
    lag_bytes, lag_seconds, ...}], "slots": [...], "synchronous_standby_names", "current_lsn"}.

    lag_bytes: WAL the replica has not replayed yet (pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn));
    lag_seconds: replay_lag, which PostgreSQL leaves empty once the replica has caught up and
    nothing is written: 0 then.
    """
    status = _call(t, emit, "pg-replication", _cluster_spec(spec))
    for replica in status.get("replicas", []):
        lag = replica.get("replay_lag_s")
        replica["lag_seconds"] = round(lag, 3) if lag is not None else (0.0 if replica["lag_bytes"] == 0 else None)
    return status


def set_sync_standbys(t, emit, spec, names) -> dict:
    """synchronous_standby_names = 'FIRST 1 (names)' on the primary (conf.d, reloaded), or none for [].
    Only name replicas that stream: with none streaming, every commit would wait. {changed, synchronous_standby_names}."""
    return _call(t, emit, "pg-sync-standbys", {**_cluster_spec(spec), "names": list(names)})


# --- moving data ------------------------------------------------------------------

def dump_into(emit, writer, dumps, password=None) -> dict:
    """Stream members from nodes into an ArchiveWriter; `dumps` is [(transport, member, spec)] in archive order.

    All dumps run at once: the first streams into the archive, the others
    into temporary files here until their turn. The database is read as the
    app's role: `password` is its password (on the program's stdin).
    """
    line = _password_line(password)
    streams = [(t, member, spec, t.open(_argv(_DUMP[member], spec))) for t, member, spec in dumps]
    for _t, member, _spec, stream in streams:
        if member == SQL:
            _send(stream, line)
    spools, threads = {}, []
    for _t, member, _spec, stream in streams[1:]:
        spools[member] = tempfile.SpooledTemporaryFile(max_size=64 << 20)
        threads.append(threading.Thread(target=shutil.copyfileobj, args=(stream.stdout, spools[member], 1 << 20),
                                        daemon=True))
        threads[-1].start()
    infos = {}
    bar = progress.Progress(emit, "backup", "bytes")  # the archive's bytes as they arrive
    try:
        for i, (t, member, spec, stream) in enumerate(streams):
            if i:
                threads[i - 1].join()
                spools[member].seek(0)
            if member == SQL:
                bar.rows = progress.CopyRows()
            counted = progress.CountingReader(spools[member] if i else stream.stdout, bar,
                                              bar.rows if member == SQL else None)
            infos[member] = writer.add(member, counted)
            r = stream.finish(check=False)
            _emit_command(emit, _DUMP[member], spec, r)
            if r.rc != 0:
                raise DataError(r.stderr.strip()[-1500:] or f"node_data {_DUMP[member]} exited {r.rc}")
            emit("backup.member", member=member, size=infos[member]["size"], sha256=infos[member]["sha256"],
                 seconds=round(r.seconds, 3))
    except BaseException:
        for *_, stream in streams:
            stream.kill()
        raise
    finally:
        for spool in spools.values():
            spool.close()
    bar.finish()
    return infos


_DUMP = {SQL: "dump-sql", FILES: "dump-files", WRITABLE: "dump-writable"}


def _password_line(password):
    """The app role's password as the first line of a node program's stdin (never argv, never an event)."""
    if password and ("\n" in password or "\0" in password):
        raise DataError("a database password cannot hold a newline or a NUL")
    return (password or "").encode() + b"\n"


def _send(stream, line):
    try:
        stream.stdin.write(line)
        stream.stdin.flush()
    except (OSError, ValueError):
        pass  # the program already ended: its error says why


def restore(t, emit, archive_path, *, postgresql=None, password=None, files=None, writable=None, tmp=None,
            gate=None) -> dict:
    """Restore an archive (already verified here) into the node's services named by the specs;
    the database is loaded as the app's role, logged in with `password`.

    The archive goes to the node whole first (its members into a temporary
    directory under `tmp`, each hashed on arrival); the node stages
    everything beside the live data; only then does this side tell it to swap. If this
    process dies before that, the node drops what it staged. The app's requests on
    the node wait at its request `gate` (NodeLayout.request_gate) while the swap happens.
    """
    spec = {"size": os.path.getsize(archive_path), "postgresql": postgresql, "files": files, "writable": writable,
            "tmp": tmp, "gate": gate}
    line = _password_line(password if postgresql else None)
    stream = t.open(_argv("restore", spec))

    bar = progress.Progress(emit, "restore", "bytes", total=spec["size"])  # sent to the node, with an estimate

    def feed():
        try:
            stream.stdin.write(line)
            with open(archive_path, "rb") as f:
                while chunk := f.read(node_data.CHUNK):
                    stream.stdin.write(chunk)
                    bar.add(len(chunk), emit=False)  # counted here, emitted by the job's own thread
            stream.stdin.flush()
        except (OSError, ValueError):
            pass  # the node stopped reading: its error says why

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        while feeder.is_alive():
            feeder.join(progress.INTERVAL)
            bar.tick()
        bar.finish()
        loading = progress.Progress(emit, "restore", "rows")  # the node loads the rows while we wait for `staged`
        received = stream.stdout.readline()
        if received:
            emit("restore.received", **json.loads(received))
        staged = received and stream.stdout.readline()
        if staged:
            staged = json.loads(staged)
            emit("restore.staged", **staged)
            rows = (staged["staged"].get("postgresql") or {}).get("rows")
            if rows is not None:  # the rows loaded into the staging database, and how fast, for the follower
                loading.total = rows
                loading.finish(rows)
            stream.stdin.write(b"swap\n")
            stream.stdin.flush()
            out = stream.stdout.read()
    except BaseException:
        stream.kill()
        raise
    r = stream.finish(check=False)
    _emit_command(emit, "restore", spec, r)
    if r.rc != 0 or not staged:
        raise DataError(r.stderr.strip()[-1500:] or f"node_data restore exited {r.rc}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    emit("restore.swapped", services=result["swapped"], held=result["held"])
    return result


def clear(t, emit, *, postgresql=None, files=None, writable=None, gate=None) -> dict:
    """Replace the app's database, files directory and writable static directories with empty ones
    (each swapped in at once, the app's requests held at its `gate` meanwhile, as for a restore)."""
    return _call(t, emit, "clear", {"postgresql": postgresql, "files": files, "writable": writable, "gate": gate})
