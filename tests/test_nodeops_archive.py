import io
import os
import tarfile

import pytest

from nodeops import archive as archive_module
from nodeops.archive import ArchiveError, pack, sha256_file, unpack


def make_app(root):
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "app.py").write_text("def application(environ, start_response): pass\n")
    (root / "app.ini").write_text("[production]\napp_name = x\nrunner = app:application\n")
    (root / "bin").mkdir()
    (root / "bin" / "migrate").write_text("#!/bin/sh\n")
    (root / "bin" / "migrate").chmod(0o755)
    (root / "empty").mkdir()
    (root / "static").mkdir()
    (root / "static" / "style.css").write_text("body {}\n")
    (root / "static" / ("é" * 60 + ".txt")).write_text("a long, non-ASCII name\n")
    os.symlink("static/style.css", root / "style.css")
    os.symlink("../static", root / "pkg" / "assets")
    return root


def files_of(tree):
    """{relative name: ('file', bytes, executable) | ('link', target) | ('dir',)}"""
    result = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, tree)
            if os.path.islink(path):
                result[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                result[rel] = ("dir",)
            else:
                with open(path, "rb") as f:
                    result[rel] = ("file", f.read(), os.access(path, os.X_OK))
    return result


def test_same_directory_packs_to_the_same_bytes(tmp_path):
    app = make_app(tmp_path / "app")
    sha1, path1, size1 = pack(app, tmp_path / "a")
    sha2, path2, size2 = pack(app, tmp_path / "b")
    assert sha1 == sha2 and size1 == size2
    assert open(path1, "rb").read() == open(path2, "rb").read()
    assert path1 == os.path.join(tmp_path / "a", sha1 + ".tar.gz")
    assert sha256_file(path1) == sha1
    assert size1 == os.path.getsize(path1)


def test_a_changed_file_changes_the_sha(tmp_path):
    app = make_app(tmp_path / "app")
    sha1, _, _ = pack(app, tmp_path / "out")
    (app / "app.py").write_text("changed\n")
    sha2, _, _ = pack(app, tmp_path / "out")
    assert sha1 != sha2
    (app / "app.py").write_text("def application(environ, start_response): pass\n")
    (app / "app.py").chmod(0o755)  # the executable bit is content too
    assert pack(app, tmp_path / "out")[0] not in (sha1, sha2)
    assert len(os.listdir(tmp_path / "out")) == 3


def test_times_owners_modes_and_skipped_files_do_not_change_the_sha(tmp_path):
    app = make_app(tmp_path / "app")
    sha, path, _ = pack(app, tmp_path / "out")
    stored = os.stat(path)
    for p in [app / "app.py", app / "pkg", app / "bin" / "migrate"]:
        os.utime(p, (1, 1))
    (app / "app.py").chmod(0o600)
    (app / "bin" / "migrate").chmod(0o700)
    if os.geteuid() == 0:
        os.chown(app / "app.py", 1234, 1234)
        os.lchown(app / "style.css", 1234, 1234)
    (app / ".git").mkdir()
    (app / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (app / "pkg" / "__pycache__").mkdir()
    (app / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (app / "old.pyc").write_bytes(b"\0")
    (app / ".DS_Store").write_bytes(b"\0")
    assert pack(app, tmp_path / "out") == (sha, path, stored.st_size)
    # Stored once: the existing archive was not rewritten.
    assert os.stat(path).st_mtime_ns == stored.st_mtime_ns
    assert os.listdir(tmp_path / "out") == [sha + ".tar.gz"]


def test_an_archive_inside_the_app_directory_is_not_packed(tmp_path):
    app = make_app(tmp_path / "app")
    sha = pack(app, tmp_path / "out")[0]
    assert pack(app, app / "releases")[0] == sha
    assert pack(app, app / "releases")[0] == sha


def test_round_trip_with_internal_links(tmp_path):
    app = make_app(tmp_path / "app")
    _, path, _ = pack(app, tmp_path / "out")
    names = unpack(path, tmp_path / "release")
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert "pkg/assets" in names and "empty" in names
    assert files_of(tmp_path / "release") == files_of(app)
    assert (tmp_path / "release" / "style.css").read_text() == "body {}\n"
    assert oct(os.stat(tmp_path / "release" / "app.py").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "release" / "bin" / "migrate").st_mode & 0o777) == oct(0o755)
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "../static/../../outside", "../loop/../.."])
def test_pack_refuses_links_pointing_outside(tmp_path, target):
    app = make_app(tmp_path / "app")
    os.symlink(".", app / "loop")  # inside itself, fine on its own
    os.symlink(target, app / "pkg" / "bad")
    with pytest.raises(ArchiveError) as e:
        pack(app, tmp_path / "out")
    assert str(e.value).startswith(f"app file 'pkg/bad' is a symlink to {target!r}")
    assert os.listdir(tmp_path / "out") == []  # no temporary file left behind


def test_pack_refuses_special_files(tmp_path):
    app = make_app(tmp_path / "app")
    os.mkfifo(app / "pkg" / "pipe")
    with pytest.raises(ArchiveError) as e:
        pack(app, tmp_path / "out")
    assert str(e.value) == ("app file 'pkg/pipe' is a fifo; only files, directories "
                            "and symlinks can be deployed")
    assert os.listdir(tmp_path / "out") == []


def test_pack_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ArchiveError) as e:
        pack(tmp_path / "nope", tmp_path / "out")
    assert str(e.value) == f"app directory '{tmp_path}/nope' does not exist or is not a directory"


# ------------------------------------------------------- hostile archives


def evil_tar(path, *members):
    """Write a .tar.gz of (name, type, linkname) members, regular files with content."""
    with tarfile.open(path, "w:gz") as tar:
        for name, type_, linkname in members:
            info = tarfile.TarInfo(name)
            info.type = type_
            info.linkname = linkname
            data = b"pwned\n" if type_ == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


OK_FILE = ("ok.txt", tarfile.REGTYPE, "")
OUTSIDE = "would be written outside the release directory"


@pytest.mark.parametrize("members, message", [
    ([OK_FILE, ("../x", tarfile.REGTYPE, "")], f"archive member '../x' {OUTSIDE}"),
    ([OK_FILE, ("../../etc/passwd", tarfile.REGTYPE, "")], f"archive member '../../etc/passwd' {OUTSIDE}"),
    ([OK_FILE, ("a/../../x", tarfile.REGTYPE, "")], f"archive member 'a/../../x' {OUTSIDE}"),
    ([OK_FILE, ("/etc/x", tarfile.REGTYPE, "")], f"archive member '/etc/x' {OUTSIDE}"),
    ([OK_FILE, ("passwd", tarfile.SYMTYPE, "/etc/passwd")],
     "archive member 'passwd' is a link to '/etc/passwd', outside the release directory"),
    ([OK_FILE, ("a/x", tarfile.SYMTYPE, "../../x")],
     "archive member 'a/x' is a link to '../../x', outside the release directory"),
    # Each link alone stays inside; together they climb out.
    ([("d", tarfile.SYMTYPE, "."), ("x", tarfile.SYMTYPE, "d/sub/../..")],
     "archive member 'x' is a link to 'd/sub/../..', outside the release directory"),
    ([OK_FILE, ("a", tarfile.SYMTYPE, "b"), ("b", tarfile.SYMTYPE, "a")],
     "archive member 'a' is a link to 'b', which leads to a loop of links"),
    ([OK_FILE, ("h", tarfile.LNKTYPE, "/etc/passwd")],
     "archive member 'h' is a hardlink to '/etc/passwd', outside the release directory"),
    ([OK_FILE, ("h", tarfile.LNKTYPE, "../../etc/passwd")],
     "archive member 'h' is a hardlink to '../../etc/passwd', outside the release directory"),
    ([("h", tarfile.LNKTYPE, "ok.txt"), OK_FILE],
     "archive member 'h' is a hardlink to 'ok.txt', which is not a file earlier in the archive"),
    ([OK_FILE, ("null", tarfile.CHRTYPE, "")],
     "archive member 'null' is a character device; only files, directories and links are allowed"),
    ([OK_FILE, ("sda", tarfile.BLKTYPE, "")],
     "archive member 'sda' is a block device; only files, directories and links are allowed"),
    ([OK_FILE, ("pipe", tarfile.FIFOTYPE, "")],
     "archive member 'pipe' is a fifo; only files, directories and links are allowed"),
    # A link to a directory outside, then a file written through it.
    ([("etc", tarfile.SYMTYPE, "/etc"), ("etc/cron.d/x", tarfile.REGTYPE, "")],
     "archive member 'etc' is a link to '/etc', outside the release directory"),
    # Even when the link itself points inside.
    ([("d", tarfile.DIRTYPE, ""), ("l", tarfile.SYMTYPE, "d"), ("l/x", tarfile.REGTYPE, "")],
     "archive member 'l/x' would be written through the link 'l'"),
    ([("l/x", tarfile.REGTYPE, ""), ("d", tarfile.DIRTYPE, ""), ("l", tarfile.SYMTYPE, "d")],
     "archive member 'l/x' would be written through the link 'l'"),
    ([OK_FILE, ("./ok.txt", tarfile.SYMTYPE, "x")], "archive member './ok.txt' appears twice in the archive"),
    ([OK_FILE, ("bad\nname", tarfile.REGTYPE, "")],
     "archive member 'bad\\nname' has a control character in its name or link target"),
])
def test_unpack_refuses_hostile_archives_before_writing_anything(tmp_path, members, message):
    archive = evil_tar(tmp_path / "evil.tar.gz", *members)
    dest = tmp_path / "release"
    with pytest.raises(ArchiveError) as e:
        unpack(archive, dest)
    assert str(e.value) == message
    assert not dest.exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.tar.gz"]


def test_unpack_into_an_existing_empty_directory(tmp_path):
    archive = evil_tar(tmp_path / "ok.tar.gz", ("./", tarfile.DIRTYPE, ""), OK_FILE,
                       ("h", tarfile.LNKTYPE, "ok.txt"), ("sub/", tarfile.DIRTYPE, ""))
    (tmp_path / "release").mkdir()
    assert unpack(archive, tmp_path / "release") == ["ok.txt", "h", "sub"]
    assert (tmp_path / "release" / "h").read_text() == "pwned\n"
    with pytest.raises(ArchiveError) as e:
        unpack(archive, tmp_path / "release")
    assert str(e.value) == f"release directory '{tmp_path}/release' exists and is not empty"


def test_unpack_refuses_damaged_archives(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ArchiveError) as e:
        unpack(tmp_path / "junk.tar.gz", tmp_path / "release")
    assert str(e.value).startswith(f"archive '{tmp_path}/junk.tar.gz' is not a readable .tar.gz: ")
    app = make_app(tmp_path / "app")
    _, path, size = pack(app, tmp_path / "out")
    with open(path, "rb") as f:
        (tmp_path / "cut.tar.gz").write_bytes(f.read(size // 2))
    with pytest.raises(ArchiveError):
        unpack(tmp_path / "cut.tar.gz", tmp_path / "release")
    assert not (tmp_path / "release").exists()


def test_the_data_filter_backs_up_the_checks(tmp_path, monkeypatch):
    """Were a bad member to get past the checks, tarfile's 'data' filter refuses
    it and what was written already is removed."""
    monkeypatch.setattr(archive_module, "_check_members", lambda members: [])
    archive = evil_tar(tmp_path / "evil.tar.gz", OK_FILE, ("../x", tarfile.REGTYPE, ""))
    (tmp_path / "release").mkdir()
    with pytest.raises(ArchiveError) as e:
        unpack(archive, tmp_path / "release")
    assert str(e.value).startswith("archive member '../x' was refused: ")
    assert os.listdir(tmp_path / "release") == []
    assert not (tmp_path / "x").exists()


def test_a_corrupted_archive_is_refused(tmp_path):
    app = make_app(tmp_path / "app")
    _, path, size = pack(app, tmp_path / "out")
    data = bytearray(open(path, "rb").read())
    data[size // 2] ^= 0xFF
    (tmp_path / "bad.tar.gz").write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        unpack(tmp_path / "bad.tar.gz", tmp_path / "release")
    assert not (tmp_path / "release").exists()


def test_unpack_checks_the_expected_sha(tmp_path):
    app = make_app(tmp_path / "app")
    sha, path, _ = pack(app, tmp_path / "out")
    assert "app.py" in unpack(path, tmp_path / "r1", sha256=sha)
    with pytest.raises(ArchiveError) as e:
        unpack(path, tmp_path / "r2", sha256="0" * 64)
    assert str(e.value) == (f"archive {path!r} has sha256 {sha}, expected {'0' * 64}: "
                            "it was changed or damaged")
    assert not (tmp_path / "r2").exists()
