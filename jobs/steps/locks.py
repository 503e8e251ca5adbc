"""One lock mechanism: a Lock row per key, held by a job until that job has ended, however it ended.

`app:APP` keeps changes of one app apart (deploy, rollback, backup, restore,
clear, config apply, maintenance): a second one is refused, never
interleaved. `cron:APP:ENTRY` keeps runs of one cron entry apart: a second
one is skipped. A child job works under its parent's lock.
"""

from django.db import transaction
from django.utils import timezone

from jobs.engine.context import FlowFailed
from jobs.engine.states import TERMINAL
from jobs.models import Job, Lock


def app_key(app_name):
    return f"app:{app_name}"


def cron_key(app_name, entry):
    return f"cron:{app_name}:{entry}"


def take(ctx, key):
    """Hold `key` for this job. None once this job holds it; else the job that does and has not ended:
    this job's parent (this job works under its lock), or another job (the lock stays that job's)."""
    with transaction.atomic():
        lock, _ = Lock.objects.select_for_update().get_or_create(key=key)
        holder = Job.objects.filter(pk=lock.job_id).first() if lock.job_id else None
        if holder is not None and holder.pk == ctx.parent_id:
            return holder
        if holder is not None and holder.pk != ctx.job_id and holder.status not in TERMINAL:
            return holder
        lock.job_id, lock.taken_at = ctx.job_id, timezone.now()
        lock.save()
    return None


def take_app(ctx, app):
    """The app's lock for this job (lock.taken), or FlowFailed naming the job that is changing the app."""
    holder = take(ctx, app_key(app.name))
    if holder is None:
        ctx.emit("lock.taken", app=app.name)
    elif holder.pk != ctx.parent_id:
        raise FlowFailed(f"{app.name} is being changed by job {holder.pk} ({holder.kind}, started "
                         f"{holder.started_at:%H:%M:%S} by {holder.actor_kind}:{holder.actor}); "
                         f"this job did nothing: run it again when that one has ended")


def lock_apps(apps):
    """Inside a transaction: lock the app locks of `apps` (in one order, so two callers never deadlock);
    {app pk: the job id holding its lock, or None}."""
    keys = {app_key(a.name): a.pk for a in apps}
    Lock.objects.bulk_create([Lock(key=k) for k in keys], ignore_conflicts=True)
    return {keys[lock.key]: lock.job_id
            for lock in Lock.objects.select_for_update().filter(key__in=list(keys)).order_by("key")}
