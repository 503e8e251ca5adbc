"""An app archive uploaded in the admin, turned into a Release as `manage.py deploy APP_DIR` makes one.

The archive (.tar.gz, .tgz or .zip of an app directory, app.ini at its top or in its one top directory) is
hostile until proved otherwise: its size and its unpacked size are capped, a .zip is read into a tar stream
member by member, and nodeops.archive.unpack checks every member (outside the directory, through links,
devices, twice the same name, control characters) and refuses the whole archive, naming the member, before
writing anything. Then pack_release checks app.ini and packs it exactly as the command does.
"""

import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile

from jobs.steps.releases import ReleaseRefused, pack_release
from nodeops import appini, archive
from toppcloud_site.records.models import App

MAX_UPLOAD_BYTES = 256 * 2**20     # the archive as sent
MAX_UNPACKED_BYTES = 1024 * 2**20  # everything in it, unpacked
MAX_MEMBERS = 50_000
ARCHIVE_KINDS = ".tar.gz, .tgz or .zip"


def release_from_upload(upload, *, group=None, may_create_app=True):
    """(Release, app.ini warnings) for an uploaded archive (a Django UploadedFile); without may_create_app, an
    archive of an app that has no record yet is refused. A new app is made in `group` (an upload to a group).

    Raises ReleaseRefused, archive.ArchiveError or appini.AppIniError with a message for the person who sent it.
    """
    if upload.size > MAX_UPLOAD_BYTES:
        raise ReleaseRefused(f"{upload.name} is {upload.size} bytes; an app archive may be {MAX_UPLOAD_BYTES} at most")
    work = tempfile.mkdtemp(prefix="toppcloud-upload-")
    try:
        sent = os.path.join(work, "sent")
        with open(sent, "wb") as f:
            for chunk in upload.chunks():
                f.write(chunk)
        tar_gz = _as_tar_gz(sent, upload.name, work)
        _check_unpacked_size(tar_gz, upload.name)
        tree = os.path.join(work, "tree")
        archive.unpack(tar_gz, tree)
        app_dir = _app_dir(tree, upload.name)
        name = appini.parse_app_ini(os.path.join(app_dir, "app.ini")).app_name
        if not may_create_app and not App.objects.filter(name=name).exists():
            raise ReleaseRefused(f"there is no app {name!r}, and creating one needs permission to add apps")
        return pack_release(app_dir, group=group)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _as_tar_gz(path, name, work):
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return path
    if magic == b"PK\x03\x04" or (magic == b"PK\x05\x06"):
        return _zip_to_tar_gz(path, name, os.path.join(work, "from-zip.tar.gz"))
    raise ReleaseRefused(f"{name} is not an app archive: send a {ARCHIVE_KINDS} of the app directory")


def _zip_to_tar_gz(path, name, dest):
    """The zip's members as a tar.gz, so that one set of checks (nodeops.archive.unpack) judges both kinds."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReleaseRefused(f"{name} is not a readable .zip: {exc}") from None
    total = 0
    with zf, gzip.open(dest, "wb") as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ReleaseRefused(f"{name} has {len(infos)} members; an app archive may have {MAX_MEMBERS} at most")
        for info in infos:
            mode = info.external_attr >> 16
            member = tarfile.TarInfo(info.filename)
            try:
                data = _read_capped(zf, info, MAX_UNPACKED_BYTES - total, name)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, NotImplementedError, RuntimeError) as exc:
                raise ReleaseRefused(f"{name}: member {info.filename!r} cannot be read: {exc}") from None
            total += len(data)
            if stat.S_ISLNK(mode):
                member.type, member.linkname = tarfile.SYMTYPE, data.decode("utf-8", "replace")
                tar.addfile(member)
            elif info.is_dir():
                member.type, member.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(member)
            else:
                member.size, member.mode = len(data), 0o755 if mode & 0o111 else 0o644
                tar.addfile(member, io.BytesIO(data))
    return dest


def _read_capped(zf, info, room, name):
    with zf.open(info) as f:
        data = f.read(room + 1)
    if len(data) > room:
        raise ReleaseRefused(f"{name} unpacks to more than {MAX_UNPACKED_BYTES} bytes, the most an app archive may")
    return data


def _check_unpacked_size(tar_gz, name):
    """Refuse an archive whose stream or members are larger than an app may be, before unpacking it."""
    try:
        with gzip.open(tar_gz, "rb") as gz:
            read = 0
            while chunk := gz.read(1 << 20):
                read += len(chunk)
                if read > MAX_UNPACKED_BYTES + (1 << 24):  # the members, plus their headers
                    raise ReleaseRefused(f"{name} unpacks to more than {MAX_UNPACKED_BYTES} bytes, the most an "
                                         "app archive may")
        with tarfile.open(tar_gz, mode="r:gz") as tar:
            members = tar.getmembers()
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise ReleaseRefused(f"{name} is not a readable {ARCHIVE_KINDS}: {exc}") from None
    if len(members) > MAX_MEMBERS:
        raise ReleaseRefused(f"{name} has {len(members)} members; an app archive may have {MAX_MEMBERS} at most")


def _app_dir(tree, name):
    """The unpacked directory holding app.ini: the archive's top, or its one top directory."""
    if os.path.isfile(os.path.join(tree, "app.ini")):
        return tree
    tops = [e for e in os.scandir(tree) if not e.name.startswith(".") and e.name != "__MACOSX"]
    if len(tops) == 1 and tops[0].is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(tops[0].path,
                                                                                               "app.ini")):
        return tops[0].path
    raise ReleaseRefused(f"{name} has no app.ini at its top or in its one top directory: pack the app directory "
                         "(the one with app.ini)")
