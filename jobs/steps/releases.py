"""From an app directory to a Release: check app.ini, pack, store once."""

import os
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from nodeops import appini, archive
from toppcloud_site.records.models import App, Location, Release


class ReleaseRefused(ValueError):
    pass


def pack_release(app_dir):
    """The Release for this directory: app.ini checked first, the archive stored once by its sha256.

    Raises appini.AppIniError or archive.ArchiveError (their messages name the
    file, line and key, or the path) and ReleaseRefused; nothing reaches a host.
    """
    app_dir = os.path.abspath(app_dir)
    if not os.path.isdir(app_dir):
        raise ReleaseRefused(f"{app_dir} is not a directory")
    ini = appini.parse_app_ini(os.path.join(app_dir, "app.ini"))
    Path(settings.TOPPCLOUD_ARTIFACT_DIR).mkdir(parents=True, exist_ok=True)
    sha, _path, size = archive.pack(app_dir, settings.TOPPCLOUD_ARTIFACT_DIR)
    version = _version(app_dir)
    with transaction.atomic():
        app, _ = App.objects.get_or_create(name=ini.app_name)
        if ini.default_location:
            _claim_location(app, ini.location_host, ini.location_path)
        release = Release.objects.filter(app=app, artifact_sha256=sha).first()
        if release is None:
            try:
                with transaction.atomic():
                    release = Release.objects.create(
                        app=app, name=f"{timezone.now():%Y%m%d%H%M%S}-{sha[:8]}", artifact_sha256=sha,
                        size=size, app_ini=ini_dict(ini), version=version)
            except IntegrityError:  # packed by someone else at the same moment
                release = Release.objects.get(app=app, artifact_sha256=sha)
    return release, ini.warnings


def artifact_path(release):
    return os.path.join(settings.TOPPCLOUD_ARTIFACT_DIR, f"{release.artifact_sha256}.tar.gz")


def ini_dict(ini):
    return {
        "app_name": ini.app_name, "runner": ini.runner, "default_location": ini.default_location,
        "location_host": ini.location_host, "location_path": ini.location_path,
        "health_check": ini.health_check, "update_fetch": list(ini.update_fetch),
        "requirements": ini.requirements, "static": ini.static, "processes": ini.processes,
        "threads": ini.threads, "keep_releases": ini.keep_releases,
        "keep_backups": ini.keep_backups, "services": list(ini.services),
        # names, without the slash; releases packed before it existed lack the key (read it as [])
        "writable_static_files": list(ini.writable_static_files),
        "config_required": list(ini.config_required), "config_defaults": dict(ini.config_defaults),
        "cron": [{"name": e.name, "schedule": e.schedule, "fields": list(e.fields), "target": e.target,
                  "timeout": e.timeout, "argv": e.argv} for e in ini.cron],
    }


def _claim_location(app, host, path):
    other = Location.objects.filter(host=host, path=path).exclude(app=app).select_related("app").first()
    if other is not None:
        raise ReleaseRefused(f"location {host}{path} belongs to app {other.app.name}; "
                             f"change default_location in app.ini or move that app first")
    Location.objects.get_or_create(app=app, host=host, path=path)


def _version(app_dir):
    """The app's own version string, if it keeps one in VERSION (shown in the admin)."""
    try:
        with open(os.path.join(app_dir, "VERSION"), encoding="utf-8") as f:
            return f.read(100).strip()
    except OSError:
        return ""
