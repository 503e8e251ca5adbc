"""Content-addressed release archives and their safe extraction.

pack() turns an app directory into a .tar.gz whose bytes depend only on the
files' names, contents, executable bits and symlink targets, so the same
code always gives the same sha256 (a release is stored once, and an
unchanged app is recognised as such).

unpack() treats every archive as hostile: it checks all members first and
refuses the whole archive, naming the member, before writing anything.
"""

import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zlib

from .errors import NodeOpError

SKIP_NAMES = frozenset({".git", "__pycache__", ".DS_Store"})
SKIP_SUFFIXES = (".pyc",)

_FILE_MODE, _EXEC_MODE, _DIR_MODE, _LINK_MODE = 0o644, 0o755, 0o755, 0o777


class ArchiveError(NodeOpError, ValueError):
    pass


# What a damaged or hostile .tar.gz can raise while being read.
_READ_ERRORS = (OSError, tarfile.TarError, EOFError, zlib.error)


class _LinkLoop(Exception):
    pass


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _has_control(name):
    # Newlines and the like in a file name break logs, rsync file lists and
    # shell-ish tools on the host; a NUL cannot be a file name at all.
    # A backslash is an ordinary character in a POSIX name, so it is allowed.
    return any(ord(c) < 32 or ord(c) == 127 for c in name)


# ---------------------------------------------------------------- pack


def pack(app_dir, dest_dir):
    """Pack app_dir into dest_dir/<sha256>.tar.gz; return (sha256, path, size).

    If an archive with that sha256 exists already it is left as it is.
    """
    root = os.path.realpath(app_dir)
    if not os.path.isdir(root):
        raise ArchiveError(f"app directory {os.fspath(app_dir)!r} does not exist or is not a directory")
    os.makedirs(dest_dir, exist_ok=True)
    skip_dir = os.path.realpath(dest_dir)  # in case dest_dir is inside app_dir

    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".pack-", suffix=".tmp")
    try:
        with open(fd, "wb") as raw:
            # filename="" and mtime=0 keep the gzip header free of the
            # temporary file's name and of the time of packing.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    _add_tree(tar, root, "", skip_dir, _tree_links(root))
        sha = sha256_file(tmp)
        final = os.path.join(dest_dir, sha + ".tar.gz")
        if os.path.exists(final):
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)  # atomic: readers never see half an archive
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return sha, final, os.path.getsize(final)


def _add_tree(tar, root, rel, skip_dir, links):
    directory = os.path.join(root, rel)
    # Sorted by name so the archive does not depend on directory order.
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name in SKIP_NAMES or entry.name.endswith(SKIP_SUFFIXES):
            continue
        name = f"{rel}/{entry.name}" if rel else entry.name
        if _has_control(name):
            raise ArchiveError(f"app file {name!r} has a control character in its name")
        st = entry.stat(follow_symlinks=False)
        info = tarfile.TarInfo(name)
        # Owner, group and times are left at 0/"" on purpose: only content counts.
        info.mtime = 0
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(entry.path)
            _check_link_inside(name, target, links)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, _LINK_MODE
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            if os.path.realpath(entry.path) == skip_dir:
                continue
            info.type, info.mode = tarfile.DIRTYPE, _DIR_MODE
            tar.addfile(info)
            _add_tree(tar, root, name, skip_dir, links)
        elif stat.S_ISREG(st.st_mode):
            with open(entry.path, "rb") as f:
                # Size from the open file, so a file replaced meanwhile
                # cannot make the header and the data disagree.
                fst = os.fstat(f.fileno())
                info.size = fst.st_size
                info.mode = _EXEC_MODE if fst.st_mode & 0o111 else _FILE_MODE
                tar.addfile(info, f)
        else:
            raise ArchiveError(f"app file {name!r} is a {_kind(st.st_mode)}; "
                               "only files, directories and symlinks can be deployed")


def _check_link_inside(name, target, links):
    if os.path.isabs(target):
        raise ArchiveError(f"app file {name!r} is a symlink to {target!r}, an absolute path; "
                           "only relative links inside the app directory can be deployed")
    # The rule unpack() applies (so whatever pack() makes can be unpacked);
    # it follows the tree's other links the way the kernel would.
    try:
        inside = _resolve(name.split("/")[:-1] + target.split("/"), links) is not None
    except _LinkLoop:
        raise ArchiveError(f"app file {name!r} is a symlink to {target!r}, "
                           "which leads to a loop of links") from None
    if not inside:
        raise ArchiveError(f"app file {name!r} is a symlink to {target!r}, outside the app directory")


def _tree_links(root):
    """Every symlink below root, skipped directories included (so a link
    cannot escape through one of them)."""
    links = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                links[os.path.relpath(p, root).replace(os.sep, "/")] = os.readlink(p)
    return links


def _kind(mode):
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


# -------------------------------------------------------------- unpack


def unpack(archive_path, dest_dir, *, sha256=None):
    """Extract archive_path into dest_dir (absent or empty); return the member names.

    Raises ArchiveError naming the first bad member, before anything is
    written. With sha256, the archive must also have that digest.
    """
    if os.path.lexists(dest_dir) and (not os.path.isdir(dest_dir) or os.listdir(dest_dir)):
        raise ArchiveError(f"release directory {os.fspath(dest_dir)!r} exists and is not empty")
    if sha256 is not None:
        actual = sha256_file(archive_path)
        if actual != sha256:
            raise ArchiveError(f"archive {os.fspath(archive_path)!r} has sha256 {actual}, "
                               f"expected {sha256}: it was changed or damaged")
    try:
        # tarfile stops at the end-of-archive blocks and never reaches the
        # gzip trailer, so a damaged stream could go unnoticed: reading it
        # through once checks its CRC and length.
        with gzip.open(archive_path, "rb") as gz:
            while gz.read(1 << 20):
                pass
        tar = tarfile.open(archive_path, mode="r:gz", errorlevel=2)
    except _READ_ERRORS as e:
        raise ArchiveError(f"archive {os.fspath(archive_path)!r} is not a readable .tar.gz: {e}") from None
    with tar:
        try:
            members = tar.getmembers()
        except _READ_ERRORS as e:
            raise ArchiveError(f"archive {os.fspath(archive_path)!r} is damaged: {e}") from None
        names = _check_members(members)

        created = not os.path.lexists(dest_dir)
        os.makedirs(dest_dir, exist_ok=True)
        try:
            # The 'data' filter repeats the essential checks (and drops
            # owners and setuid bits) should anything get past ours.
            tar.extractall(dest_dir, members=[m for m in members if _norm(m.name)], filter="data")
        except _READ_ERRORS as e:
            _empty(dest_dir, created)
            member = getattr(e, "tarinfo", None)
            if member is not None:
                raise ArchiveError(f"archive member {member.name!r} was refused: {e}") from None
            raise ArchiveError(f"archive {os.fspath(archive_path)!r} could not be extracted: {e}") from None
    return names


def _empty(dest_dir, created):
    """Leave dest_dir as it was before a failed extraction."""
    if created:
        shutil.rmtree(dest_dir, ignore_errors=True)
        return
    for name in os.listdir(dest_dir):
        path = os.path.join(dest_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def _norm(name):
    """'./a//b/' -> 'a/b'; the archive's root itself -> ''."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _check_members(members):
    """Refuse the archive if any member could write outside the release."""

    def refuse(member, why):
        return ArchiveError(f"archive member {member.name!r} {why}")

    outside = "would be written outside the release directory"
    links = {}   # normalised name -> target, of every symlink member
    seen = set()
    for m in members:
        if _has_control(m.name) or _has_control(m.linkname):
            raise refuse(m, "has a control character in its name or link target")
        if m.name.startswith("/") or ".." in m.name.split("/"):
            raise refuse(m, outside)
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise refuse(m, f"is a {_member_kind(m)}; only files, directories and links are allowed")
        name = _norm(m.name)
        if not name and not m.isdir():
            raise refuse(m, "has an empty name")
        if name in seen:
            # A second member of the same name could replace a checked one.
            raise refuse(m, "appears twice in the archive")
        seen.add(name)
        if m.issym():
            links[name] = m.linkname

    names = []
    earlier_files = set()
    for m in members:
        name = _norm(m.name)
        if not name:
            continue  # the "./" entry some tars carry: it is dest_dir itself
        parts = name.split("/")
        # Nothing may be written through a link, whatever the order of the
        # members: a member below a symlink member is refused.
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise refuse(m, f"would be written through the link {'/'.join(parts[:i])!r}")
        if m.issym():
            target = m.linkname
            try:
                inside = not target.startswith("/") and _resolve(parts[:-1] + target.split("/"), links) is not None
            except _LinkLoop:
                raise refuse(m, f"is a link to {target!r}, which leads to a loop of links") from None
            if not inside:
                raise refuse(m, f"is a link to {target!r}, outside the release directory")
        elif m.islnk():
            # Hardlink names are relative to the archive root, not to the link.
            target = m.linkname
            if target.startswith("/") or _resolve(target.split("/"), {}) is None:
                raise refuse(m, f"is a hardlink to {target!r}, outside the release directory")
            if _norm(target) not in earlier_files:
                raise refuse(m, f"is a hardlink to {target!r}, which is not a file earlier in the archive")
        elif m.isreg():
            earlier_files.add(name)
        names.append(name)
    return names


def _resolve(parts, links, depth=0):
    """Resolve a path of the release as the kernel would, following the
    archive's own symlinks; None if it leaves the release directory.

    Raises _LinkLoop past 40 links, the kernel's limit too (ELOOP).
    """
    resolved = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        resolved.append(part)
        target = links.get("/".join(resolved))
        if target is not None:
            if target.startswith("/"):
                return None
            if depth >= 40:
                raise _LinkLoop()
            resolved = _resolve(resolved[:-1] + target.split("/"), links, depth + 1)
            if resolved is None:
                return None
    return resolved


def _member_kind(m):
    if m.ischr():
        return "character device"
    if m.isblk():
        return "block device"
    if m.isfifo():
        return "fifo"
    return f"special member (type {m.type!r})"
