"""Releases: from an app directory to a Release (check app.ini, pack, store once), and the parts of
putting one on a node that deploy and rollback share (jobs/flows/deploy.py says in which order)."""

import os
import shlex
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs.engine.context import FlowFailed
from jobs.engine.redact import register_secret
from jobs.steps import execution, reconcile
from nodeops import appini, archive, node_users, publish, release as node_release
from toppcloud_site.records.models import App, Location, Release

# A database update still running after this long is stopped (and the deploy fails, reverting the data).
UPDATE_FETCH_TIMEOUT = 3600
# Build commands (collectstatic, compiling assets) still running after this long are stopped.
BUILD_TIMEOUT = 1800


class ReleaseRefused(ValueError):
    pass


def pack_release(app_dir, group=None):
    """The Release for this directory: app.ini checked first, the archive stored once by its sha256.
    A new app is made in `group` (a deploy to a server group); an app already recorded keeps its own.

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
        app, _ = App.objects.get_or_create(name=ini.app_name, defaults={"group": group})
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


def group_warning(app, group):
    """What a person deploying `app` to `group` should know when the app belongs elsewhere, or None."""
    if group is None or app.group_id == group.pk:
        return None
    return (f"app {app.name} belongs to {app.group.name if app.group else 'no server group'}, not {group.name}: "
            f"its database and config stay where that says (change the app's group in the admin)")


def artifact_path(release):
    return os.path.join(settings.TOPPCLOUD_ARTIFACT_DIR, f"{release.artifact_sha256}.tar.gz")


def ini_dict(ini):
    return {
        "app_name": ini.app_name, "runner": ini.runner, "default_location": ini.default_location,
        "location_host": ini.location_host, "location_path": ini.location_path,
        "health_check": ini.health_check, "update_fetch": list(ini.update_fetch),
        # releases packed before these existed lack the keys (read them as [] and None)
        "build": list(ini.build), "python": ini.python,
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


# --- on a node: the parts deploy and rollback share -------------------------------------

def node_release_dir(layout, app, release):
    return os.path.join(layout.releases_dir(app.name), release.name)


def rollback_target(app, current, name):
    """The release to roll back to: the one named, else the newest older than the current one."""
    if name:
        try:
            return Release.objects.get(app=app, name=name)
        except Release.DoesNotExist:
            raise FlowFailed(f"{app.name} has no release {name}") from None
    older = Release.objects.filter(app=app, created_at__lt=current.created_at).order_by("-created_at").first()
    if older is None:
        raise FlowFailed(f"{app.name} has no release older than {current.name} to roll back to")
    return older


@contextmanager
def unpacked(ctx, release):
    """The release's archive unpacked into a temporary directory on this machine (checked, never trusted).

    Its name carries the job's id: a killed job leaves it behind, and the
    next reconcile on this machine removes it once the job has ended.
    """
    tmp = tempfile.mkdtemp(prefix=reconcile.unpack_prefix(release.app.name, ctx.job_id), dir=reconcile.unpack_base())
    try:
        dest = os.path.join(tmp, "app")
        archive.unpack(artifact_path(release), dest, sha256=release.artifact_sha256)
        yield dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publishes_static(app, ini):
    """static_publish: the app's group has a CDN origin and the release has static files."""
    return bool(app.group is not None and app.group.static_publish and ini.get("static"))


def publish_static(ctx, t, layout, app, release, ini):
    """The CDN origin gets the release's static files before the release can go live: those on the node,
    after its build (what nginx serves there too); where they went."""
    tmp = tempfile.mkdtemp(prefix=reconcile.unpack_prefix(app.name, ctx.job_id), dir=reconcile.unpack_base())
    try:
        local = os.path.join(tmp, "static")
        node_release.fetch_static(t, layout, app.name, release.name, ini["static"], local)
        return publish.publish(ctx.emit, local, app.group.static_publish, app.name,
                               release.name, identity_file=settings.TOPPCLOUD_SSH_KEY_FILE, s3=s3_settings())
    except (publish.PublishError, node_release.ReleaseError) as exc:
        raise FlowFailed(f"{exc}; nothing went live") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_build(ctx, t, layout, app, release, ini, user, previous):
    """app.ini's build commands, in the release's directory and environment, as the app's user, its static
    directory theirs to write meanwhile (and the node's again after, whatever happened)."""
    still = f"; {previous.name} is still live" if previous else "; nothing was live before"
    static = ini.get("static")
    if not static:
        raise FlowFailed(f"app.ini has build commands but no static directory for them to write{still}")
    try:
        if user:
            node_release.open_static(t, ctx.emit, layout, app.name, release.name, static, user)
        try:
            for command in ini["build"]:
                argv = shlex.split(command)
                ctx.emit("build", command=argv)
                result = execution.run_in_release(ctx, t, layout, app.name, release.name, argv,
                                                  timeout=BUILD_TIMEOUT)
                ctx.emit("build.finished", command=argv, rc=result.rc, seconds=result.seconds,
                         timed_out=result.timed_out, tail=result.tail)
                if result.rc != 0 or result.timed_out or result.signal:
                    raise FlowFailed(f"build {command!r} {result.describe()}; the release was not started{still}")
        finally:
            sealed = node_release.seal_static(t, ctx.emit, layout, app.name, release.name, static)
    except node_release.ReleaseError as exc:
        raise FlowFailed(f"build: {exc}; the release was not started{still}") from None
    return sealed


def s3_settings():
    """The workers' S3 client settings for s3:// origins; the secret key is masked in every event."""
    register_secret(settings.TOPPCLOUD_S3_SECRET_ACCESS_KEY)
    return {"endpoint_url": settings.TOPPCLOUD_S3_ENDPOINT_URL, "region_name": settings.TOPPCLOUD_S3_REGION,
            "aws_access_key_id": settings.TOPPCLOUD_S3_ACCESS_KEY_ID,
            "aws_secret_access_key": settings.TOPPCLOUD_S3_SECRET_ACCESS_KEY}


def find_python(ctx, t, layout, ini, node):
    """The interpreter app.ini's `python` asks for, on the node (installed with uv if it can be); None:
    the node's python3. Not there: FlowFailed naming what the node has; nothing was changed on it."""
    if not ini.get("python"):
        return None
    try:
        return node_release.find_python(t, ctx.emit, layout, ini["python"], settings.TOPPCLOUD_PYTHON_DIRS)
    except node_release.ReleaseError as exc:
        raise FlowFailed(f"app.ini asks for python = {ini['python']}: {exc}; nothing was changed on "
                         f"{node.name}") from None


def ensure_app_user(ctx, t, layout, app, step):
    """The app's own system user on the node, its directories owned as nodeops/node_users.py says
    (a node from before app users is moved over here); the user's name (None: ssh user not root)."""
    try:
        result = node_users.ensure_app_user(t, ctx.emit, layout, app.name)
    except node_users.UserError as exc:
        raise FlowFailed(f"{exc}; nothing was started") from None
    step.changed = bool(result["changed"])
    step.data.update(result)
    return result["user"]


def start(ctx, t, layout, app, release, ini, venv, env_file, user):
    """Start the release under supervisor on a fresh port, as the app's user; the port."""
    return node_release.start(t, ctx.emit, layout, app.name, release.name, runner=ini["runner"], venv=venv,
                              processes=ini["processes"], threads=ini["threads"], env_file=env_file, user=user)


def wait_until_answers(t, layout, app, port, ini):
    """Ask the health URL itself until the release answers: its first answer is the health check's too."""
    return node_release.wait_until_answers(t, port, ini["health_check"] or "/", timeout=60,
                                           log_file=node_release.error_log(layout, app.name),
                                           host=ini["location_host"])


def ask_health(t, port, ini):
    """The health URL's answer now (after the database updates); (status, body). No health_check: None."""
    if not ini["health_check"]:
        return None
    try:
        return node_release.http_get(t, port, ini["health_check"], timeout=30, host=ini["location_host"])
    except node_release.ReleaseError as exc:
        raise FlowFailed(f"health check {ini['health_check']}: {exc}") from None


@contextmanager
def stopped_if_not_live(ctx, t, layout, app, release, *, step):
    """A started release that fails before it is live is stopped again (in a step of that name); the live
    one was never touched."""
    try:
        yield
    except BaseException:
        with ctx.step(step):
            node_release.stop(t, ctx.emit, layout, app.name, release.name)
        raise


def check_health(ctx, answer, ini, release, previous):
    """Test-before-activate: the new release, not yet live, must answer its health URL with 2xx."""
    if not ini["health_check"]:
        ctx.emit("log", text="app.ini has no health_check; the release answered, which is all that is checked")
        return
    status, body = answer
    ctx.emit("health", path=ini["health_check"], status=status, body=body)
    if not 200 <= status < 300:
        still = f"; {previous.name} is still live" if previous else "; nothing was live before"
        raise FlowFailed(f"health check {ini['health_check']} of {release.name} answered {status}: "
                         f"{body[:200]!r}; the release was not activated{still}")


def run_update_fetch(ctx, t, layout, app, release, port, ini):
    """The database updates (update_fetch): URLs asked of the new release, or script: commands run in
    its directory and environment (as web, cron and `run` commands get them)."""
    for entry in ini["update_fetch"]:
        if entry.startswith("script:"):
            argv = shlex.split(entry[len("script:"):])
            ctx.emit("update_fetch", command=argv)
            result = execution.run_in_release(ctx, t, layout, app.name, release.name, argv,
                                              timeout=UPDATE_FETCH_TIMEOUT)
            ctx.emit("update_fetch.finished", command=argv, rc=result.rc, seconds=result.seconds,
                     timed_out=result.timed_out)
            if result.rc != 0:
                raise FlowFailed(f"update_fetch {entry!r} {result.describe()}")
        else:
            status, body = node_release.http_get(t, port, entry, host=ini["location_host"])
            ctx.emit("update_fetch", path=entry, status=status, body=body)
            if not 200 <= status < 300:
                raise FlowFailed(f"update_fetch {entry} answered {status}: {body[:200]!r}")


def keep_releases(app, release, ini):
    """The newest keep_releases releases of the app, the new one among them."""
    names = list(Release.objects.filter(app=app).order_by("-created_at").values_list("name", flat=True))
    keep = names[: ini["keep_releases"]]
    return keep if release.name in keep else keep[:-1] + [release.name]
