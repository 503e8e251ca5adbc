"""Backup, restore and clear of an app's data, as a person would do them by hand (jobs/steps/data.py)."""

from jobs.steps import data, locks, records
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import Backup


def backup(ctx, app, node=None, copy_to=None, from_replica=False):
    """Back an app's data up into one archive here.

    1. lock.taken: the app's lock (no deploy, and no migration, while the data are read)
    2. dump: its database (from a streaming replica of it, if asked: the primary is not loaded) and its
       files directory from their nodes into one archive; record it
    3. retention: keep the newest keep_backups
    4. copy: to another node, if asked
    """
    app = records.app(app)
    node, target = records.node(node) if node else None, records.node(copy_to) if copy_to else None
    locks.take_app(ctx, app)
    place = data.DataPlace(app, node)
    with ctx.step("dump") as s:
        if from_replica:
            s.data["database_from"] = place.read_from_replica(ctx).name
        made = data.take_backup(ctx, place, Backup.Kind.BACKUP)
        s.data.update(backup=made.name, size=made.size)
    with ctx.step("retention") as s:
        s.data["removed"] = data.prune_backups(ctx, app, Backup.Kind.BACKUP, data.keep_backups(app))
    copied = ""
    if target:
        with ctx.step("copy") as s:
            dest = f"{NodeLayout(target.root).app_backups(app.name)}/{made.name}.tar"
            ctx.transport(target).send_file(str(data.archive_path(made)), dest)
            made.uploaded_to = f"{target.name}:{dest}"
            made.save(update_fields=["uploaded_to"])
            s.data["to"] = made.uploaded_to
            copied = f", copied to {made.uploaded_to}"
    return (f"{app.name} backed up as {made.name} ({', '.join(made.services)}; {made.size} bytes){copied}",
            {"backup": made.name, "size": made.size, "manifest_sha256": made.manifest_sha256})


def restore(ctx, backup, app, node=None, checkpoint=True):
    """Put an app's data back as a backup has them.

    1. lock.taken: the app's lock
    2. verify: every checksum of the archive
    3. checkpoint: keep the data it replaces (unless asked not to)
    4. restore: on each node, stage the archive beside the live data and swap it in at once
    """
    source, app = records.backup(backup), records.app(app)
    node = records.node(node) if node else None
    locks.take_app(ctx, app)
    with ctx.step("verify"):
        manifest = data.verify_backup(ctx, source)
    place = data.DataPlace(app, node)
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


def clear(ctx, app, node=None):
    """Empty an app's data.

    1. lock.taken: the app's lock
    2. checkpoint: keep the data as they are
    3. clear: swap in an empty database and an empty files directory
    """
    app = records.app(app)
    node = records.node(node) if node else None
    locks.take_app(ctx, app)
    place = data.DataPlace(app, node)
    with ctx.step("checkpoint") as s:
        kept = data.take_backup(ctx, place, Backup.Kind.CHECKPOINT, label="before-clear")
        s.data["backup"] = kept.name
    with ctx.step("clear"):
        data.clear_data(ctx, place)
    return (f"{app.name} data cleared ({', '.join(place.services)} on {', '.join(place.nodes())}); "
            f"what was there is in {kept.name}", {"checkpoint": kept.name})
