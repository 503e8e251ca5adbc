"""Deploy and rollback on one node, as a person would do them by hand.

Deploy: take the app's lock; reconcile the node for the app (stop what an
interrupted deploy left running, the front door as the records say);
install its data services (and make its writable static directories);
make the app's own system user and give its directories their owners;
upload the release next to the previous one;
publish its static files to the group's CDN origin, if it has one; build or
reuse its virtualenv; write its environment (the config as it is now);
start it on a fresh port beside the live one; wait until it answers; ask
its health URL (not live yet); take a checkpoint of its data; run its
database updates; render the node's front door with it live (nginx -t,
reload) and record release.activated; make its [cron] entries the app's
schedules; stop the old release; prune old releases.
A failure before activation stops the new release; the old one never stops
serving. A failure of the database updates also restores the checkpoint.

Rollback: the same from "reconcile", for a release still
on the node's disk: no upload, no database updates. It too gets the config
as it is now.
"""

import os
import shlex
import shutil
import tempfile
from contextlib import contextmanager

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.steps import cron, data, environment, execution, frontdoor, reconcile
from jobs.engine import fan_out
from jobs.engine.context import FlowFailed, WaitForChildren
from jobs.flows import flow
from jobs.models import AppLock, Job, LiveRelease
from jobs.engine.redact import register_secret
from jobs.steps.releases import artifact_path
from jobs.engine.states import TERMINAL
from nodeops import archive, node_users, publish, release as node_release
from nodeops.frontdoor import FrontDoorError
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import App, Backup, Node, Release

# A database update still running after this long is stopped (and the deploy fails, reverting the data).
UPDATE_FETCH_TIMEOUT = 3600


@flow("deploy", queue="nodeops", retry_when_worker_lost=False)
def deploy(ctx, app, release, node):
    app, node = App.objects.get(name=app), Node.objects.get(name=node)
    release = Release.objects.get(app=app, name=release)
    ini = release.app_ini
    t, layout = ctx.transport(node), NodeLayout(node.root)
    take_app_lock(ctx, app)  # before reading what is live: nobody else changes it while we hold it
    try:
        environment.check_required_config(app, release)
    except environment.ConfigMissing as exc:
        raise FlowFailed(f"{exc}; nothing was changed on {node.name}") from None
    reconcile_app(ctx, app, node)
    live = LiveRelease.objects.filter(app=app, node=node, host=ini["location_host"], path=ini["location_path"]).first()
    previous = live.release if live else None
    if previous == release:
        return f"{app.name} {release.name} is already live on {node.name}; nothing to do", {"release": release.name}

    with ctx.step("services") as s:
        service_env, s.changed = data.ensure_services(ctx, app, node, ini.get("services", []),
                                                      ini.get("writable_static_files", []))
    user = ensure_app_user(ctx, t, layout, app)
    with unpacked(ctx, release) as src:
        with ctx.step("upload") as s:
            link_dest = node_release_dir(layout, app, previous) if previous else None
            release_dir = node_release.upload(t, ctx.emit, layout, app.name, release.name, src, previous=link_dest)
            s.data["release_dir"] = release_dir
        publish_static(ctx, app, release, src, ini)
    with ctx.step("venv") as s:
        venv, s.changed = node_release.ensure_venv(t, ctx.emit, layout, app.name, release_dir, ini["requirements"])
    env_file = write_environment(ctx, t, layout, app, release, node, venv, service_env, user)
    port, answer = start_release(ctx, t, layout, app, release, ini, venv, env_file, user)
    with stopped_if_not_live(ctx, t, layout, app, release):
        with ctx.step("health"):
            check_health(ctx, answer, ini, release, previous)
        checkpoint = take_checkpoint(ctx, app, node, ini)
        with reverted_on_failure(ctx, app, node, checkpoint):
            with ctx.step("update_fetch"):
                run_update_fetch(ctx, t, layout, app, release, port, ini)
        with ctx.step("activate"):
            activate(ctx, app, node, release, port, ini)
    with ctx.step("cron") as s:
        s.data.update(cron.sync_entries(app, release))
    if previous and previous != release:
        with ctx.step("stop old release"):
            node_release.stop(t, ctx.emit, layout, app.name, previous.name)
    with ctx.step("prune") as s:
        s.data["removed"] = node_release.prune(t, ctx.emit, layout, app.name, keep_releases(app, release, ini))
    was = f" (was {previous.name})" if previous else ""
    return (f"{app.name} {release.name} live on {node.name} at {ini['location_host']}{ini['location_path']}{was}",
            {"release": release.name, "previous": previous.name if previous else None, "port": port})


@flow("rollback", queue="nodeops", retry_when_worker_lost=False)
def rollback(ctx, app, node, release=None):
    """Make a previous release, still on the node's disk, live again: no upload, no venv build."""
    app, node = App.objects.get(name=app), Node.objects.get(name=node)
    take_app_lock(ctx, app)
    live = LiveRelease.objects.filter(app=app, node=node).select_related("release").first()
    if live is None:
        raise FlowFailed(f"{app.name} has no live release on {node.name} to roll back from")
    target = _rollback_target(app, node, live.release, release)
    ini = target.app_ini
    t, layout = ctx.transport(node), NodeLayout(node.root)
    try:
        environment.check_required_config(app, target)
    except environment.ConfigMissing as exc:
        raise FlowFailed(f"{exc}; nothing was changed on {node.name}") from None
    reconcile_app(ctx, app, node)
    with ctx.step("services") as s:
        service_env, s.changed = data.ensure_services(ctx, app, node, ini.get("services", []),
                                                      ini.get("writable_static_files", []))
    user = ensure_app_user(ctx, t, layout, app)
    with ctx.step("venv") as s:
        venv, s.changed = node_release.ensure_venv(t, ctx.emit, layout, app.name,
                                                   node_release_dir(layout, app, target), ini["requirements"])
    # The config as it is now, not as it was when the release was first live: a secret
    # rotated since stays rotated.
    env_file = write_environment(ctx, t, layout, app, target, node, venv, service_env, user)
    port, answer = start_release(ctx, t, layout, app, target, ini, venv, env_file, user)
    with stopped_if_not_live(ctx, t, layout, app, target):
        with ctx.step("health"):
            check_health(ctx, answer, ini, target, live.release)
        with ctx.step("activate"):
            activate(ctx, app, node, target, port, ini)
    with ctx.step("cron") as s:
        s.data.update(cron.sync_entries(app, target))
    with ctx.step("stop old release"):
        node_release.stop(t, ctx.emit, layout, app.name, live.release.name)
    return (f"{app.name} rolled back to {target.name} on {node.name} (was {live.release.name})",
            {"release": target.name, "previous": live.release.name, "port": port})


# --- the steps ------------------------------------------------------------------

def take_app_lock(ctx, app):
    """One deploy or rollback of an app at a time: a second one is refused, never interleaved.

    The lock is the job holding it; it is free again once that job has ended,
    however it ended. Child jobs work under their parent's lock.
    """
    with transaction.atomic():
        lock, _ = AppLock.objects.select_for_update().get_or_create(app=app)
        holder = Job.objects.filter(pk=lock.job_id).first() if lock.job_id else None
        if holder is not None and holder.pk == ctx.parent_id:
            return
        if holder is not None and holder.pk != ctx.job_id and holder.status not in TERMINAL:
            raise FlowFailed(f"{app.name} is being changed by job {holder.pk} ({holder.kind}, started "
                             f"{holder.started_at:%H:%M:%S} by {holder.actor_kind}:{holder.actor}); "
                             f"this job did nothing: run it again when that one has ended")
        lock.job_id, lock.taken_at = ctx.job_id, timezone.now()
        lock.save()
    ctx.emit("lock.taken", app=app.name)


@flow("deploy_many", queue="jobs", retry_when_worker_lost=False)
def deploy_many(ctx, app, release, children, max_parallel):
    """One child deploy job per node, max_parallel at a time, all under this job's lock of the app."""
    take_app_lock(ctx, App.objects.get(name=app))
    fan_out.start_children(ctx.job, children, max_parallel)
    return WaitForChildren(f"deploying {app} {release} to {len(children)} nodes, {max_parallel} at a time")


@contextmanager
def stopped_if_not_live(ctx, t, layout, app, release):
    """A started release that fails before it is live is stopped again; the live one was never touched."""
    try:
        yield
    except BaseException:
        with ctx.step("stop new release"):
            node_release.stop(t, ctx.emit, layout, app.name, release.name)
        raise


def take_checkpoint(ctx, app, node, ini):
    """Checkpoint-and-revert: an app with data services is backed up before its database updates."""
    if not ini.get("services"):
        return None
    with ctx.step("checkpoint") as s:
        place = data.DataPlace(app, node)
        checkpoint = data.take_backup(ctx, place, Backup.Kind.CHECKPOINT)
        s.data.update(backup=checkpoint.name, size=checkpoint.size)
        data.prune_backups(ctx, app, Backup.Kind.CHECKPOINT, ini.get("keep_backups") or 10)
    return checkpoint


@contextmanager
def reverted_on_failure(ctx, app, node, checkpoint):
    """If the database updates fail, put the data back as the checkpoint has them.

    What the failed updates left is kept as a backup of its own first, so
    that nothing written in between is lost either.
    """
    try:
        yield
    except Exception as exc:
        if checkpoint is None:
            raise
        try:
            with ctx.step("revert") as s:
                place = data.DataPlace(app, node)
                failed = data.take_backup(ctx, place, Backup.Kind.CHECKPOINT, label="failed-update")
                s.data["failed_state"] = failed.name
                data.restore_backup(ctx, checkpoint, place, data.verify_backup(ctx, checkpoint))
                s.data["restored"] = checkpoint.name
        except Exception as revert_exc:
            raise FlowFailed(f"{exc}; restoring checkpoint {checkpoint.name} failed too: {revert_exc}; the data "
                             f"are as the failed update left them: `manage.py restore {checkpoint.name} "
                             f"{app.name}` puts the checkpoint back") from exc
        raise FlowFailed(f"{exc}; the data were restored from checkpoint {checkpoint.name} (what the failed "
                         f"update left is kept in {failed.name})") from exc


def reconcile_app(ctx, app, node):
    """Before changing the app on the node: undo what an interrupted deploy or rollback of it left there."""
    with ctx.step("reconcile") as s:
        done = reconcile.reconcile(ctx, node, apps=[app])
        s.data.update(stopped=[p["program"] for p in done["stopped"]], front_door_changed=done["front_door_changed"])
        s.changed = bool(done["stopped"] or done["front_door_changed"] or done["removed_unpack_dirs"])


@contextmanager
def unpacked(ctx, release):
    """The release's archive unpacked into a temporary directory on this machine (checked, never trusted).

    Its name carries the job's id: a killed job leaves it behind, and the
    next reconcile on this machine removes it once the job has ended.
    """
    tmp = tempfile.mkdtemp(prefix=reconcile.unpack_prefix(release.app.name, ctx.job_id))
    try:
        dest = os.path.join(tmp, "app")
        archive.unpack(artifact_path(release), dest, sha256=release.artifact_sha256)
        yield dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_static(ctx, app, release, src, ini):
    """static_publish: the CDN origin gets the release's static files before the release can go live."""
    group = app.group
    if group is None or not group.static_publish or not ini.get("static"):
        return
    with ctx.step("static publish") as s:
        try:
            s.data["published_to"] = publish.publish(
                ctx.emit, os.path.join(src, ini["static"]), group.static_publish, app.name, release.name,
                identity_file=settings.TOPPCLOUD_SSH_KEY_FILE, s3=s3_settings())
        except publish.PublishError as exc:
            raise FlowFailed(f"{exc}; nothing went live") from None


def s3_settings():
    """The workers' S3 client settings for s3:// origins; the secret key is masked in every event."""
    register_secret(settings.TOPPCLOUD_S3_SECRET_ACCESS_KEY)
    return {"endpoint_url": settings.TOPPCLOUD_S3_ENDPOINT_URL, "region_name": settings.TOPPCLOUD_S3_REGION,
            "aws_access_key_id": settings.TOPPCLOUD_S3_ACCESS_KEY_ID,
            "aws_secret_access_key": settings.TOPPCLOUD_S3_SECRET_ACCESS_KEY}


def ensure_app_user(ctx, t, layout, app):
    """The app's own system user on the node, its directories owned as nodeops/node_users.py says
    (a node from before app users is moved over here); the user's name (None: ssh user not root)."""
    with ctx.step("app user") as s:
        try:
            result = node_users.ensure_app_user(t, ctx.emit, layout, app.name)
        except node_users.UserError as exc:
            raise FlowFailed(f"{exc}; nothing was started") from None
        s.changed = bool(result["changed"])
        s.data.update(result)
    return result["user"]


def write_environment(ctx, t, layout, app, release, node, venv, service_env, user):
    """The release's environment, from the config as it is now, in its env file on the node; its path."""
    with ctx.step("env") as s:
        s.data.update(config_used(app, release))
        return node_release.write_env(t, layout, app.name, release.name, environment.release_environment(
            app, release, node, layout, venv, service_env), user=user)


def config_used(app, release):
    """Which config a release was given: its version (equal versions, equal values) and keys."""
    return {"config_version": environment.config_version(app, release),
            "config_keys": sorted(environment.config_records(app))}


def start_release(ctx, t, layout, app, release, ini, venv, env_file, user):
    with ctx.step("start") as s:
        port = node_release.start(t, ctx.emit, layout, app.name, release.name, runner=ini["runner"], venv=venv,
                                  processes=ini["processes"], threads=ini["threads"], env_file=env_file,
                                  user=user)
        s.data["port"] = port
    with ctx.step("wait until it answers") as s:
        # Asking the health URL itself: its first answer is the health check's too.
        s.data["answer"] = node_release.wait_until_answers(
            t, port, ini["health_check"] or "/", timeout=60, log_file=node_release.error_log(layout, app.name),
            host=ini["location_host"])
    return port, s.data["answer"]


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


def activate(ctx, app, node, release, port, ini):
    """Point the app's locations on the node at the release (nginx -t, graceful reload); release.activated."""
    try:
        frontdoor.update(ctx, node, activating=(app, release, port, ini["location_host"], ini["location_path"]))
    except FrontDoorError as exc:
        raise FlowFailed(str(exc)) from None


def keep_releases(app, release, ini):
    """The newest keep_releases releases of the app, the new one among them."""
    names = list(Release.objects.filter(app=app).order_by("-created_at").values_list("name", flat=True))
    keep = names[: ini["keep_releases"]]
    return keep if release.name in keep else keep[:-1] + [release.name]


def node_release_dir(layout, app, release):
    return os.path.join(layout.releases_dir(app.name), release.name)


def _rollback_target(app, node, current, name):
    if name:
        try:
            return Release.objects.get(app=app, name=name)
        except Release.DoesNotExist:
            raise FlowFailed(f"{app.name} has no release {name}") from None
    older = Release.objects.filter(app=app, created_at__lt=current.created_at).order_by("-created_at").first()
    if older is None:
        raise FlowFailed(f"{app.name} has no release older than {current.name} to roll back to")
    return older
