"""Publishing a release's static files to a CDN origin before the release goes live (static_publish).

The destination is an rsync destination: a directory on this machine (a
mounted bucket, an NFS export), an rsync daemon (rsync://host/module/dir)
or a directory over ssh ([user@]host:/dir, with the control plane's key and
the system's known_hosts: an unknown host key is refused). Files land in
<destination>/<app>/<release>/, so each release's URLs stay valid while
older pages reference them; nothing is deleted there.
"""

import os
import re
import shlex
import subprocess

from .release import validate_release
from .validate import validate_name

_DEST_RE = re.compile(r"(/[A-Za-z0-9._/-]*|rsync://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._/-]+"
                      r"|([a-z_][a-z0-9_-]*@)?[A-Za-z0-9.-]+:/[A-Za-z0-9._/-]*)")


class PublishError(Exception):
    pass


def validate_destination(value, field="TOPPCLOUD_STATIC_PUBLISH"):
    if not isinstance(value, str) or not _DEST_RE.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(f"{field} {value!r} is invalid: give a directory (/srv/cdn), rsync://host/module/dir "
                         "or [user@]host:/dir, with letters, digits, '.', '_', '-' and '/' only")
    return value.rstrip("/") or "/"


def publish(emit, src_static_dir, destination, app, release, *, identity_file=None, timeout=600):
    """Copy src_static_dir's files to <destination>/<app>/<release>/; the rsync stats go into a command event."""
    destination = validate_destination(destination)
    target = f"{destination}/{validate_name(app, 'app')}/{validate_release(release)}/"
    if not os.path.isdir(src_static_dir):
        emit("log", text=f"the release has no static directory {os.path.basename(src_static_dir)}: nothing published")
        return None
    argv = ["rsync", "-r", "--checksum", "--stats", "--mkpath", "--chmod=D755,F644"]
    if identity_file:
        argv += ["-e", shlex.join(["ssh", "-i", identity_file, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])]
    argv += ["--", src_static_dir.rstrip("/") + "/", target]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PublishError(f"publishing the static files to {target} took more than {timeout} s") from None
    emit("command", step="static publish", argv=argv, rc=r.returncode, stdout=r.stdout, stderr=r.stderr)
    if r.returncode != 0:
        raise PublishError(f"publishing the static files to {target} failed (rsync exit {r.returncode}): "
                           f"{r.stderr.strip()[-500:]}")
    return target
