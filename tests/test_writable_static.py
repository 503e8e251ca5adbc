"""Writable static files (app.ini writable_static_files): a directory per name outside the releases,
made by deploys and rollbacks, given to every process of the app as $CONFIG_WRITABLE_<NAME>, kept
across deploys, in backups (writable.tar) and put back by restores. The docsite fixture builds its
mkdocs site into /docs; the tests write next to it through the app and through `manage.py run`."""

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile

import pytest

from django.core.management import CommandError, call_command

from jobs.steps import data
from jobs.models import Job
from nodeops.hostside import node_data
from nodeops.hostside.node_data import ArchiveWriter, DataError
from tests.test_data_flow import backup_now, members, request, run_command
from tests.test_deploy_flow import app_copy, deploy, get, rollback
from tests.test_nodeops_data import files_tar
from toppcloud_site.records.models import App, Backup

NOTE = b"kept across deploys \x00\xff\n"


@pytest.fixture(scope="module")
def docsite(tmp_path_factory, ready_nodes, test_hosts):
    """docsite version 1 live on the first test host, with a note written through the app."""
    name = f"docsite{os.getpid() % 100000}"
    app_dir = app_copy(tmp_path_factory.mktemp("docsite"), "docsite", name=name, version="1")
    code, job = deploy(app_dir, ready_nodes[0])
    assert code == 0, job.error
    status, body = request(test_hosts[0], f"{name}.test", "PUT", "/notes/kept.bin", NOTE)
    assert status == 201, body
    return name, job


def docs_dir(node, name):
    return f"{node.root}/apps/{name}/writable/docs"


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.hosts
@pytest.mark.worker
def test_it_makes_the_directory_builds_into_it_and_every_process_gets_its_path(docsite, ready_nodes, test_hosts):
    name, first = docsite
    node, host = ready_nodes[0], test_hosts[0]
    docs = docs_dir(node, name)
    made = first.events.get(kind="service.writable").data
    assert (made["dir"], made["names"]) == (f"{node.root}/apps/{name}/writable", ["docs"])
    assert made["changed"] == [f"created {node.root}/apps/{name}/writable", f"created {docs}"]
    assert stat.S_IMODE(os.stat(docs).st_mode) == 0o755
    # The web processes see it...
    status, body = request(host, f"{name}.test", "GET", "/writable")
    assert (status, json.loads(body)) == (200, {"CONFIG_WRITABLE_DOCS": docs, "exists": True})
    # ...the database updates did (mkdocs built the site there)...
    assert b"<title>docsite version 1</title>" in read(f"{docs}/index.html")
    assert json.loads(read(f"{docs}/build.json"))["version"] == "1"
    assert os.path.isfile(f"{docs}/deploying/index.html") and os.path.isfile(f"{docs}/css/base.css")
    # ...and so does a command run in the release.
    code, job = run_command("run", name, "--", "python", "-c",
                            "import os; d = os.environ['CONFIG_WRITABLE_DOCS']; "
                            "open(os.path.join(d, 'from-run.txt'), 'w').write(d)")
    assert code == 0, job.error
    assert read(f"{docs}/from-run.txt") == docs.encode()
    assert read(f"{docs}/notes/kept.bin") == NOTE
    # The env file, which every process of the release loads, names it.
    [env_file] = [f for f in os.listdir(f"{node.root}/apps/{name}/env") if f.endswith(".env")]
    assert f"CONFIG_WRITABLE_DOCS={docs}" in read(f"{node.root}/apps/{name}/env/{env_file}").decode()


@pytest.mark.hosts
@pytest.mark.worker
def test_its_content_survives_a_redeploy_and_a_rollback(docsite, ready_nodes, test_hosts, tmp_path):
    name, _ = docsite
    node, host = ready_nodes[0], test_hosts[0]
    docs = docs_dir(node, name)
    inode = os.stat(docs).st_ino
    code, job = deploy(app_copy(tmp_path, "docsite", name=name, version="2"), node)
    assert code == 0, job.error
    assert get(host, f"{name}.test")[1] == f"docsite version 2\ndocs in {docs}\n"
    assert read(f"{docs}/notes/kept.bin") == NOTE and os.stat(docs).st_ino == inode  # the same directory, kept
    assert request(host, f"{name}.test", "GET", "/notes/kept.bin") == (200, NOTE)
    assert b"<title>docsite version 2</title>" in read(f"{docs}/index.html")  # rebuilt by the new release
    # nginx serves the directory itself at <location>docs/: the built site and the kept note.
    status, body = request(host, f"{name}.test", "GET", "/docs/")
    assert status == 200 and b"<title>docsite version 2</title>" in body
    assert request(host, f"{name}.test", "GET", "/docs/deploying/")[0] == 200
    assert request(host, f"{name}.test", "GET", "/docs/notes/kept.bin") == (200, NOTE)
    assert request(host, f"{name}.test", "GET", "/docs/missing.html")[0] == 404
    assert job.events.get(kind="service.writable").data["changed"] == []  # there already: left as it was
    assert json.loads(request(host, f"{name}.test", "GET", "/writable")[1])["CONFIG_WRITABLE_DOCS"] == docs

    code, job = rollback(name, node)
    assert code == 0, job.error
    assert get(host, f"{name}.test")[1].startswith("docsite version 1\n")
    assert job.events.get(kind="service.writable").data["changed"] == []
    assert read(f"{docs}/notes/kept.bin") == NOTE
    assert b"<title>docsite version 2</title>" in read(f"{docs}/index.html")  # a rollback runs no update_fetch


def writable_members(path):
    with tarfile.open(fileobj=io.BytesIO(members(path)["writable.tar"])) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isreg() else None, m.mtime, m.uid) for m in tar}


@pytest.mark.hosts
@pytest.mark.worker
def test_a_backup_holds_the_files_and_a_restore_into_a_cleared_directory_puts_them_back(docsite, ready_nodes):
    name, _ = docsite
    node = ready_nodes[0]
    docs = docs_dir(node, name)
    built = read(f"{docs}/index.html")
    first, job = backup_now(name)
    assert first.services == ["writable"] and first.manifest["services"] == ["writable"]  # no service.*: still backed up
    path = str(data.archive_path(first))
    archive = members(path)
    assert list(archive) == ["writable.tar", "manifest.json"]
    assert first.manifest["files"]["writable.tar"]["sha256"] == hashlib.sha256(archive["writable.tar"]).hexdigest()
    inside = writable_members(path)
    assert inside["docs/notes/kept.bin"] == (NOTE, 0, 0)
    assert inside["docs/index.html"][0] == built and inside["docs/from-run.txt"][0] == docs.encode()
    assert list(inside) == sorted(inside) and all(n.startswith("docs") for n in inside)
    # The same data, the same bytes.
    second, _ = backup_now(name)
    assert second.manifest["files"]["writable.tar"] == first.manifest["files"]["writable.tar"]

    code, job = run_command("clear", name, "--yes-delete-data")
    assert code == 0, job.error
    assert os.listdir(docs) == []  # cleared: the directory is there again, empty
    code, job = run_command("restore", first.name, name)
    assert code == 0, job.error
    assert read(f"{docs}/notes/kept.bin") == NOTE and read(f"{docs}/index.html") == built
    assert job.events.get(kind="restore.swapped").data["services"] == ["writable"]
    checkpoint = Backup.objects.get(name=job.result["checkpoint"])
    assert writable_members(str(data.archive_path(checkpoint))) == {
        "docs": (None, 0, 0)}  # what the restore replaced: the cleared directory

    # A directory removed on the node by hand comes back too.
    shutil.rmtree(f"{node.root}/apps/{name}/writable")
    code, job = run_command("restore", first.name, name, "--no-checkpoint")
    assert code == 0, job.error
    assert read(f"{docs}/notes/kept.bin") == NOTE
    assert stat.S_IMODE(os.stat(docs).st_mode) == 0o755


@pytest.mark.hosts
@pytest.mark.worker
def test_a_backup_with_writable_files_is_refused_by_an_app_without_them(docsite):
    name, _ = docsite
    backup = Backup.objects.filter(app__name=name, kind="backup").order_by("-created_at").first()
    other = App.objects.create(name=f"bare{os.getpid() % 100000}w").name
    with pytest.raises(CommandError, match=f"{other} has no data services yet: deploy it with service.postgresql, "
                                           "service.files or writable_static_files"):
        call_command("restore", backup.name, other)
    assert not Job.objects.filter(kind="restore", target=f"app:{other}").exists()


# --- the archive member, without hosts -------------------------------------------------------------------

def archive_with(tmp_path, member):
    path = tmp_path / "a.tar"
    with open(path, "wb") as f:
        w = ArchiveWriter(f)
        w.add("writable.tar", io.BytesIO(member))
        w.finish(app="demo", release="r1", created_at="2026-12-01T00:00:00", services=["writable"])
    return path


@pytest.mark.parametrize("entry, message", [
    (("../outside", tarfile.REGTYPE), "writable.tar member '../outside' is not allowed: paths must stay inside"),
    (("/etc/cron.d/x", tarfile.REGTYPE), "writable.tar member '/etc/cron.d/x' is not allowed"),
    (("docs/../../b", tarfile.REGTYPE), "writable.tar member 'docs/../../b' is not allowed"),
    (("docs/link", tarfile.SYMTYPE), "writable.tar member 'docs/link' is a symbolic link"),
    (("docs/hard", tarfile.LNKTYPE), "writable.tar member 'docs/hard' is a hard link"),
    (("docs/dev", tarfile.CHRTYPE), "writable.tar member 'docs/dev' is a device"),
    (("top.txt", tarfile.REGTYPE), "writable.tar member 'top.txt' is not allowed: everything in it is inside <name>/"),
    (("Bad Name/x", tarfile.REGTYPE), "writable.tar member 'Bad Name/x' is not allowed: everything in it is inside"),
])
def test_a_writable_tar_that_would_write_outside_or_make_links_is_refused(tmp_path, entry, message):
    path = archive_with(tmp_path, files_tar(("docs", tarfile.DIRTYPE), ("docs/ok.txt", tarfile.REGTYPE), entry))
    with pytest.raises(DataError) as refused:
        node_data.verify_archive(path)
    assert message in str(refused.value)
    with pytest.raises(DataError):
        node_data.unpack_files(io.BytesIO(files_tar(entry)), str(tmp_path / "dest"), node_data.WRITABLE)
    assert not (tmp_path / "outside").exists() and os.listdir(tmp_path / "dest") == []


def test_the_writable_dump_holds_only_directories_named_like_writable_ones(tmp_path):
    src = tmp_path / "writable"
    (src / "docs" / "sub").mkdir(parents=True)
    (src / "docs" / "sub" / "a.html").write_text("<p>a</p>")
    (src / "Stray").mkdir()
    (src / "loose.txt").write_text("x")
    os.symlink("/etc", src / "etc")
    first, second = io.BytesIO(), io.BytesIO()
    assert node_data.cmd_dump_writable({"dir": str(src)}, first) == {"skipped": ["Stray", "etc", "loose.txt"]}
    os.utime(src / "docs" / "sub" / "a.html", (1, 1))
    node_data.cmd_dump_writable({"dir": str(src)}, second)
    assert first.getvalue() == second.getvalue()
    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as t:
        assert [m.name for m in t] == ["docs", "docs/sub", "docs/sub/a.html"]
    for _ in node_data._file_entries(io.BytesIO(first.getvalue()), node_data.WRITABLE):
        pass  # what it dumps, a restore takes


def test_ensure_makes_the_directories_once_and_refuses_a_file_in_the_way(tmp_path):
    spec = {"dir": str(tmp_path / "writable"), "names": ["docs", "uploads"]}
    assert node_data.cmd_writable_ensure(spec)["changed"] == [f"created {tmp_path}/writable",
                                                              f"created {tmp_path}/writable/docs",
                                                              f"created {tmp_path}/writable/uploads"]
    (tmp_path / "writable" / "docs" / "keep.txt").write_text("kept")
    assert node_data.cmd_writable_ensure(spec) == {"changed": []}
    assert (tmp_path / "writable" / "docs" / "keep.txt").read_text() == "kept"
    (tmp_path / "writable" / "uploads").rmdir()
    os.symlink("/etc", tmp_path / "writable" / "uploads")
    with pytest.raises(DataError, match="writable/uploads exists and is not a directory"):
        node_data.cmd_writable_ensure(spec)
    with pytest.raises(DataError, match="'../x' is not a writable static directory's name"):
        node_data.cmd_writable_ensure({"dir": spec["dir"], "names": ["../x"]})


@pytest.mark.django_db
def test_the_environment_names_each_directory_and_old_releases_have_none():
    from jobs.steps.environment import release_environment
    from nodeops.layout import NodeLayout
    from toppcloud_site.records.models import Node, Release

    app = App.objects.create(name="wsapp")
    node = Node.objects.create(name="ws1", address="127.0.0.9", transport="local", root="/srv/tc")
    new = Release.objects.create(app=app, name="r2", artifact_sha256="1" * 64,
                                 app_ini={"location_path": "/", "writable_static_files": ["docs", "api-v2"]})
    env = release_environment(app, new, node, NodeLayout("/srv/tc"), "/srv/tc/v", {})
    assert {k: v for k, v in env.items() if k.startswith("CONFIG_WRITABLE_")} == {
        "CONFIG_WRITABLE_DOCS": "/srv/tc/apps/wsapp/writable/docs",
        "CONFIG_WRITABLE_API_V2": "/srv/tc/apps/wsapp/writable/api-v2"}
    old = Release.objects.create(app=app, name="r1", artifact_sha256="0" * 64, app_ini={"location_path": "/"})
    env = release_environment(app, old, node, NodeLayout("/srv/tc"), "/srv/tc/v", {})
    assert not [k for k in env if k.startswith("CONFIG_WRITABLE_")]


def test_a_packed_release_keeps_the_names_without_the_slash(tmp_path):
    from jobs.steps.releases import ini_dict
    from nodeops.appini import parse_app_ini_text

    ini = parse_app_ini_text("[production]\napp_name = a\nrunner = app:application\n"
                             "writable_static_files = /docs /uploads\n")
    assert ini_dict(ini)["writable_static_files"] == ["docs", "uploads"]
