"""Checkpoint-and-revert: an app with data services is backed up before its database updates, and put
back as the checkpoint has it if they fail (jobs/steps/data.py does the backups)."""

from contextlib import contextmanager

from jobs.engine.context import FlowFailed
from jobs.steps import data
from toppcloud_site.records.models import Backup


def wanted(ini):
    """Only an app with data services gets a checkpoint."""
    return bool(ini.get("services"))


def take(ctx, app, node, ini):
    """Back the app's data up as a checkpoint (the newest keep_backups of them are kept); the Backup."""
    checkpoint = data.take_backup(ctx, data.DataPlace(app, node), Backup.Kind.CHECKPOINT)
    data.prune_backups(ctx, app, Backup.Kind.CHECKPOINT, ini.get("keep_backups") or 10)
    return checkpoint


@contextmanager
def reverted_on_failure(ctx, app, node, checkpoint, *, step):
    """If the block (the database updates) fails, put the data back as the checkpoint has them, in a step
    of that name.

    What the failed updates left is kept as a backup of its own first, so
    that nothing written in between is lost either.
    """
    try:
        yield
    except Exception as exc:
        if checkpoint is None:
            raise
        try:
            with ctx.step(step) as s:
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
