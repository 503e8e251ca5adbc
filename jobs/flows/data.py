"""Backup, restore and clear of an app's data, as a person would do them by hand.

Backup: take the app's lock; dump its database and its files directory from
their nodes into one archive here; record it; keep the newest keep_backups;
copy it to another node if asked.
Restore: take the lock; check every checksum of the archive; keep the data
it replaces as a checkpoint; on each node, stage the archive beside the
live data and swap it in at once.
Clear: take the lock; keep the data as a checkpoint; swap in an empty
database and an empty files directory.
"""

from jobs.steps import data
from jobs.engine.context import FlowFailed
from jobs.flows import flow
from jobs.flows.deploy import take_app_lock
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import App, Backup, Node


@flow("backup", queue="nodeops")
def backup(ctx, app, node=None, copy_to=None):
    app = App.objects.get(name=app)
    take_app_lock(ctx, app)  # no deploy (and no migration) while the data are read
    place = data.DataPlace(app, _node(node))
    with ctx.step("dump") as s:
        made = data.take_backup(ctx, place, Backup.Kind.BACKUP)
        s.data.update(backup=made.name, size=made.size)
    with ctx.step("retention") as s:
        s.data["removed"] = data.prune_backups(ctx, app, Backup.Kind.BACKUP, data.keep_backups(app))
    copied = ""
    if copy_to:
        with ctx.step("copy") as s:
            target = Node.objects.get(name=copy_to)
            dest = f"{NodeLayout(target.root).app_backups(app.name)}/{made.name}.tar"
            ctx.transport(target).send_file(str(data.archive_path(made)), dest)
            made.uploaded_to = f"{target.name}:{dest}"
            made.save(update_fields=["uploaded_to"])
            s.data["to"] = made.uploaded_to
            copied = f", copied to {made.uploaded_to}"
    return (f"{app.name} backed up as {made.name} ({', '.join(made.services)}; {made.size} bytes){copied}",
            {"backup": made.name, "size": made.size, "manifest_sha256": made.manifest_sha256})


@flow("restore", queue="nodeops", retry_when_worker_lost=False)
def restore(ctx, backup, app, node=None, checkpoint=True):
    source = Backup.objects.select_related("app").get(name=backup)
    app = App.objects.get(name=app)
    take_app_lock(ctx, app)
    with ctx.step("verify"):
        manifest = data.verify_backup(ctx, source)
    place = data.DataPlace(app, _node(node))
    kept = None
    if checkpoint:
        with ctx.step("checkpoint") as s:
            kept = data.take_backup(ctx, place, Backup.Kind.CHECKPOINT, label="before-restore")
            s.data["backup"] = kept.name
    with ctx.step("restore") as s:
        s.data["nodes"] = data.restore_backup(ctx, source, place, manifest)
    before = f"; the data it replaced are in {kept.name}" if kept else ""
    return (f"{app.name} restored from {source.name} ({', '.join(manifest['services'])} on "
            f"{', '.join(place.nodes())}){before}", {"backup": source.name, "checkpoint": kept and kept.name})


@flow("clear", queue="nodeops", retry_when_worker_lost=False)
def clear(ctx, app, node=None):
    app = App.objects.get(name=app)
    take_app_lock(ctx, app)
    place = data.DataPlace(app, _node(node))
    with ctx.step("checkpoint") as s:
        kept = data.take_backup(ctx, place, Backup.Kind.CHECKPOINT, label="before-clear")
        s.data["backup"] = kept.name
    with ctx.step("clear"):
        data.clear_data(ctx, place)
    return (f"{app.name} data cleared ({', '.join(place.services)} on {', '.join(place.nodes())}); "
            f"what was there is in {kept.name}", {"checkpoint": kept.name})


def _node(name):
    if name is None:
        return None
    try:
        return Node.objects.get(name=name)
    except Node.DoesNotExist:
        raise FlowFailed(f"there is no node {name!r}") from None
