"""The backup archive format, the files tar, and dump/restore against this machine's PostgreSQL
(run as the node program is: as root, reaching the cluster as postgres over its local socket)."""

import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from nodeops import services
from nodeops.hostside import node_data
from nodeops.hostside.node_data import ArchiveWriter, DataError
from nodeops.transport import LocalTransport
from tests.nodeops_helpers import Events

PG_PORT = 5432
PASSWORD = "the-roles-password"  # dumps and restores log in as the app's role


def archive(tmp_path, sql=b"SELECT 1;\n", files=None, name="a.tar"):
    path = tmp_path / name
    with open(path, "wb") as f:
        w = ArchiveWriter(f)
        if sql is not None:
            w.add("postgresql.sql", io.BytesIO(sql))
        if files is not None:
            w.add("files.tar", io.BytesIO(files))
        services_ = [s for s, m in (("postgresql", sql), ("files", files)) if m is not None]
        w.finish(app="demo", release="r1", created_at="2026-11-25T00:00:00", services=services_)
    return path


def rebuilt(tmp_path, members, name="bad.tar"):
    """An archive with exactly these (name, bytes, type) members, manifest included as given."""
    path = tmp_path / name
    with tarfile.open(path, "w") as t:
        for member, content, kind in members:
            info = tarfile.TarInfo(member)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                t.addfile(info)
            else:
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))
    return path


def manifest_for(**members):
    return json.dumps({"format": node_data.FORMAT, "app": "demo", "services": ["postgresql"] * ("postgresql.sql" in members),
                       "files": {n: {"sha256": hashlib.sha256(c).hexdigest(), "size": len(c)}
                                 for n, c in members.items()}}).encode()


def files_tar(*entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = 2
                t.addfile(info, io.BytesIO(b"hi"))
            else:
                info.linkname = "target"
                t.addfile(info)
    return buf.getvalue()


def test_it_writes_a_plain_tar_whose_manifest_checks_every_member(tmp_path):
    sql = b"CREATE TABLE t (id int);\n" * 1000
    path = archive(tmp_path, sql=sql, files=files_tar(("a.txt", tarfile.REGTYPE)))
    with tarfile.open(path) as t:  # any tar reads it
        names = [(m.name, m.mtime, m.uid, m.uname, m.mode) for m in t]
        manifest = json.loads(t.extractfile("manifest.json").read())
    assert names == [("postgresql.sql", 0, 0, "", 0o644), ("files.tar", 0, 0, "", 0o644),
                     ("manifest.json", 0, 0, "", 0o644)]
    assert manifest["files"]["postgresql.sql"] == {"sha256": hashlib.sha256(sql).hexdigest(), "size": len(sql)}
    assert node_data.verify_archive(path) == manifest
    assert os.path.getsize(path) % tarfile.RECORDSIZE == 0
    # Same content, same bytes.
    assert archive(tmp_path, sql=sql, files=files_tar(("a.txt", tarfile.REGTYPE)), name="b.tar").read_bytes() == \
        path.read_bytes()


@pytest.mark.parametrize("damage, message", [
    ("flip", "'postgresql.sql' does not match its sha256 in manifest.json"),
    ("truncate", "truncated"),
    ("extra", "unexpected member 'notes.txt'"),
    ("order", "members are out of order: 'postgresql.sql' after files.tar"),
    ("twice", "'postgresql.sql' is in the archive twice"),
    ("after manifest", "'files.tar' follows manifest.json"),
    ("link", "member 'postgresql.sql' is not a regular file"),
    ("no manifest", "the archive has no manifest.json"),
    ("bad manifest", "manifest.json is not valid JSON"),
    ("unlisted", "'files.tar' is in the archive but not in manifest.json"),
    ("missing", "manifest.json lists 'files.tar' but the archive has no such member"),
])
def test_it_names_what_is_wrong_with_an_archive(tmp_path, damage, message):
    sql, files = b"SELECT 1;\n", files_tar(("a", tarfile.REGTYPE))
    manifest = manifest_for(**{"postgresql.sql": sql})
    reg = tarfile.REGTYPE
    path = {
        "extra": lambda: rebuilt(tmp_path, [("postgresql.sql", sql, reg), ("notes.txt", b"x", reg),
                                            ("manifest.json", manifest, reg)]),
        "order": lambda: rebuilt(tmp_path, [("files.tar", files, reg), ("postgresql.sql", sql, reg),
                                            ("manifest.json", manifest, reg)]),
        "twice": lambda: rebuilt(tmp_path, [("postgresql.sql", sql, reg), ("postgresql.sql", sql, reg),
                                            ("manifest.json", manifest, reg)]),
        "after manifest": lambda: rebuilt(tmp_path, [("postgresql.sql", sql, reg), ("manifest.json", manifest, reg),
                                                     ("files.tar", files, reg)]),
        "link": lambda: rebuilt(tmp_path, [("postgresql.sql", b"", tarfile.SYMTYPE), ("manifest.json", manifest, reg)]),
        "no manifest": lambda: rebuilt(tmp_path, [("postgresql.sql", sql, reg)]),
        "bad manifest": lambda: rebuilt(tmp_path, [("postgresql.sql", sql, reg), ("manifest.json", b"{", reg)]),
        "unlisted": lambda: rebuilt(tmp_path, [("postgresql.sql", sql, reg), ("files.tar", files, reg),
                                               ("manifest.json", manifest, reg)]),
        "missing": lambda: rebuilt(tmp_path, [("postgresql.sql", sql, reg), ("manifest.json", manifest_for(
            **{"postgresql.sql": sql, "files.tar": files}), reg)]),
    }.get(damage, lambda: archive(tmp_path, sql=sql))()
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[512 + 3] ^= 0x20
    if damage == "truncate":
        raw = raw[:700]
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as refused:
        node_data.verify_archive(path)
    assert message in str(refused.value)


@pytest.mark.parametrize("entry, message", [
    (("../outside", tarfile.REGTYPE), "'../outside' is not allowed"),
    (("/etc/cron.d/x", tarfile.REGTYPE), "'/etc/cron.d/x' is not allowed"),
    (("a/../../b", tarfile.REGTYPE), "'a/../../b' is not allowed"),
    (("link", tarfile.SYMTYPE), "'link' is a symbolic link"),
    (("hard", tarfile.LNKTYPE), "'hard' is a hard link"),
    (("dev", tarfile.CHRTYPE), "'dev' is a device"),
])
def test_it_refuses_a_files_tar_that_would_write_outside_or_make_links(tmp_path, entry, message):
    path = archive(tmp_path, sql=None, files=files_tar(("ok.txt", tarfile.REGTYPE), entry))
    with pytest.raises(DataError) as refused:
        node_data.verify_archive(path)
    assert message in str(refused.value)
    with pytest.raises(DataError):
        node_data.unpack_files(io.BytesIO(files_tar(entry)), str(tmp_path / "dest"))
    assert not (tmp_path / "outside").exists() and os.listdir(tmp_path / "dest") == []


def test_it_packs_a_directory_deterministically_and_unpacks_it(tmp_path):
    src = tmp_path / "files"
    (src / "b dir").mkdir(parents=True)
    (src / "b dir" / "inner.bin").write_bytes(os.urandom(3000))
    (src / "a.txt").write_text("a")
    (src / "c.sh").write_text("#!/bin/sh\n")
    (src / "c.sh").chmod(0o755)
    os.symlink("/etc/passwd", src / "link")
    first, second = io.BytesIO(), io.BytesIO()
    assert node_data.pack_files(str(src), first) == ["link"]
    os.utime(src / "a.txt", (1, 1))  # mtimes are not part of the archive
    node_data.pack_files(str(src), second)
    assert first.getvalue() == second.getvalue()
    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as t:
        assert [(m.name, m.mtime, m.uid) for m in t] == [("a.txt", 0, 0), ("b dir", 0, 0), ("b dir/inner.bin", 0, 0),
                                                        ("c.sh", 0, 0)]
    dest = tmp_path / "restored"
    assert node_data.unpack_files(io.BytesIO(first.getvalue()), str(dest)) == {"files": 3, "bytes": 3000 + 1 + 10}
    assert (dest / "b dir" / "inner.bin").read_bytes() == (src / "b dir" / "inner.bin").read_bytes()
    assert os.stat(dest / "c.sh").st_mode & 0o777 == 0o755 and not (dest / "link").exists()


def test_the_password_verifier_is_stable_and_never_holds_the_password():
    password = "correct horse battery staple"
    verifier = services.scram_verifier(password)
    assert verifier == services.scram_verifier(password) != services.scram_verifier(password + "!")
    assert verifier.startswith("SCRAM-SHA-256$4096:") and password not in verifier
    env = services.service_env(pg={"dbname": "blog", "role": "blog", "port": 5433}, host="10.0.0.5",
                               password="p@ss/word", files_dir="/srv/toppcloud/apps/blog/files")
    assert env["DATABASE_URL"] == "postgres://blog:p%40ss%2Fword@10.0.0.5:5433/blog"
    assert env["CONFIG_FILES"] == "/srv/toppcloud/apps/blog/files" and env["CONFIG_PG_PORT"] == "5433"


# --- against this machine's PostgreSQL, as the node program runs ------------------------

def superuser(sql, db="postgres"):
    r = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                        "-p", str(PG_PORT), "-d", db, "-c", sql], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def database():
    name = f"tcdata-{os.getpid()}"
    superuser(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    superuser(f'DROP ROLE IF EXISTS "{name}"')
    superuser(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{PASSWORD}'")
    superuser(f'CREATE DATABASE "{name}" OWNER "{name}"')
    superuser(f'SET ROLE "{name}"; CREATE TABLE items (id bigserial PRIMARY KEY, label text NOT NULL); '
              "CREATE TABLE tags (item bigint REFERENCES items, tag text); "
              "INSERT INTO items (label) SELECT 'item ' || g FROM generate_series(1, 300000) g; "
              "INSERT INTO tags VALUES (2, 'b'), (1, 'z'), (1, 'a'), (3, E'back\\\\slash')", db=name)
    superuser("ANALYZE", db=name)
    yield {"version": pg_version(), "port": PG_PORT, "dbname": name, "role": name}
    for db in (name, name + "__restore", name + "__old"):
        superuser(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    superuser(f'DROP ROLE IF EXISTS "{name}"')


def pg_version():
    return superuser("SHOW server_version_num").strip()[:2]


def dump(spec, tmp_path, name="dump.tar"):
    path = tmp_path / name
    with open(path, "wb") as f:
        w = ArchiveWriter(f)
        services.dump_into(Events(), w, [(LocalTransport(), "postgresql.sql", spec)], password=PASSWORD)
        w.finish(app="demo", release="r1", created_at="now", services=["postgresql"])
    return path


def test_it_dumps_rows_in_key_order_the_same_way_twice(database, tmp_path):
    a, b = dump(database, tmp_path, "a.tar"), dump(database, tmp_path, "b.tar")
    sql_a = tarfile.open(a).extractfile("postgresql.sql").read()
    assert sql_a == tarfile.open(b).extractfile("postgresql.sql").read()
    text = sql_a.decode()
    rows = text.split("COPY public.items (id, label) FROM stdin;\n")[1].split("\\.\n")[0].splitlines()
    assert len(rows) == 300000 and [int(r.split("\t")[0]) for r in rows] == list(range(1, 300001))
    tags = text.split("COPY public.tags (item, tag) FROM stdin;\n")[1].split("\\.\n")[0].splitlines()
    assert tags == ["1\ta", "1\tz", "2\tb", "3\tback\\\\slash"]  # no primary key: whole-row order
    assert "SELECT pg_catalog.setval('public.items_id_seq', 300000, true);" in text
    assert text.index("CREATE TABLE public.items") < text.index("COPY public.items") < text.index(
        "ADD CONSTRAINT items_pkey") < text.index("FOREIGN KEY (item)")


def restore(spec, path, swap=True):
    """Run the node program's restore as the control plane does, optionally dying before the swap."""
    if swap:
        return services.restore(LocalTransport(), Events(), str(path), postgresql=spec, password=PASSWORD)
    stream = LocalTransport().open(services._argv("restore", {"size": os.path.getsize(path), "postgresql": spec,
                                                             "files": None}))
    stream.stdin.write(PASSWORD.encode() + b"\n" + path.read_bytes())
    stream.stdin.flush()
    assert json.loads(stream.stdout.readline()) == {"received": os.path.getsize(path)}
    assert json.loads(stream.stdout.readline())["staged"]["postgresql"]
    return stream.finish(check=False)  # stdin closes without "swap": the control plane went away


def test_it_restores_into_a_staging_database_and_swaps_it_in(database, tmp_path):
    path = dump(database, tmp_path)
    superuser("DELETE FROM tags; UPDATE items SET label = 'changed'", db=database["dbname"])
    result = restore(database, path)
    assert result["swapped"] == ["postgresql"]
    assert superuser("SELECT count(*), min(label) FROM items", db=database["dbname"]).strip() == "300000|item 1"
    assert superuser("SELECT string_agg(tag, ',' ORDER BY tag) FROM tags", db=database["dbname"]).strip() == \
        "a,b,back\\slash,z"
    assert superuser("SELECT tableowner FROM pg_tables WHERE tablename = 'items'",
                     db=database["dbname"]).strip() == database["role"]


def test_without_the_swap_word_nothing_changes(database, tmp_path):
    path = dump(database, tmp_path)
    superuser("UPDATE items SET label = 'kept' WHERE id = 1", db=database["dbname"])
    r = restore(database, path, swap=False)
    assert r.rc == 2 and "went away before the swap" in r.stderr
    assert superuser("SELECT label FROM items WHERE id = 1", db=database["dbname"]).strip() == "kept"
    assert superuser(f"SELECT count(*) FROM pg_database WHERE datname = '{database['dbname']}__restore'").strip() == "0"


def test_an_archive_cannot_run_psql_commands_on_the_node(database, tmp_path):
    marker = tmp_path / "pwned"
    sql = f"CREATE TABLE x (id int);\n\\! touch {marker}\n".encode()
    path = archive(tmp_path, sql=sql)
    with pytest.raises(DataError) as refused:
        restore(database, path)
    assert "did not load" in str(refused.value) and not marker.exists()
    assert superuser("SELECT count(*) FROM items", db=database["dbname"]).strip() == "300000"


def test_an_archive_is_loaded_only_as_the_apps_role_logged_in_with_its_password(database, tmp_path):
    path = archive(tmp_path, sql=b"CREATE TABLE x (id int);\n")
    with pytest.raises(DataError, match="no password for role .* came on stdin"):
        services.restore(LocalTransport(), Events(), str(path), postgresql=database)  # no password: refused first
    assert superuser(f"SELECT count(*) FROM pg_database WHERE datname = '{database['dbname']}__restore'").strip() == "0"
    sql = tmp_path / "x.sql"
    sql.write_bytes(b"CREATE TABLE x (id int);\n")
    with pytest.raises(DataError, match="only as the app's own role, never as the superuser"):
        node_data.load_sql(node_data._Pg(database), database["dbname"], str(sql))
    assert superuser("SELECT count(*) FROM pg_tables WHERE tablename = 'x'", db=database["dbname"]).strip() == "0"


@pytest.mark.parametrize("rows_section", [
    b"\\! touch MARKER\n",  # a psql command where rows belong
    b"COPY public.x (id) FROM stdin;\n1\n\\.\n\\! touch MARKER\n",  # after a table's rows
    b"COPY public.x (id) FROM stdin; \\! touch MARKER\n1\n\\.\n",  # in a COPY line
])
def test_a_dump_shaped_archive_cannot_run_psql_commands_either(database, tmp_path, rows_section):
    marker = tmp_path / "pwned"
    sql = (b"CREATE TABLE public.x (id int);\n--\n" + node_data.ROWS_MARK + b"--\n"
           + rows_section.replace(b"MARKER", str(marker).encode()) + b"--\n" + node_data.POST_MARK + b"--\n")
    with pytest.raises(DataError):
        restore(database, archive(tmp_path, sql=sql))
    assert not marker.exists()


def test_big_tables_load_in_parallel_sessions_with_every_row(database, tmp_path, monkeypatch):
    path = dump(database, tmp_path)
    sql = tmp_path / "dump.sql"
    sql.write_bytes(tarfile.open(path).extractfile("postgresql.sql").read())
    with open(sql, "rb") as f:
        import mmap
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        monkeypatch.setattr(node_data, "_SPLIT_BYTES", 1 << 16)
        schema, chunks, statements, rest = node_data._load_plan(mm, 3)
        headers = [h for h, _ in chunks]
        assert headers.count(b"COPY public.items (id, label) FROM stdin;\n") == 3  # split in three
        assert statements == [b"SELECT pg_catalog.setval('public.items_id_seq', 300000, true);\n"]
        assert sum(hi - lo for _, (lo, hi) in chunks) == sum(
            len(b) for b in text_blocks(mm[:]))  # the pieces cover the rows exactly
        mm.close()
    target = database["dbname"] + "__restore"
    superuser(f'DROP DATABASE IF EXISTS "{target}"')
    superuser(f'CREATE DATABASE "{target}" OWNER "{database["role"]}"')
    rows = node_data.load_sql(node_data._Pg(database).login(database["role"], PASSWORD), target, str(sql), workers=3)
    # What a restore's events say it loaded: every row of every table of the dump (items' 300,000 and the rest).
    assert rows == sum(block.count(b"\n") for block in text_blocks(sql.read_bytes())) >= 300000
    assert superuser("SELECT count(*), count(DISTINCT id), sum(id) FROM items", db=target).strip() == \
        f"300000|300000|{300000 * 300001 // 2}"
    assert superuser("SELECT count(*) FROM pg_indexes WHERE tablename = 'items'", db=target).strip() == "1"
    assert superuser("SELECT nextval('items_id_seq')", db=target).strip() == "300001"


def text_blocks(sql):
    """The row bytes of each COPY block of a dump."""
    blocks = []
    for part in sql.split(b" FROM stdin;\n")[1:]:
        blocks.append(part[:part.index(b"\\.\n")] if not part.startswith(b"\\.\n") else b"")
    return blocks
