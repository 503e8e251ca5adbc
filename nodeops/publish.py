"""Publishing a release's static files to a CDN origin before the release goes live (static_publish).

The destination is an S3-compatible bucket (s3://bucket/prefix: AWS, MinIO,
Ceph, R2...; the endpoint and keys come from the workers' settings) or an
rsync destination: a directory on this machine (a mounted bucket, an NFS
export), an rsync daemon (rsync://host/module/dir) or a directory over ssh
([user@]host:/dir, with the control plane's key and the system's
known_hosts: an unknown host key is refused). Files land in
<destination>/<app>/<release>/, so each release's URLs stay valid while
older pages reference them; nothing is deleted there.
"""

import base64
import hashlib
import mimetypes
import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor

from .errors import NodeOpError
from .release import validate_release
from .validate import validate_name

# S3 bucket names: 3-63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit.
_S3_RE = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?")
_DEST_RE = re.compile(r"(/[A-Za-z0-9._/-]*|rsync://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._/-]+"
                      r"|([a-z_][a-z0-9_-]*@)?[A-Za-z0-9.-]+:/[A-Za-z0-9._/-]*)")


class PublishError(NodeOpError):
    pass


def validate_destination(value, field="TOPPCLOUD_STATIC_PUBLISH"):
    if isinstance(value, str) and value.startswith("s3://"):
        if not _S3_RE.fullmatch(value) or ".." in value.split("/"):
            raise ValueError(f"{field} {value!r} is invalid: an S3 destination is s3://bucket/prefix, the bucket "
                             "3-63 lower-case letters, digits, '.' and '-', the prefix letters, digits, '.', '_', "
                             "'-' and '/'")
        return value.rstrip("/")
    if not isinstance(value, str) or not _DEST_RE.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(f"{field} {value!r} is invalid: give s3://bucket/prefix, a directory (/srv/cdn), "
                         "rsync://host/module/dir or [user@]host:/dir, with letters, digits, '.', '_', '-' "
                         "and '/' only")
    return value.rstrip("/") or "/"


def publish(emit, src_static_dir, destination, app, release, *, identity_file=None, s3=None, timeout=600):
    """Copy src_static_dir's files to <destination>/<app>/<release>/.

    s3: the client's settings for an s3:// destination (endpoint_url, region_name, aws_access_key_id,
    aws_secret_access_key; empty ones are left to boto3's own lookup). They never reach an event.
    """
    destination = validate_destination(destination)
    target = f"{destination}/{validate_name(app, 'app')}/{validate_release(release)}/"
    if not os.path.isdir(src_static_dir):
        emit("log", text=f"the release has no static directory {os.path.basename(src_static_dir)}: nothing published")
        return None
    if target.startswith("s3://"):
        return _publish_s3(emit, src_static_dir, target, {k: v for k, v in (s3 or {}).items() if v})
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


# Each release has its own key prefix, so an object is never replaced: browsers and the CDN may keep it.
S3_CACHE_CONTROL = "public, max-age=31536000, immutable"


def _publish_s3(emit, src_static_dir, target, options, threads=8):
    """Upload the directory's regular files under target (s3://bucket/key/prefix/) with their content
    types and far-future caching; files already there with the same MD5 (a retried deploy) are skipped."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, _, prefix = target[len("s3://"):].partition("/")
    files, skipped = _regular_files(src_static_dir)
    try:
        client = boto3.client("s3", config=Config(connect_timeout=10, read_timeout=60,
                                                  retries={"max_attempts": 5, "mode": "standard"}), **options)
        there = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            there.update((o["Key"], o["ETag"].strip('"')) for o in page.get("Contents", []))

        def upload(rel):
            with open(os.path.join(src_static_dir, rel), "rb") as f:
                body = f.read()
            md5 = hashlib.md5(body, usedforsecurity=False)
            key = prefix + rel
            if there.get(key) == md5.hexdigest():
                return 0
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentMD5=base64.b64encode(md5.digest()).decode(),
                              ContentType=mimetypes.guess_type(rel)[0] or "application/octet-stream",
                              CacheControl=S3_CACHE_CONTROL)
            return len(body)

        with ThreadPoolExecutor(threads) as pool:
            sizes = list(pool.map(upload, files))
    except NoCredentialsError:
        raise PublishError(f"publishing the static files to {target} failed: no S3 credentials (set "
                           "TOPPCLOUD_S3_ACCESS_KEY_ID and TOPPCLOUD_S3_SECRET_ACCESS_KEY, or give the workers "
                           "an instance role)") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise PublishError(f"publishing the static files to {target} failed: {error.get('Code', '?')}: "
                           f"{error.get('Message', '')}".rstrip(": ")) from None
    except BotoCoreError as exc:
        raise PublishError(f"publishing the static files to {target} failed: {exc}") from None
    uploaded = [size for size in sizes if size]
    emit("log", text=f"static publish: {len(uploaded)} files uploaded ({sum(uploaded)} bytes), "
                     f"{len(files) - len(uploaded)} already there, to {target}"
                     + (f"; not regular files, left out: {', '.join(skipped[:10])}" if skipped else ""))
    return target


def _regular_files(top):
    """Relative paths (with /) of the regular files under top, and of what is left out (symlinks, others)."""
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        for name in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                skipped.append(os.path.normpath(os.path.join(rel_dir, name)))
        for name in sorted(filenames):
            path, rel = os.path.join(dirpath, name), os.path.normpath(os.path.join(rel_dir, name))
            (skipped if os.path.islink(path) or not os.path.isfile(path) else files).append(rel.replace(os.sep, "/"))
    return sorted(files), skipped
