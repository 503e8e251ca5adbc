"""App data on a node, and the backup archive format.

This module runs in two places: the control plane imports it to write and
check archives, and nodes run it as a program (its source is sent as
`python3 -I -c SOURCE COMMAND SPEC`). So: the standard library only, and no
import of the rest of nodeops.

Commands on the node (SPEC is one JSON argument; secrets come on stdin,
never in argv):

    pg-ensure     the node's PostgreSQL cluster exists, listens where it should, runs
    pg-app        the app's role (password verifier on stdin) and database exist
    files-ensure  the app's files directory exists
    writable-ensure  the app's writable static directories exist (never emptied)
    dump-sql      the app's database as ordered plain SQL, on stdout (the role's password on stdin)
    dump-files    the app's files directory as a deterministic tar, on stdout
    dump-writable the app's writable directory (every <name>/ in it), the same way
    restore       read an archive on stdin (after the role's password), stage and verify it, swap it in when told
    clear         replace the app's database, files and writable directories with empty ones
    pg-primary    the cluster can feed replicas: replication settings, role (verifier on stdin), slot, pg_hba
    pg-standby    the cluster is a streaming replica of a primary (pg_basebackup -R; password on stdin)
    pg-replication  on a primary: its replicas as pg_stat_replication and its slots show them, with the lag
    pg-standby-status  on a replica: in recovery, what its WAL receiver streams, replay lag
    pg-sync-standbys  synchronous_standby_names of the primary (FIRST 1 of the names, or none)

A backup archive is an uncompressed tar holding, in this order:

    postgresql.sql  (service.postgresql) schema; each table's rows in primary-key
                    order; sequence values; then indexes, constraints, triggers
    files.tar       (service.files) the files directory: sorted names, mtime 0, owner 0
    writable.tar    (writable_static_files) <root>/apps/<app>/writable/ the same way:
                    <name>/... of every writable static directory
    manifest.json   what the archive is, and the sha256 and size of every member

Every member has mtime 0 and owner 0, so the same data always gives the same
bytes but for the manifest's created_at, and a changed row is a changed line.
"""

import ctypes
import fcntl
import glob
import hashlib
import json
import mmap
import os
import posixpath
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager

FORMAT = "toppcloud-backup/1"
SQL, FILES, WRITABLE, MANIFEST = "postgresql.sql", "files.tar", "writable.tar", "manifest.json"
MEMBERS = (SQL, FILES, WRITABLE)  # in archive order; the manifest comes last
# "writable" is not an app.ini service.NAME, but its data move like one.
SERVICE_MEMBER = {"postgresql": SQL, "files": FILES, "writable": WRITABLE}
# A writable static directory's name (nodeops.appini.WRITABLE_NAME_RE; this module imports nothing of nodeops).
_WRITABLE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
MAX_MANIFEST = 1 << 20
CHUNK = 1 << 20
_WRITEBACK = 16 << 20
STAGING, OLD = "__restore", "__old"  # suffixes; app names cannot contain '_'
# Streaming replication's files in a cluster's configuration directory (/etc/postgresql/V/C/).
REPLICATION_CONF = "conf.d/toppcloud-replication.conf"  # the same on a primary and its replicas
SYNC_CONF = "conf.d/toppcloud-sync.conf"  # synchronous_standby_names, on a primary
REPLICAS_FILE = "toppcloud-replicas.json"  # the replication role and its replicas' addresses (pg_hba lines)
PASSFILE = "toppcloud-replication.pgpass"  # on a replica: the replication role's password (0600)
OUR_CONF_FILES = ("conf.d/toppcloud.conf", REPLICATION_CONF, SYNC_CONF, REPLICAS_FILE, PASSFILE)
_SLOT_RE = re.compile(r"[a-z0-9_]{1,63}")


class DataError(Exception):
    """The data, an archive or a data service cannot be used; the message says why."""


# --- the archive --------------------------------------------------------------

def _header(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # GNU format: sizes over 8 GiB still fit in the one 512-byte header.
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")


class _Hashing:
    """A reader that counts and hashes what passes through it (up to `limit` bytes, if given)."""

    def __init__(self, raw, limit=None, hash=True):
        self.raw, self.limit = raw, limit
        self.size, self.sha = 0, hashlib.sha256() if hash else None

    def read(self, n=-1):
        if self.limit is not None:
            left = self.limit - self.size
            n = left if n is None or n < 0 else min(n, left)
            if n <= 0:
                return b""
        data = self.raw.read(n)
        self.size += len(data)
        if self.sha is not None:
            self.sha.update(data)
        return data

    def drain(self):
        while self.read(CHUNK):
            pass


class ArchiveWriter:
    """Write an archive to a seekable binary file, one member at a time.

    A member's size is known only once it has been copied (it streams from
    a node), so its header is written again, with the size, afterwards.
    """

    def __init__(self, f):
        self.f = f
        self.files = {}

    def add(self, name, reader):
        if name not in MEMBERS or name in self.files or any(MEMBERS.index(n) > MEMBERS.index(name) for n in self.files):
            raise ValueError(f"cannot add {name!r} after {sorted(self.files)}")
        start = self.f.tell()
        self.f.write(_header(name, 0))
        src = _Hashing(reader)
        flushed = start
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            self.f.write(chunk)
            if src.size - (flushed - start) >= _WRITEBACK:
                flushed = self._start_writeback(flushed)
        self.f.write(b"\0" * (-src.size % 512))
        end = self.f.tell()
        self.f.seek(start)
        self.f.write(_header(name, src.size))
        self.f.seek(end)
        self.files[name] = {"sha256": src.sha.hexdigest(), "size": src.size}
        return self.files[name]

    def _start_writeback(self, since):
        """Have the kernel start writing what is written so far to disk (sync_file_range,
        which keeps the pages cached), so the caller's final fsync has little left to wait for."""
        self.f.flush()
        now = self.f.tell()
        try:
            _sync_file_range(self.f.fileno(), since, now - since)
        except (AttributeError, OSError, ValueError):  # not a real file, or not Linux
            pass
        return now

    def finish(self, **fields):
        """Write manifest.json (fields + the members' checksums) and the end of the archive."""
        manifest = dict(fields, format=FORMAT, files=self.files)
        data = manifest_bytes(manifest)
        self.f.write(_header(MANIFEST, len(data)) + data + b"\0" * (-len(data) % 512))
        self.f.write(b"\0" * 1024)  # end-of-archive
        self.f.write(b"\0" * (-self.f.tell() % tarfile.RECORDSIZE))
        return manifest


def _sync_file_range(fd, offset, length):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    if libc.sync_file_range(fd, offset, length, 2) != 0:  # SYNC_FILE_RANGE_WRITE: start, don't wait
        raise OSError(ctypes.get_errno(), "sync_file_range")


def manifest_bytes(manifest):
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def read_archive(fileobj, on_member=None):
    """Read an archive stream, check everything; return its manifest.

    `on_member(name, reader)` may consume a member's data (reader.read);
    whatever it leaves is read here, so every member is hashed anyway.
    Raises DataError naming the first problem found.
    """
    seen, manifest_data = {}, None
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|", bufsize=CHUNK)
        for member in tar:
            name = member.name
            if manifest_data is not None:
                raise DataError(f"{name!r} follows {MANIFEST}, which must be the last member")
            if name in seen:
                raise DataError(f"{name!r} is in the archive twice")
            if name not in (*MEMBERS, MANIFEST):
                raise DataError(f"unexpected member {name!r}: a backup holds only "
                                  f"{', '.join(MEMBERS)} and {MANIFEST}")
            if not member.isreg():
                raise DataError(f"member {name!r} is not a regular file")
            if name == MANIFEST:
                if member.size > MAX_MANIFEST:
                    raise DataError(f"{MANIFEST} is {member.size} bytes, more than a manifest can be")
                manifest_data = tar.extractfile(member).read()
                continue
            if seen and MEMBERS.index(name) < max(MEMBERS.index(n) for n in seen):
                raise DataError(f"members are out of order: {name!r} after {', '.join(seen)}")
            reader = _Hashing(tar.extractfile(member))
            if on_member is not None:
                on_member(name, reader)
            reader.drain()
            seen[name] = {"sha256": reader.sha.hexdigest(), "size": reader.size}
    except tarfile.TarError as exc:
        if "unexpected end" in str(exc):
            raise DataError("the archive ends in the middle of a member (truncated)") from None
        raise DataError(f"not a readable backup archive: {exc}") from None
    except EOFError:
        raise DataError("the archive ends in the middle of a member (truncated)") from None
    if manifest_data is None:
        raise DataError(f"the archive has no {MANIFEST}" + (" (truncated?)" if seen else ""))
    return check_manifest(manifest_data, seen)


def check_manifest(data, seen):
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{MANIFEST} does not describe a {FORMAT} archive")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise DataError(f"{MANIFEST} has no files table")
    for name in files:
        if name not in seen:
            raise DataError(f"{MANIFEST} lists {name!r} but the archive has no such member")
    for name, got in seen.items():
        want = files.get(name)
        if not isinstance(want, dict):
            raise DataError(f"{name!r} is in the archive but not in {MANIFEST}")
        if want.get("size") != got["size"]:
            raise DataError(f"{name!r} is {got['size']} bytes; {MANIFEST} says {want.get('size')}")
        if want.get("sha256") != got["sha256"]:
            raise DataError(f"{name!r} does not match its sha256 in {MANIFEST} "
                              f"(got {got['sha256'][:16]}..., expected {str(want.get('sha256'))[:16]}...)")
    services = manifest.get("services")
    if not isinstance(services, list) or any(SERVICE_MEMBER.get(s) not in files for s in services):
        raise DataError(f"{MANIFEST} names services {services!r} that do not match its members")
    return manifest


def read_manifest(path):
    """The manifest of a stored archive and its members' sizes, found by seeking (no data is read)."""
    try:
        with tarfile.open(path, "r:") as tar:
            found = {m.name: m for m in tar.getmembers()}
            if MANIFEST not in found or found[MANIFEST].size > MAX_MANIFEST:
                raise DataError(f"the archive has no {MANIFEST}")
            data = tar.extractfile(found[MANIFEST]).read()
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"not a readable backup archive: {exc}") from None
    return data, {name: m.size for name, m in found.items() if name != MANIFEST}


def verify_archive(path):
    """Check a stored archive, reading it once; its manifest, or DataError.

    files.tar and writable.tar are also opened and every entry checked, as a restore would.
    """
    def check(name, reader):
        if name in (FILES, WRITABLE):
            for _ in _file_entries(reader, name):
                pass

    with open(path, "rb") as f:
        return read_archive(f, check)


# --- files ---------------------------------------------------------------------

def pack_files(directory, out, top=None):
    """Write `directory` as a tar to `out`: names sorted, mtime 0, owner 0.

    Only directories and regular files; anything else (links, sockets) is
    left out and returned, as is every entry at the top that `top(name, is_dir)` refuses.
    """
    entries, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(directory):
        rel_dir = os.path.relpath(dirpath, directory)
        if rel_dir == "." and top is not None:
            for names, is_dir in ((dirnames, True), (filenames, False)):
                skipped += [n for n in names if not top(n, is_dir)]
                names[:] = [n for n in names if top(n, is_dir)]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                entries.append((rel, path, st))
            else:
                skipped.append(rel)  # os.walk does not descend into a link to a directory either
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT)
    for rel, path, st in sorted(entries):
        info = tarfile.TarInfo(rel)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = st.st_mode & 0o777
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        else:
            info.size = st.st_size
            with open(path, "rb") as f:
                tar.addfile(info, f)
    tar.close()
    return sorted(skipped)


def _file_entries(reader, member=FILES):
    """Each (name, member, tar) of a files.tar (or writable.tar) stream, checked: no absolute paths,
    no '..', files and dirs only; in writable.tar, everything inside a directory named like a
    writable static directory."""
    names = set()
    where = "the files directory" if member == FILES else "a writable static directory"
    try:
        tar = tarfile.open(fileobj=reader, mode="r|")
        for m in tar:
            name = m.name
            norm = posixpath.normpath(name)
            if (not name or "\0" in name or name.startswith("/") or norm in (".", "..")
                    or norm.startswith("../") or ".." in name.split("/")):
                raise DataError(f"{member} member {name!r} is not allowed: paths must stay inside {where}")
            if not (m.isreg() or m.isdir()):
                raise DataError(f"{member} member {name!r} is a {_kind(m)}; only files and directories are restored")
            if member == WRITABLE and not (_WRITABLE_NAME_RE.fullmatch(norm.split("/")[0])
                                           and (m.isdir() or "/" in norm)):
                raise DataError(f"{member} member {name!r} is not allowed: everything in it is inside "
                                "<name>/, a writable static directory's name")
            if norm in names:
                raise DataError(f"{member} member {name!r} is there twice")
            names.add(norm)
            yield norm, m, tar
    except tarfile.TarError as exc:
        raise DataError(f"{member} is not a readable tar: {exc}") from None


def _kind(m):
    if m.issym():
        return "symbolic link"
    if m.islnk():
        return "hard link"
    if m.isdev():
        return "device"
    if m.isfifo():
        return "fifo"
    return "special member"


def unpack_files(reader, dest, member=FILES):
    """Extract a files.tar (or writable.tar) stream into `dest` (which must not exist), checking every entry.

    Only directories and regular files are made, and every name was checked
    to stay inside, so nothing can be written outside `dest`.
    """
    os.mkdir(dest, 0o755)
    count = size = 0
    try:
        for name, m, tar in _file_entries(reader, member):
            path = os.path.join(dest, name)
            if m.isdir():
                os.makedirs(path, exist_ok=True)
                os.chmod(path, (m.mode & 0o777) | 0o700)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "xb") as f:
                shutil.copyfileobj(tar.extractfile(m), f, CHUNK)
            os.chmod(path, (m.mode & 0o777) | 0o600)
            count += 1
            size += m.size
    except OSError as exc:
        raise DataError(f"{member} cannot be unpacked: {exc}") from None
    return {"files": count, "bytes": size}


# --- PostgreSQL -------------------------------------------------------------------

# Each ordinary table of the app (not the system's, not an extension's):
# [COPY header a restore reads its rows with, select list, qualified name,
# ORDER BY (primary key; whole-row text order without one), the primary key
# column when it is a single integer (its rows can be read in ranges),
# estimated rows]. PostgreSQL quotes the names itself.
_TABLES_SQL = r"""
SELECT coalesce(json_agg(json_build_array(
         format('COPY %I.%I (%s) FROM stdin;', n.nspname, c.relname, cols.list), cols.list,
         format('%I.%I', n.nspname, c.relname), coalesce(pk.list, 'toppcloud_row_::text'),
         CASE WHEN pk.n = 1 AND pk.int THEN pk.list END, c.reltuples::bigint)
       ORDER BY n.nspname, c.relname), '[]')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
  SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) AS list
  FROM pg_attribute a
  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') cols
LEFT JOIN LATERAL (
  SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord) AS list, count(*) AS n,
         bool_and(a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)) AS int
  FROM pg_index i
  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
  WHERE i.indrelid = c.oid AND i.indisprimary) pk ON true
WHERE c.relkind = 'r' AND cols.list IS NOT NULL
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e');
"""

_SEQUENCES_SQL = r"""
SELECT coalesce(json_agg(format('SELECT pg_catalog.setval(%L, %s, %s);',
                                format('%I.%I', s.schemaname, s.sequencename),
                                coalesce(s.last_value, s.start_value), (s.last_value IS NOT NULL)::text)
                         ORDER BY s.schemaname, s.sequencename), '[]')
FROM pg_sequences s
WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = format('%I.%I', s.schemaname, s.sequencename)::regclass AND d.deptype = 'e');
"""

# pg_dump >= 15.14 brackets its output with \restrict KEY ... \unrestrict KEY;
# with a fixed key the lines are dropped, so the dump stays byte-stable and
# holds no psql meta-command but the `\.` ending each table's rows.
_RESTRICT_KEY = "toppcloud"
_DUMP_FLAGS = ["--no-owner", "--no-privileges", "--no-tablespaces", "--no-publications",
               "--no-subscriptions", "--no-security-labels", f"--restrict-key={_RESTRICT_KEY}"]


class _Pg:
    """One cluster on this node, over its local socket: as the postgres superuser, or (login())
    as an app's own role with its password.

    The superuser runs only toppcloud's own statements, in the `postgres`
    database, on databases and roles: nothing there can call an app's code.
    Whatever reads or writes an app's database (dump, restore, the archive's
    SQL) logs in as the app's role, so it can do no more than the app itself:
    no `RESET ROLE` back to a superuser, no COPY ... TO PROGRAM, no CREATE ROLE,
    and an app's function (a CHECK, an index expression, a shadowing
    quote_ident) runs with the app's rights only.
    """

    def __init__(self, spec, role=None, password=None):
        self.spec = spec
        self.version = str(spec["version"])
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", self.version):
            raise DataError(f"PostgreSQL version {self.version!r} is invalid")
        self.port = str(int(spec["port"]))
        self.bin = f"/usr/lib/postgresql/{self.version}/bin"
        self.role, self.env = role, None
        if role is not None:
            if not password:
                raise DataError(f"no password for role {role!r} came on stdin: the app's data are only "
                                "read and written as the app's own role")
            # In the environment of psql and pg_dump (readable by postgres and root only), never in argv.
            self.env = dict(os.environ, PGPASSWORD=password)

    def login(self, role, password):
        """The same cluster, reached as `role` with `password` (pg_hba: local samerole scram-sha-256)."""
        return _Pg(self.spec, role, password)

    def argv(self, program, *args):
        # The clients run as the postgres user even for an app's role: never as root, and \restrict
        # keeps the archive's text from psql's own commands.
        if self.role is None and program != "psql":
            raise DataError(f"{program} runs only as an app's role, never as the superuser")
        as_postgres = [] if os.geteuid() == _postgres_uid() else ["runuser", "-u", "postgres", "--"]
        who = [] if self.role is None else ["-U", self.role, "-w"]  # -w: a refused password fails, never prompts
        return [*as_postgres, f"{self.bin}/{program}", "-p", self.port, *who, *args]

    def psql(self, db, *args):
        if self.role is None and db != "postgres":
            # An app's database may hold its functions, and settings (ALTER DATABASE ... SET
            # search_path) that make them run: the superuser never enters one.
            raise DataError(f"the superuser connects only to the postgres database, not to {db!r}")
        return self.argv("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse", "-d", db, *args)

    def run(self, db, sql, *args):
        r = subprocess.run(self.psql(db, "-At", *args), input=sql.encode(), capture_output=True, env=self.env)
        if r.returncode != 0:
            raise DataError(f"psql on {db}: {r.stderr.decode(errors='replace').strip()[-1500:]}")
        return r.stdout.decode()

    def exists(self, db):
        return self.run("postgres", f"SELECT 1 FROM pg_database WHERE datname = {_lit(db)};\n").strip() == "1"


def _postgres_uid():
    import pwd
    try:
        return pwd.getpwnam("postgres").pw_uid
    except KeyError:
        raise DataError("there is no postgres user on this node: is PostgreSQL installed?") from None


def _lit(value):
    if "\0" in value:
        raise DataError("a NUL character cannot be part of an SQL literal")
    return "'" + value.replace("'", "''") + "'"


def _ident(value):
    return '"' + value.replace('"', '""') + '"'


# Comment lines that divide a dump into schema, rows and what comes after
# (indexes, constraints, triggers), so a restore can load rows in parallel.
ROWS_MARK = b"-- toppcloud: rows, each table in primary-key order\n"
POST_MARK = b"-- toppcloud: indexes, constraints and triggers\n"

# A table estimated to hold more rows than this is read in key ranges, one
# session per range, in parallel; the ranges are written out in order.
SPLIT_ROWS = 200_000


def dump_sql(spec, out, password):
    """Write the database as ordered plain SQL to the binary file `out`; one consistent snapshot.

    pg_dump writes the schema (before the rows) and the indexes and
    constraints (after them); the rows come from COPY in primary-key order.
    Several sessions read at once, all in the snapshot the first one holds.
    Every session is the app's own role: a superuser reading an app's
    objects would run whatever app code they call (CVE-2024-7348's kind).
    """
    pg, db = _Pg(spec).login(spec["role"], password), spec["dbname"]
    workers = max(1, min(4, os.cpu_count() or 1))
    holder = subprocess.Popen(pg.psql(db, "-At"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=pg.env)
    running = []
    try:
        def ask(sql):
            holder.stdin.write(sql.encode())
            holder.stdin.flush()
            line = holder.stdout.readline().decode().strip()
            if not line:
                holder.kill()
                raise DataError(f"cannot read {db}: {holder.stderr.read().decode(errors='replace').strip()[-1500:]}")
            return line

        snapshot = ask("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSELECT pg_export_snapshot();\n")
        tables, sequences = json.loads(ask(_TABLES_SQL)), json.loads(ask(_SEQUENCES_SQL))
        segments, current = [], []
        for header, cols, rel, order, int_pk, rows in tables:
            if any(c in header + rel + cols + order for c in "\n\r\\"):
                raise DataError(f"table {rel} has a newline or backslash in its name or a column's; "
                                "such names cannot be backed up")
            select = f"COPY (SELECT {cols} FROM ONLY {rel} AS toppcloud_row_{{}} ORDER BY {order}) TO STDOUT;"
            ranges = _ranges(ask, rel, int_pk, workers) if int_pk and rows > SPLIT_ROWS and workers > 1 else [""]
            current += [_echo(header), select.format(ranges[0])]
            for where in ranges[1:]:
                segments.append(current)
                current = [select.format(where)]
            current.append(_echo("\\.\n"))
        current += [_echo(line) for line in sequences] + [_echo("")]
        segments.append(current)

        dump = ["pg_dump", *_DUMP_FLAGS, f"--snapshot={snapshot}", "-d", db]
        pre = subprocess.Popen(pg.argv(*dump, "--section=pre-data"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=pg.env)

        def post_data():
            return subprocess.Popen(pg.argv(*dump, "--section=post-data"), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=pg.env)

        # With several sessions reading rows, the CPUs are busy until the first
        # of them ends: the post-data pg_dump waits for that.
        post = post_data() if len(segments) == 1 else None
        prelude = ["BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;", f"SET TRANSACTION SNAPSHOT {_lit(snapshot)};",
                   "SET enable_sort = off;",  # rows come in index order; a big sort would spill to disk
                   "SET row_security = off;"]  # a policy that would hide rows from the owner fails the dump instead

        def start(i, target):
            proc = subprocess.Popen(pg.psql(db, "-At"), stdin=subprocess.PIPE, stdout=target, stderr=subprocess.PIPE,
                                    env=pg.env)
            proc.stdin.write("\n".join(prelude + segments[i] + ["COMMIT;", ""]).encode())
            proc.stdin.close()
            running.append(proc)
            return proc

        # Every segment starts at once: the first into a pipe this process
        # copies to `out` once the schema is written there, the others (while
        # sessions are free) into temporary files, copied out in their turn.
        first = start(0, subprocess.PIPE)
        _grow_pipe(first.stdout)
        spooled, started = {}, 1

        def fill():
            nonlocal started
            while started < len(segments) and sum(p.poll() is None for p in running) < workers:
                spooled[started] = (tempfile.TemporaryFile(),)
                spooled[started] += (start(started, spooled[started][0]),)
                started += 1

        fill()
        out.write(_unrestricted(_finish(pre, "pg_dump (schema)")))
        out.write(b"--\n" + ROWS_MARK + b"--\n")
        for i in range(len(segments)):
            f, proc = spooled.pop(i) if i else (None, first)
            if f is None:
                shutil.copyfileobj(proc.stdout, out, CHUNK)
            err = proc.stderr.read()
            if proc.wait() != 0:
                raise DataError(f"reading the rows of {db} failed: {err.decode(errors='replace').strip()[-1500:]}")
            post = post or post_data()
            if f is not None:
                f.seek(0)
                shutil.copyfileobj(f, out, CHUNK)
                f.close()
            fill()
        out.write(b"--\n" + POST_MARK + b"--\n")
        out.write(_unrestricted(_finish(post, "pg_dump (indexes and constraints)")))
        out.flush()
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
        if holder.poll() is None:
            holder.stdin.close()
            holder.wait()
    return {"tables": len(tables), "sequences": len(sequences), "sessions": len(segments)}


def _grow_pipe(pipe):
    """A bigger pipe (1 MiB, the unprivileged maximum) lets a reader run ahead of its consumer."""
    try:
        import fcntl
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


def _ranges(ask, rel, pk, parts):
    """WHERE clauses splitting the table into `parts` ranges of its integer primary key."""
    low, high = json.loads(ask(f"SELECT json_build_array(min({pk}), max({pk})) FROM ONLY {rel};\n"))
    if low is None or high - low < parts:
        return [""]
    step = (high - low + 1) // parts
    bounds = [low + step * i for i in range(1, parts)]
    return ([f" WHERE {pk} < {bounds[0]}"]
            + [f" WHERE {pk} >= {a} AND {pk} < {b}" for a, b in zip(bounds, bounds[1:])]
            + [f" WHERE {pk} >= {bounds[-1]}"])


def _echo(text):
    """A query whose output (psql -At) is exactly `text` and a newline."""
    return f"SELECT {_lit(text)};"


def _finish(proc, what):
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise DataError(f"{what} failed: {err.decode(errors='replace').strip()[-1500:]}")
    return out


def _unrestricted(dump):
    return re.sub(rb"^\\(un)?restrict " + _RESTRICT_KEY.encode() + rb"\n", b"", dump, flags=re.MULTILINE)


def load_sql(pg, db, path, workers=None):
    """Load an archive's SQL file into `db` as the role `pg` logs in as (an app's: login()); psql
    may run no meta-command.

    Every psql session starts with `\\restrict` and a key the SQL cannot know,
    so a hostile archive cannot run `\\!` (a shell) or any other psql command
    on the node. A dump of ours is loaded in three phases: schema; rows, big
    tables split at line boundaries over parallel sessions; then indexes,
    constraints and sequences. Anything else loads in one session, in one
    transaction. (The database is a staging one: the swap makes it
    all-or-nothing.)

    Returns the rows the dump's COPY blocks held (None: not one of our dumps, loaded whole).
    """
    if os.path.getsize(path) == 0:
        return 0
    key = os.urandom(16).hex()
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        def session(pieces, *args):
            return _psql_feed(pg, db, key, mm, pieces, *args)

        plan = _load_plan(mm, workers)
        if plan is None:
            _psql_wait(session([(0, len(mm))], "--single-transaction"))
            return None
        schema, chunks, statements, rest = plan
        _psql_wait(session([schema]))
        sessions = [[] for _ in range(min(workers, len(chunks)))]
        for i, (header, rows) in enumerate(sorted(chunks, key=lambda c: c[1][0] - c[1][1])):  # biggest first
            sessions[i % len(sessions)] += [header, rows, b"\\.\n"]
        for proc in [session(pieces) for pieces in sessions]:
            _psql_wait(proc)
        _psql_wait(session(statements + [rest]))
        return sum(_lines(mm, start, end) for _, (start, end) in chunks)


def _lines(mm, start, end):
    """The newlines in mm[start:end], read a window at a time (a dump may be larger than memory)."""
    count = 0
    for at in range(start, end, _SPLIT_BYTES):
        count += mm[at:min(end, at + _SPLIT_BYTES)].count(b"\n")
    return count


_IDENT = rb'(?:"(?:[^"\n]|"")+"|[a-z_][a-z0-9_$]*)'
_COPY_HEADER_RE = re.compile(rb"COPY " + _IDENT + rb"\." + _IDENT + rb" \(" + _IDENT + rb"(?:, " + _IDENT
                             + rb")*\) FROM stdin;\n")
_SETVAL_RE = re.compile(rb"SELECT pg_catalog\.setval\('(?:[^'\n]|'')+', -?[0-9]+, (?:true|false)\);\n")
_SPLIT_BYTES = 8 << 20


def _load_plan(mm, workers):
    """(schema, [(COPY header, rows)], [setval statements], the rest) of one of our dumps, or None.

    Ranges of the file are (start, end) pairs. Only what our dumps hold
    between the marks is accepted there: COPY blocks with plain headers,
    setval() calls, comments and blank lines.
    """
    rows_at, post_at = mm.find(b"\n--\n" + ROWS_MARK), mm.find(b"\n--\n" + POST_MARK)
    if rows_at < 0 or post_at < rows_at:
        return None
    chunks, statements = [], []
    pos = rows_at + 1
    while pos < post_at + 1:
        eol = mm.find(b"\n", pos) + 1
        line = mm[pos:eol]
        if _COPY_HEADER_RE.fullmatch(line):
            start = eol
            end = start if mm[start:start + 3] == b"\\.\n" else mm.find(b"\n\\.\n", start) + 1
            if end <= 0 or end > post_at:
                return None
            chunks += [(line, piece) for piece in _split_lines(mm, start, end, workers)]
            pos = end + 3
        elif _SETVAL_RE.fullmatch(line):
            statements.append(line)
            pos = eol
        elif line == b"\n" or line.startswith(b"--"):
            pos = eol
        else:
            return None
    return (0, rows_at + 1), chunks, statements, (post_at + 1, len(mm))


def _split_lines(mm, start, end, parts):
    """[(lo, hi)] covering start..end in up to `parts` pieces that end at line ends."""
    if end - start < _SPLIT_BYTES or parts < 2:
        return [(start, end)]
    bounds, lo = [], start
    for i in range(1, parts):
        cut = mm.find(b"\n", start + (end - start) * i // parts) + 1
        if lo < cut < end:
            bounds.append((lo, cut))
            lo = cut
    return bounds + [(lo, end)]


def _psql_feed(pg, db, key, mm, pieces, *args):
    """A restricted psql session in `db`, logged in as the app's role (never SET ROLE from a
    superuser, which the SQL could RESET), fed by a thread of its own.

    `pieces` are bytes, or (start, end) ranges of `mm` (copied out a chunk at a time).
    """
    if pg.role is None:
        raise DataError("an archive's SQL is loaded only as the app's own role, never as the superuser")
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(pg.psql(db, *args, "-c", f"\\restrict {key}", "-f", "-"),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=pg.env)

    def feed():
        try:
            for piece in pieces:
                if isinstance(piece, bytes):
                    proc.stdin.write(piece)
                    continue
                for at in range(piece[0], piece[1], CHUNK):
                    proc.stdin.write(mm[at:min(at + CHUNK, piece[1])])
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # psql stopped: its error tells why

    proc.feeder = threading.Thread(target=feed, daemon=True)
    proc.feeder.start()
    proc.err, proc.role = err, pg.role
    return proc


def _psql_wait(proc):
    proc.feeder.join()
    rc = proc.wait()
    proc.err.seek(0)
    err = proc.err.read().decode(errors="replace").strip()
    proc.err.close()
    if rc != 0:
        if "invalid command \\restrict" in err:
            raise DataError("psql on the node predates \\restrict (PostgreSQL's August 2025 security "
                            "releases): upgrade its postgresql-client, then restore again")
        raise DataError(f"{SQL} did not load (as the app's role {proc.role}, which may do only what the app "
                        f"may): {err[-1500:]}")


def _create_db(pg, db, role):
    pg.run("postgres", f"CREATE DATABASE {_ident(db)} OWNER {_ident(role)} TEMPLATE template0 "
                       f"ENCODING 'UTF8';\nREVOKE CONNECT, TEMPORARY ON DATABASE {_ident(db)} FROM PUBLIC;\n")


def _drop_db(pg, db):
    pg.run("postgres", f"DROP DATABASE IF EXISTS {_ident(db)} WITH (FORCE);\n")


def _prepare_swap_db(pg, db):
    """What _swap_db needs done first, before the app's requests are held: whether db exists yet."""
    _drop_db(pg, db + OLD)
    return pg.exists(db)


def _swap_db(pg, db, had):
    """Make db+STAGING the app's database in one transaction; the old one is dropped after."""
    old, staged = db + OLD, db + STAGING
    sql = ["BEGIN;"]
    if had:
        # Connections of the app end here; it reconnects to the new database.
        sql += [f"SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                f"WHERE datname = {_lit(db)} AND pid <> pg_backend_pid();",
                f"ALTER DATABASE {_ident(db)} RENAME TO {_ident(old)};"]
    sql += [f"ALTER DATABASE {_ident(staged)} RENAME TO {_ident(db)};", "COMMIT;"]
    for attempt in range(10):
        try:
            pg.run("postgres", "\n".join(sql) + "\n")
            break
        except DataError as exc:
            # An app connection that arrived between terminate and rename: try again.
            if "being accessed by other users" not in str(exc) or attempt == 9:
                raise
    if had:
        # DROP DATABASE waits for a checkpoint: done after this program has
        # answered, by a process of its own (pg-app drops a leftover too).
        subprocess.Popen(pg.psql("postgres", "-c", f"DROP DATABASE IF EXISTS {_ident(old)} WITH (FORCE)"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)


# --- files directory swap ------------------------------------------------------------

def _exchange(a, b):
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); no moment where either is missing."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        err = ctypes.get_errno()
        raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def _own_like(staged, directory):
    """Give the staged tree (unpacked as root) the owner of the directory it replaces: the app's
    user (nodeops/node_users.py), so the app can write its restored files. By file descriptor,
    never following a symlink."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return  # a first restore before any deploy: the next deploy gives it its owner
    uid, gid = st.st_uid, st.st_gid
    os.chown(staged, uid, gid, follow_symlinks=False)
    for _, dirs, files, fd in os.fwalk(staged):
        for name in dirs + files:
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def _swap_dir(directory):
    staged = directory + STAGING
    if os.path.isdir(directory):
        _exchange(staged, directory)
        shutil.rmtree(staged)  # now the old contents
    else:
        os.rename(staged, directory)


# --- commands ---------------------------------------------------------------------

def cmd_pg_ensure(spec):
    """The cluster for apps' databases: created once, our listen address and hba, running."""
    cluster, port, listen = spec["cluster"], int(spec["port"]), spec["listen"]
    changed = []
    if os.geteuid() != 0:
        raise DataError("service.postgresql needs root on the node (pg_createcluster, the cluster's config "
                        "files): connect to it as root")
    versions = _pg_versions()
    if not versions:
        apt = shutil.which("apt-get")
        if not apt or os.geteuid() != 0:
            raise DataError("PostgreSQL is not installed on the node; install the postgresql package")
        _run([apt, "install", "-y", "-q", "--no-install-recommends", "postgresql"],
             env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        changed.append("installed postgresql")
        versions = _pg_versions()
    for v in versions:
        _drop_leftover_conf(f"/etc/postgresql/{v}/{cluster}")
    existing = [v for v in versions if os.path.isdir(f"/etc/postgresql/{v}/{cluster}")]
    version = existing[0] if existing else versions[-1]
    conf_dir = f"/etc/postgresql/{version}/{cluster}"
    if not existing:
        _run(["pg_createcluster", "--locale", "C.UTF-8", "--encoding", "UTF8", "-p", str(port), version, cluster])
        changed.append("created cluster")
    with open(f"{conf_dir}/postgresql.conf") as f:
        m = re.search(r"^\s*port\s*=\s*(\d+)", f.read(), re.MULTILINE)
    if not m or int(m.group(1)) != port:
        raise DataError(f"cluster {version}/{cluster} exists with port {m.group(1) if m else '?'}, "
                          f"but the node's pg_port is {port}: change one of them")
    conf = ("# Managed by toppcloud.\n"
            f"listen_addresses = {_lit(listen)}\n")
    hba = _hba_text(conf_dir)
    conf_changed = _write_if_changed(f"{conf_dir}/conf.d/toppcloud.conf", conf, "postgres")
    hba_changed = _write_if_changed(f"{conf_dir}/pg_hba.conf", hba, "postgres")
    changed += ["listen_addresses"] * conf_changed + ["pg_hba.conf"] * hba_changed
    running = subprocess.run(["pg_ctlcluster", version, cluster, "status"], capture_output=True).returncode == 0
    if not running and _fenced(conf_dir):
        # A promote fenced it (another node is the primary now): it is not started, not even for a moment.
        return {"version": version, "changed": changed, "fenced": True}
    if not running:
        _run(["pg_ctlcluster", version, cluster, "start"])
        changed.append("started")
    elif conf_changed:
        _run(["pg_ctlcluster", version, cluster, "restart"])
        changed.append("restarted")
    elif hba_changed:
        _run(["pg_ctlcluster", version, cluster, "reload"])
    return {"version": version, "changed": changed}


def _hba_text(conf_dir):
    """pg_hba.conf as toppcloud wants it: the apps' lines, then a replication line per replica
    (pg-primary keeps their addresses in REPLICAS_FILE, so pg-ensure keeps them too)."""
    # samerole: a role may enter the database named like a role it is a member of (itself, and
    # for <app>__restore the NOLOGIN role of that name granted to the app alone, see
    # _staging_role), so the app's role loads its staging database and enters no other.
    hba = ("# Managed by toppcloud: the superuser only on the local socket; each app's role\n"
           "# only into its own database (named like it), with its password; on the local\n"
           "# socket also into its staging database (<app>__restore), where restores load as it.\n"
           "local   all        postgres                peer\n"
           "local   samerole   all                     scram-sha-256\n"
           "host    sameuser   all        0.0.0.0/0    scram-sha-256\n"
           "host    sameuser   all        ::/0         scram-sha-256\n")
    try:
        with open(os.path.join(conf_dir, REPLICAS_FILE)) as f:
            replicas = json.load(f)
    except FileNotFoundError:
        return hba
    hba += "# Streaming replicas (pg-primary): the replication role, from each replica's address.\n"
    for address in replicas["addresses"]:
        hba += f"host    replication {replicas['role']} {_hba_address(address)} scram-sha-256\n"
    return hba


def _hba_address(address):
    """The pg_hba address a replica at `address` connects from. A loopback one (a replica on the
    primary's own machine) connects from 127.0.0.1 whatever its address, the kernel's source for
    every 127.0.0.0/8 destination: the whole loopback network, then."""
    if re.fullmatch(r"127\.[0-9.]+", address):
        return "127.0.0.0/8"
    if address == "::1":
        return "::1/128"
    if not re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", address):
        raise DataError(f"a replica's address must be an IP address for pg_hba, not {address!r}")
    return address + ("/128" if ":" in address else "/32")


# What a promote writes at the top of the old primary's start.conf (nodeops/hostside/pg_failover.py).
FENCE_MARK = "# Fenced by toppcloud"


def _fenced(conf_dir):
    """The cluster was fenced by a promote: its start.conf is `manual` under our mark."""
    try:
        with open(f"{conf_dir}/start.conf") as f:
            text = f.read()
    except FileNotFoundError:
        return False
    words = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return FENCE_MARK in text and words[:1] == ["manual"]


def _unfence(conf_dir):
    """start.conf back to `auto`: the fenced cluster is a replica of the new primary now."""
    if _fenced(conf_dir):
        _write_if_changed(f"{conf_dir}/start.conf", "# Managed by toppcloud: started with the node.\nauto\n",
                          "postgres")
        return True
    return False


def _drop_leftover_conf(conf_dir):
    """pg_dropcluster leaves a directory holding only our conf.d file: that is no cluster, remove it.

    Anything else without a postgresql.conf is not ours to touch: say so.
    """
    if not os.path.isdir(conf_dir) or os.path.exists(os.path.join(conf_dir, "postgresql.conf")):
        return
    ours = [os.path.join(conf_dir, "conf.d")] + [os.path.join(conf_dir, name) for name in OUR_CONF_FILES]
    found = [os.path.join(top, name) for top, dirs, files in os.walk(conf_dir) for name in dirs + files]
    if not set(found) <= set(ours):
        raise DataError(f"{conf_dir} exists without a postgresql.conf (a cluster dropped by hand?): "
                        "remove it or restore the cluster's configuration")
    shutil.rmtree(conf_dir)


def _pg_versions():
    found = [p.split("/")[4] for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    return sorted(found, key=lambda v: [int(x) for x in v.split(".") if x.isdigit()])


def cmd_pg_app(spec, verifier):
    """The app's role (LOGIN, this password verifier) and its database, owned by it."""
    pg, db, role = _Pg(spec), spec["dbname"], spec["role"]
    if not verifier.startswith("SCRAM-SHA-256$"):
        raise DataError("the password must come as a SCRAM-SHA-256 verifier")
    changed = []
    current = pg.run("postgres", f"SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = {_lit(role)};\n")
    if not current:
        pg.run("postgres", f"CREATE ROLE {_ident(role)} LOGIN PASSWORD {_lit(verifier)};\n")
        changed.append("created role")
    elif current.strip() != verifier:
        pg.run("postgres", f"ALTER ROLE {_ident(role)} LOGIN PASSWORD {_lit(verifier)};\n")
        changed.append("set password")
    if not pg.exists(db):
        _create_db(pg, db, role)
        changed.append("created database")
    # Leftovers of a restore that was interrupted.
    for name in (db + STAGING, db + OLD):
        if pg.exists(name):
            _drop_db(pg, name)
            changed.append(f"dropped {name}")
    return {"changed": changed}


# --- streaming replication -----------------------------------------------------------

# On a primary and on a replica alike, so either can become the other (promote, or an old primary cloned back).
_REPLICATION_SETTINGS = """# Managed by toppcloud: streaming replication (the same on a primary and its replicas).
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
# pg_rewind can bring an old primary back as a replica without a fresh clone.
wal_log_hints = on
hot_standby = on
# A replica's queries (a backup's dump) hold back the primary's vacuum instead of being cancelled by it,
# and a conflict that remains (an exclusive lock replayed) waits for them: a long dump is never cut off;
# replay, and so the lag, waits meanwhile.
hot_standby_feedback = on
max_standby_streaming_delay = -1
max_standby_archive_delay = -1
# The replica reports what it replayed every second: the primary's lag figures stay fresh.
wal_receiver_status_interval = 1s
# A slot whose replica is gone keeps no more WAL than this on the primary's disk; past it, the slot is
# lost and the next `replica add` clones that replica again.
max_slot_wal_keep_size = 8GB
"""


def _conf_dir(spec):
    version, cluster = str(spec["version"]), spec["cluster"]
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", version) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cluster):
        raise DataError(f"cluster {version}/{cluster} is not a valid name")
    conf_dir = f"/etc/postgresql/{version}/{cluster}"
    if not os.path.isfile(f"{conf_dir}/postgresql.conf"):
        raise DataError(f"there is no PostgreSQL cluster {version}/{cluster} on this node (pg-ensure makes it)")
    return conf_dir


def _slot(name):
    if not isinstance(name, str) or not _SLOT_RE.fullmatch(name):
        raise DataError(f"replication slot name {name!r} is invalid: 1 to 63 characters a-z, 0-9 and '_'")
    return name


def _cluster_running(spec):
    return subprocess.run(["pg_ctlcluster", str(spec["version"]), spec["cluster"], "status"],
                          capture_output=True).returncode == 0


# The settings of _REPLICATION_SETTINGS that only a restart changes.
_RESTART_SETTINGS = {"wal_level": "replica", "max_wal_senders": "10", "max_replication_slots": "10",
                     "wal_log_hints": "on", "hot_standby": "on"}


def _reload_or_restart(pg, spec):
    """Reload the cluster's config; restart it only if a setting that needs it differs (wal_log_hints...)."""
    names = ", ".join(_lit(n) for n in _RESTART_SETTINGS)
    running = dict(line.split("|", 1) for line in pg.run(
        "postgres", f"SELECT name || '|' || setting FROM pg_settings WHERE name IN ({names});\n").split())
    differ = sorted(n for n, v in _RESTART_SETTINGS.items() if running.get(n) != v)
    if differ:
        _run(["pg_ctlcluster", str(spec["version"]), spec["cluster"], "restart", "-m", "fast"])
        return [f"restarted for {', '.join(differ)}"]
    pg.run("postgres", "SELECT pg_reload_conf();\n")
    return ["reloaded"]


def cmd_pg_primary(spec, verifier):
    """The cluster can feed streaming replicas: the replication settings (conf.d), the replication
    role (REPLICATION LOGIN, this password verifier), a physical slot for the replica, and a
    pg_hba `replication` line for each replica's address. What changed."""
    conf_dir, pg, role, slot = _conf_dir(spec), _Pg(spec), spec["role"], _slot(spec["slot"])
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise DataError(f"replication role {role!r} is invalid")
    if not verifier.startswith("SCRAM-SHA-256$"):
        raise DataError("the replication role's password must come as a SCRAM-SHA-256 verifier")
    if pg.run("postgres", "SELECT pg_is_in_recovery();\n").strip() == "t":
        raise DataError(f"cluster {spec['version']}/{spec['cluster']} is itself a replica (in recovery): "
                        "it cannot be the group's primary; promote it first")
    changed = []
    conf = _write_if_changed(f"{conf_dir}/{REPLICATION_CONF}", _REPLICATION_SETTINGS, "postgres")
    replicas = {"role": role, "addresses": sorted(set(spec["addresses"]))}
    for address in replicas["addresses"]:
        _hba_address(address)  # each refused here, before anything is written
    listed = _write_if_changed(f"{conf_dir}/{REPLICAS_FILE}", json.dumps(replicas, sort_keys=True) + "\n", "postgres")
    hba = _write_if_changed(f"{conf_dir}/pg_hba.conf", _hba_text(conf_dir), "postgres")
    changed += ["replication settings"] * conf + ["pg_hba.conf replication lines"] * (listed or hba)
    current = pg.run("postgres", f"SELECT coalesce(rolpassword, '') || '|' || rolreplication::text FROM pg_authid "
                                 f"WHERE rolname = {_lit(role)};\n").strip()
    if not current:
        pg.run("postgres", f"CREATE ROLE {_ident(role)} REPLICATION LOGIN PASSWORD {_lit(verifier)};\n")
        changed.append("created role")
    elif current != f"{verifier}|true":
        pg.run("postgres", f"ALTER ROLE {_ident(role)} REPLICATION LOGIN PASSWORD {_lit(verifier)};\n")
        changed.append("set role password")
    if pg.run("postgres", f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = {_lit(slot)};\n").strip() == "0":
        # Reserve WAL from now on: nothing the replica needs is recycled before it connects.
        pg.run("postgres", f"SELECT pg_create_physical_replication_slot({_lit(slot)}, true);\n")
        changed.append(f"created slot {slot}")
    if conf or listed or hba:
        changed += _reload_or_restart(pg, spec)
    return {"changed": changed}


def _passfile_line(host, port, role, password):
    esc = lambda v: str(v).replace("\\", "\\\\").replace(":", "\\:")  # noqa: E731
    return f"{esc(host)}:{port}:replication:{esc(role)}:{esc(password)}\n"


def _standby_status(pg):
    sql = ("SELECT json_build_object("
           "'in_recovery', pg_is_in_recovery(), "
           "'receive_lsn', pg_last_wal_receive_lsn()::text, "
           "'replay_lsn', pg_last_wal_replay_lsn()::text, "
           "'last_replay_s', extract(epoch from now() - pg_last_xact_replay_timestamp())::float, "
           "'receiver', (SELECT row_to_json(r) FROM (SELECT status, slot_name, sender_host, sender_port, "
           "latest_end_lsn::text AS latest_end_lsn FROM pg_stat_wal_receiver) r));\n")
    return json.loads(pg.run("postgres", sql))


def cmd_pg_standby_status(spec):
    """On a replica: whether its cluster runs, is in recovery, and what its WAL receiver streams."""
    _conf_dir(spec)
    if not _cluster_running(spec):
        return {"running": False}
    return {"running": True, **_standby_status(_Pg(spec))}


def _data_directory(conf_dir):
    with open(f"{conf_dir}/postgresql.conf") as f:
        m = re.search(r"^\s*data_directory\s*=\s*'([^']+)'", f.read(), re.MULTILINE)
    if not m or not m.group(1).startswith("/var/lib/postgresql/"):
        raise DataError(f"{conf_dir}/postgresql.conf names no data_directory under /var/lib/postgresql")
    return m.group(1)


def cmd_pg_standby(spec, password):
    """The cluster is a streaming replica of the primary: if it streams from it through its slot
    already, nothing is done; else its data directory is replaced by a pg_basebackup -R -S SLOT
    -X stream -c fast of the primary (the old one put back if that fails) and it is started.

    The replication role's password goes to a passfile (0600, postgres) that primary_conninfo
    names: it is in no argv, and not in postgresql.auto.conf either.
    """
    conf_dir, pg, slot, role = _conf_dir(spec), _Pg(spec), _slot(spec["slot"]), spec["role"]
    host, port = spec["primary_host"], int(spec["primary_port"])
    if not password or "\n" in password:
        raise DataError("the replication role's password must come on stdin, one line")
    changed = []
    conf = _write_if_changed(f"{conf_dir}/{REPLICATION_CONF}", _REPLICATION_SETTINGS, "postgres")
    passfile = f"{conf_dir}/{PASSFILE}"
    if _write_if_changed(passfile, _passfile_line(host, port, role, password), "postgres", mode=0o600):
        changed.append("passfile")
    if _cluster_running(spec):
        status = _standby_status(pg)
        receiver = status.get("receiver") or {}
        if (status["in_recovery"] and receiver.get("status") == "streaming" and receiver.get("slot_name") == slot
                and receiver.get("sender_host") == host and receiver.get("sender_port") == port):
            if conf:
                changed += _reload_or_restart(pg, spec)
            return {"changed": changed, "cloned": False, "status": status}
    data_dir = _data_directory(conf_dir)
    old = data_dir + ".toppcloud-old"
    if _cluster_running(spec):
        _run(["pg_ctlcluster", str(spec["version"]), spec["cluster"], "stop", "-m", "fast"])
        changed.append("stopped")
    if os.path.isdir(old):
        # An interrupted clone left the cluster's own data aside: that copy is kept, the half clone goes.
        shutil.rmtree(data_dir, ignore_errors=True)
        os.rename(old, data_dir)
    owner = os.stat(f"{conf_dir}/postgresql.conf")  # the postgres user's, as pg_createcluster made it
    if os.path.isdir(data_dir):
        os.rename(data_dir, old)
    os.mkdir(data_dir, 0o700)
    os.chown(data_dir, owner.st_uid, owner.st_gid)
    conninfo = (f"host={host} port={port} user={role} application_name={slot} passfile={passfile} "
                "connect_timeout=10")
    argv = ["runuser", "-u", "postgres", "--", f"{pg.bin}/pg_basebackup", "-D", data_dir, "-R", "-S", slot,
            "-X", "stream", "-c", "fast", "-w", "-d", conninfo]
    started = time.monotonic()
    r = subprocess.run(argv, capture_output=True, env=dict(os.environ, PGPASSFILE=passfile), timeout=3600)
    if r.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        if os.path.isdir(old):
            os.rename(old, data_dir)
            if not _fenced(conf_dir):  # an old primary a promote fenced stays stopped
                subprocess.run(["pg_ctlcluster", str(spec["version"]), spec["cluster"], "start"], capture_output=True)
        raise DataError(f"pg_basebackup from {host}:{port} failed (the data directory it had is back): "
                        f"{r.stderr.decode(errors='replace').strip()[-1500:]}")
    seconds = round(time.monotonic() - started, 3)
    auto = f"{data_dir}/postgresql.auto.conf"
    with open(auto) as f:
        text = f.read()
    m = re.search(r"^primary_conninfo = '(.*)'$", text, re.MULTILINE)
    if not m:
        raise DataError(f"pg_basebackup -R wrote no primary_conninfo in {auto}")
    if "password=" in m.group(1):
        raise DataError("primary_conninfo holds a password: it must come from the passfile")
    if "application_name=" not in m.group(1):  # synchronous_standby_names matches it
        with open(auto, "a") as f:
            f.write(f"primary_conninfo = '{m.group(1)} application_name={slot}'\n")
    if _unfence(conf_dir):
        changed.append("start.conf auto (was fenced)")
    if os.path.exists(f"{conf_dir}/{SYNC_CONF}"):
        # Left from when it was a primary: as a replica it has no standby to wait for, and once promoted
        # its commits would wait for one until the promote's synchronous step set it.
        os.unlink(f"{conf_dir}/{SYNC_CONF}")
        changed.append("dropped synchronous_standby_names")
    _run(["pg_ctlcluster", str(spec["version"]), spec["cluster"], "start"])
    shutil.rmtree(old, ignore_errors=True)
    changed += [f"cloned from {host}:{port}", "started"]
    return {"changed": changed, "cloned": True, "basebackup_seconds": seconds}


def cmd_pg_replication(spec):
    """On a primary: each replica as pg_stat_replication shows it, with its lag (bytes not yet
    replayed, replay_lag in seconds), the physical slots, and synchronous_standby_names."""
    _conf_dir(spec)
    pg = _Pg(spec)
    if not _cluster_running(spec):
        return {"running": False}
    if pg.run("postgres", "SELECT pg_is_in_recovery();\n").strip() == "t":
        return {"running": True, "in_recovery": True, **_standby_status(pg)}
    sql = ("SELECT json_build_object("
           "'running', true, 'in_recovery', false, "
           "'current_lsn', pg_current_wal_lsn()::text, "
           "'synchronous_standby_names', current_setting('synchronous_standby_names'), "
           "'replicas', coalesce((SELECT json_agg(r ORDER BY r.application_name) FROM ("
           "SELECT application_name, client_addr::text AS client_addr, state, sync_state, "
           "sent_lsn::text AS sent_lsn, replay_lsn::text AS replay_lsn, "
           "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes, "
           "extract(epoch from replay_lag)::float AS replay_lag_s, "
           "extract(epoch from write_lag)::float AS write_lag_s, "
           "extract(epoch from flush_lag)::float AS flush_lag_s "
           "FROM pg_stat_replication) r), '[]'::json), "
           "'slots', coalesce((SELECT json_agg(s ORDER BY s.slot_name) FROM ("
           "SELECT slot_name, active, restart_lsn::text AS restart_lsn, wal_status, "
           "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes "
           "FROM pg_replication_slots WHERE slot_type = 'physical') s), '[]'::json));\n")
    return json.loads(pg.run("postgres", sql))


def cmd_pg_sync_standbys(spec):
    """synchronous_standby_names = 'FIRST 1 (names...)' on the primary, or none when `names` is empty
    (conf.d, reload). A commit then waits until the first listed replica that streams has flushed it."""
    conf_dir, pg = _conf_dir(spec), _Pg(spec)
    names = [_slot(n) for n in spec["names"]]
    path = f"{conf_dir}/{SYNC_CONF}"
    wanted = ("FIRST 1 (" + ", ".join(f'"{n}"' for n in names) + ")") if names else ""
    if names:
        changed = _write_if_changed(path, "# Managed by toppcloud: a commit waits for one of these replicas.\n"
                                          f"synchronous_standby_names = {_lit(wanted)}\n", "postgres")
    else:
        changed = os.path.exists(path)
        if changed:
            os.unlink(path)
    if changed:
        pg.run("postgres", "SELECT pg_reload_conf();\n")
    deadline = time.monotonic() + 10
    while True:  # the postmaster takes the new file a moment after SIGHUP; new sessions see it then
        current = pg.run("postgres", "SHOW synchronous_standby_names;\n").strip()
        if current == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if current != wanted:
        raise DataError(f"synchronous_standby_names is {current!r} after the reload, not {wanted!r}")
    return {"changed": bool(changed), "synchronous_standby_names": current}


def cmd_files_ensure(spec):
    directory = spec["dir"]
    if os.path.isdir(directory):
        return {"changed": []}
    os.makedirs(directory, 0o755)
    return {"changed": ["created " + directory]}


def cmd_writable_ensure(spec):
    """<dir>/ and <dir>/<name>/ of each name, 0755; what is there is kept as it is."""
    directory, changed = spec["dir"], []
    for path in [directory] + [os.path.join(directory, _writable_name(n)) for n in spec["names"]]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.makedirs(path, 0o755)  # the app's directory too, on its first deploy (before the upload)
            os.chmod(path, 0o755)  # whatever the umask
            changed.append("created " + path)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise DataError(f"{path} exists and is not a directory (a writable static directory goes there): "
                            "move it away")
    return {"changed": changed}


def _writable_name(name):
    if not isinstance(name, str) or not _WRITABLE_NAME_RE.fullmatch(name):
        raise DataError(f"{name!r} is not a writable static directory's name")
    return name


def _make_writable_names(directory, names):
    """The directories of the release's names inside a staged writable directory, if the data had none."""
    for name in names:
        os.makedirs(os.path.join(directory, _writable_name(name)), 0o755, exist_ok=True)


def cmd_dump_writable(spec, out):
    directory = spec["dir"]
    if not os.path.isdir(directory):
        raise DataError(f"{directory} does not exist: has the app been deployed with writable_static_files?")
    # Only what a restore takes back: the directories named like writable static directories.
    top = lambda name, is_dir: is_dir and bool(_WRITABLE_NAME_RE.fullmatch(name))  # noqa: E731
    return {"skipped": pack_files(directory, out, top)}


def cmd_dump_files(spec, out):
    directory = spec["dir"]
    if not os.path.isdir(directory):
        raise DataError(f"{directory} does not exist: has the app been deployed with service.files?")
    skipped = pack_files(directory, out)
    return {"skipped": skipped}


def cmd_restore(spec, stdin, stdout):
    """Receive the archive on stdin, check all of it, stage it beside the live data, and swap it
    in only when the control plane says `swap`.

    stdin is one line, the app role's password (empty without postgresql); then the archive,
    exactly spec["size"] bytes; then one line. Anything but
    "swap" (the control plane died: end of input) drops what was staged.
    Answers `{"received": n}` once the archive is in and every member's
    checksum matched, then `{"staged": ...}`.
    """
    pg_spec, files_spec, writable_spec = spec.get("postgresql"), spec.get("files"), spec.get("writable")
    password = stdin.readline().rstrip(b"\n").decode()
    pg = _Pg(pg_spec) if pg_spec else None
    as_app = pg.login(pg_spec["role"], password) if pg else None  # refuses a missing password before anything
    staging_db = pg_spec["dbname"] + STAGING if pg else None
    staged = {}
    # The empty staging database is made while the archive arrives.
    made = []
    maker = threading.Thread(target=lambda: made.append(_fresh_db(pg, staging_db, pg_spec["role"]))) if pg else None
    work = tempfile.mkdtemp(prefix="restore-", dir=spec.get("tmp"))
    try:
        if maker:
            maker.start()
        for what in (files_spec, writable_spec):
            if what:
                shutil.rmtree(what["dir"] + STAGING, ignore_errors=True)

        def keep(name, reader):  # each member into a file of its own, hashed on the way in
            with open(os.path.join(work, name), "wb") as f:
                shutil.copyfileobj(reader, f, CHUNK)

        archive = _Hashing(stdin, int(spec["size"]), hash=False)
        manifest = read_archive(archive, keep)
        archive.drain()  # the padding after the end-of-archive blocks
        stdout.write(json.dumps({"received": archive.size}).encode() + b"\n")
        stdout.flush()
        for service, what in (("postgresql", pg_spec), ("files", files_spec), ("writable", writable_spec)):
            if what and SERVICE_MEMBER[service] not in manifest["files"]:
                raise DataError(f"the archive holds no {SERVICE_MEMBER[service]} to restore {service} from")
        if pg:
            maker.join()
            if made[0] is not None:
                raise made[0]
            rows = load_sql(as_app, staging_db, os.path.join(work, SQL))
            staged["postgresql"] = {"bytes": manifest["files"][SQL]["size"], "rows": rows}
        if files_spec:
            with open(os.path.join(work, FILES), "rb") as f:
                staged["files"] = unpack_files(f, files_spec["dir"] + STAGING)
            _own_like(files_spec["dir"] + STAGING, files_spec["dir"])
        if writable_spec:
            with open(os.path.join(work, WRITABLE), "rb") as f:
                staged["writable"] = unpack_files(f, writable_spec["dir"] + STAGING, WRITABLE)
            _make_writable_names(writable_spec["dir"] + STAGING, writable_spec.get("names", []))
            _own_like(writable_spec["dir"] + STAGING, writable_spec["dir"])
        stdout.write(json.dumps({"staged": staged, "app": manifest.get("app"), "release": manifest.get("release")})
                     .encode() + b"\n")
        stdout.flush()
        if stdin.readline() != b"swap\n":
            raise DataError("the control plane went away before the swap; nothing was changed")
    except BaseException:
        if maker and maker.is_alive():
            maker.join()
        if pg:
            _drop_db(pg, staging_db)
        for what in (files_spec, writable_spec):
            if what:
                shutil.rmtree(what["dir"] + STAGING, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    held = _swap(pg, pg_spec, files_spec, writable_spec, spec.get("gate"))
    return {"swapped": sorted(staged), "staged": staged, "held": held}


def _fresh_db(pg, db, role):
    """An empty staging database `db` owned by `role`, which alone may log in to it (a leftover of
    that name is dropped first); the error, if any."""
    try:
        _drop_db(pg, db)
        _create_db(pg, db, role)
        _staging_role(pg, db, role)
    except DataError as exc:
        return exc
    return None


def _staging_role(pg, db, role):
    """A NOLOGIN role named like the staging database, granted to the app's role only: pg_hba's
    `samerole` then lets that role (and no other app's) log in to it. It owns nothing and has no
    rights; app names hold no '_', so it is no app's role."""
    if not pg.run("postgres", f"SELECT 1 FROM pg_roles WHERE rolname = {_lit(db)};\n").strip():
        pg.run("postgres", f"CREATE ROLE {_ident(db)} NOLOGIN;\n")
    pg.run("postgres", f"GRANT {_ident(db)} TO {_ident(role)};\n")


def _swap(pg, pg_spec, files_spec, writable_spec=None, gate=None):
    """Swap the staged data in while the app's requests on this node are held; how long they were."""
    # From here on, finish: a hang-up or a dying control plane must not leave half a swap.
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    had = _prepare_swap_db(pg, pg_spec["dbname"]) if pg else None
    with _requests_held(gate) as held:  # as short as can be: one psql, then renames
        if pg:
            _swap_db(pg, pg_spec["dbname"], had)
        for what in (files_spec, writable_spec):
            if what:
                _swap_dir(what["dir"])
    return held


# --- holding the app's requests during a swap ------------------------------------------
#
# The request gate is one file per app (<root>/apps/<app>/requests.gate) that
# the gunicorn hooks of every release of the app read (node_exec.RequestGate):
# while it holds a deadline, new requests wait before they reach the app; each
# request in flight holds a shared flock on it. So the swap writes the deadline,
# takes the exclusive lock (= no request in flight any more), swaps, and
# empties the file: the held requests go on, and each thread sees the file's
# new mtime and drops its persistent database connections (which the swap
# terminated) before the app runs. No request ever sees a terminated
# connection or the moment the database has no name.

HOLD_SECONDS = 30  # a request waits at most this long (node_exec.HOLD_MAX_SECONDS), whatever is left behind
DRAIN_SECONDS = 20  # how long requests in flight get to finish before the swap goes ahead anyway


def _open_gate(path):
    # Root writes this file in a directory the app may be able to write to: never through a
    # symlink, and never a file with other names (a hard link to someone else's file).
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DataError(f"cannot open the request gate {path}: {exc.strerror}; remove it and restore again") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise DataError(f"{path} is not a plain file of its own; remove it and restore again")
    return fd


@contextmanager
def _requests_held(path):
    """While inside, the app's requests on this node wait (bounded) and none is in flight.

    Yields {"seconds": ...} filled in on the way out (None when there is no gate:
    no app directory here, e.g. a database node).
    """
    if not path or not os.path.isdir(os.path.dirname(path)):
        yield None
        return
    fd = _open_gate(path)
    held = {}
    start = time.monotonic()
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{time.time() + HOLD_SECONDS:.3f}\n".encode())
        deadline = start + DRAIN_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:  # a request that does not end: it will see the swap
                    held["undrained"] = True
                    break
                time.sleep(0.005)
        held["drained_seconds"] = round(time.monotonic() - start, 3)
        yield held
    finally:
        os.ftruncate(fd, 0)  # the gate opens; its new mtime makes each thread reconnect
        os.close(fd)  # and the exclusive lock goes with it
        held["seconds"] = round(time.monotonic() - start, 3)


def cmd_clear(spec):
    """Empty database, files directory and writable static directories, swapped in like a restore."""
    pg_spec, files_spec, writable_spec = spec.get("postgresql"), spec.get("files"), spec.get("writable")
    pg = _Pg(pg_spec) if pg_spec else None
    if pg:
        _drop_db(pg, pg_spec["dbname"] + STAGING)
        _create_db(pg, pg_spec["dbname"] + STAGING, pg_spec["role"])
    if files_spec:
        shutil.rmtree(files_spec["dir"] + STAGING, ignore_errors=True)
        os.mkdir(files_spec["dir"] + STAGING, 0o755)
        _own_like(files_spec["dir"] + STAGING, files_spec["dir"])
    if writable_spec:
        shutil.rmtree(writable_spec["dir"] + STAGING, ignore_errors=True)
        os.mkdir(writable_spec["dir"] + STAGING, 0o755)
        _make_writable_names(writable_spec["dir"] + STAGING, writable_spec.get("names", []))
        _own_like(writable_spec["dir"] + STAGING, writable_spec["dir"])
    held = _swap(pg, pg_spec, files_spec, writable_spec, spec.get("gate"))
    return {"cleared": [s for s, v in (("postgresql", pg_spec), ("files", files_spec), ("writable", writable_spec))
                        if v], "held": held}


def _run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, **kw)
    if r.returncode != 0:
        raise DataError(f"{' '.join(argv[:3])} failed: {(r.stderr or r.stdout).decode(errors='replace').strip()[-1500:]}")
    return r.stdout.decode(errors="replace")


def _write_if_changed(path, text, owner, mode=0o640):
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    tmp = path + ".toppcloud.tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as f:  # never readable by others
        f.write(text)
    import pwd
    pw = pwd.getpwnam(owner)
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def main(argv):
    command, spec = argv[0], json.loads(argv[1])
    out = sys.stdout.buffer
    for stream in (sys.stdin, sys.stdout):  # the pipes to sshd: bulk data moves in bigger pieces
        _grow_pipe(stream)
    try:
        if command == "pg-ensure":
            result = cmd_pg_ensure(spec)
        elif command == "pg-app":
            result = cmd_pg_app(spec, sys.stdin.readline().strip())
        elif command == "files-ensure":
            result = cmd_files_ensure(spec)
        elif command == "writable-ensure":
            result = cmd_writable_ensure(spec)
        elif command == "dump-sql":
            result = dump_sql(spec, out, sys.stdin.readline().rstrip("\n"))
        elif command == "dump-files":
            result = cmd_dump_files(spec, out)
        elif command == "dump-writable":
            result = cmd_dump_writable(spec, out)
        elif command == "restore":
            result = cmd_restore(spec, sys.stdin.buffer, out)
        elif command == "clear":
            result = cmd_clear(spec)
        elif command == "pg-primary":
            result = cmd_pg_primary(spec, sys.stdin.readline().strip())
        elif command == "pg-standby":
            result = cmd_pg_standby(spec, sys.stdin.readline().rstrip("\n"))
        elif command == "pg-standby-status":
            result = cmd_pg_standby_status(spec)
        elif command == "pg-replication":
            result = cmd_pg_replication(spec)
        elif command == "pg-sync-standbys":
            result = cmd_pg_sync_standbys(spec)
        else:
            raise DataError(f"unknown command {command!r}")
    except DataError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if command not in ("dump-sql", "dump-files", "dump-writable"):  # their stdout is the data
        out.write(json.dumps(result).encode() + b"\n")
    else:
        print(json.dumps(result), file=sys.stderr)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
