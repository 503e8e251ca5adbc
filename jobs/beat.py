"""Who may schedule which task with django-celery-beat, and whether a scheduled message is toppcloud's own.

Beat's own permissions (add/change periodic task) let a user pick any
registered task with any arguments. toppcloud's tasks start jobs, so they
are held to toppcloud's permissions at two depths:

1. the admin (jobs/admin.py): a periodic task calling one of toppcloud's
   tasks can be created, edited, run, enabled or deleted only by a user
   holding the permission that task's job needs (`refusal`);
2. the task itself: jobs.submit_cron and jobs.submit_backup start a job only
   for a message sent by the PeriodicTask toppcloud made for those arguments
   (`cron APP ENTRY`, `backup APP`); any other sender is refused and the
   refusal is an audit entry (`refuse`).

jobs.run, jobs.sweep and jobs.seal are never scheduled by hand: the
dispatcher sends runs and the settings schedule the sweep and the seal. All
are harmless if delivered anyway (a run claims only a job that is still
queued, with its queued hash; a sweep only finishes what is due; a seal
signs what is there), so they need no origin check.
"""

import json
import logging

log = logging.getLogger(__name__)

# toppcloud's tasks a person may schedule, and the permission each one's job needs: a cron run
# runs app code ("Run now" needs change_app), a backup schedule changes how an app's data are kept.
SCHEDULABLE = {
    "jobs.submit_cron": "records.change_app",
    "jobs.submit_backup": "records.change_app",
}
# Celery's canvas tasks send whatever tasks their arguments name (any toppcloud task, with
# any headers), so they are refused too. backend_cleanup is the one harmless builtin.
CELERY_ALLOWED = {"celery.backend_cleanup"}


class NotOurs(Exception):
    """A scheduled message that toppcloud's own PeriodicTask did not send; no job was started."""


def refusal(user, task):
    """Why `user` may not schedule (or edit, run, delete a schedule of) `task`, or None if they may."""
    task = (task or "").strip()
    if task in SCHEDULABLE:
        permission = SCHEDULABLE[task]
        if user.has_perm(permission):
            return None
        return f"{task} starts toppcloud jobs: scheduling it needs the permission {permission}"
    if task.startswith("jobs."):
        return f"{task} is sent by toppcloud itself and cannot be scheduled here"
    if task.startswith("celery.") and task not in CELERY_ALLOWED:
        return f"{task} sends whatever tasks its arguments name and cannot be scheduled here"
    return None


def check_origin(request, periodic_task):
    """Raise NotOurs unless this delivery came from `periodic_task` (the one toppcloud made).

    Beat (and its admin's "Run selected tasks") names the sending PeriodicTask
    in the message header `periodic_task_name`, overwriting any header the
    task's record sets. A call in this process (`called_directly`) is
    toppcloud's own code and needs no header.
    """
    if periodic_task is None:
        raise NotOurs("toppcloud has no schedule for these arguments")
    if getattr(request, "called_directly", True):
        return
    sender = getattr(request, "periodic_task_name", None)
    if sender != periodic_task.name:
        raise NotOurs(f"sent by {_sender(sender)}, not by toppcloud's schedule {periodic_task.name!r}")


def refused(request, task, kwargs, reason):
    """Record a refused scheduled message: an audit entry about the PeriodicTask that sent it (a log line
    when no record names the sender)."""
    from django_celery_beat.models import PeriodicTask

    from toppcloud_site.records import audit

    sender = getattr(request, "periodic_task_name", None)
    log.warning("refused %s(%s) %s: %s", task, json.dumps(kwargs, sort_keys=True), _sender(sender), reason)
    record = PeriodicTask.objects.filter(name=sender).first() if sender else None
    if record is not None:
        with audit.acting_as(f"schedule:{sender}"):
            audit.record("refuse", record, task=task, kwargs=kwargs, reason=reason)


def _sender(name):
    return f"periodic task {name!r}" if name else "a message naming no periodic task"
