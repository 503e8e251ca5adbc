"""Cron: an app's [cron] entries as django-celery-beat schedules, and what each run needs.

The live release's app.ini says which entries exist. Deploys and rollbacks
call sync_entries() once the release is live: each entry becomes a CronEntry
record and a PeriodicTask named `cron APP ENTRY` (task jobs.submit_cron, in
UTC); entries the release no longer has disappear with their tasks. Each
run is a cron_run job (jobs/flows/cron.py).
"""

import json

from celery.schedules import crontab
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from toppcloud_site.records.models import App, CronEntry

TASK = "jobs.submit_cron"


class CronRefused(ValueError):
    """A cron run that cannot be started (no such app or entry); nothing was queued."""


def task_name(app_name, entry_name):
    return f"cron {app_name} {entry_name}"


def entries_of(release):
    """The release's [cron] entries as its Release record keeps them: {name: entry dict}."""
    return {e["name"]: e for e in release.app_ini.get("cron", [])}


def crontab_schedule(fields):
    """django-celery-beat's CrontabSchedule (UTC) for five crontab fields, shared by every entry that has them.

    The table has no unique constraint: of equal rows made at the same moment, the oldest is used.
    """
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    values = {"minute": minute, "hour": hour, "day_of_month": day_of_month, "month_of_year": month_of_year,
              "day_of_week": day_of_week, "timezone": "UTC"}
    return (CrontabSchedule.objects.filter(**values).order_by("pk").first()
            or CrontabSchedule.objects.create(**values))


@transaction.atomic
def sync_entries(app, release):
    """Make the app's CronEntry records and beat schedules those of `release` (now live); what changed.

    The app's row is locked first: the deploys of a deploy_many run at once,
    and each syncs the same entries.
    """
    App.objects.select_for_update().get(pk=app.pk)
    wanted = entries_of(release)
    changed = {"added": [], "changed": [], "removed": []}
    for name, entry in wanted.items():
        schedule = crontab_schedule(entry["fields"])
        # Every field beat sends or schedules by is toppcloud's: a task of this name made by hand before
        # (beat's own permissions allow it) keeps no other schedule, arguments, start or expiry.
        fields = {"task": TASK, "crontab": schedule, "interval": None, "solar": None, "clocked": None,
                  "enabled": True, "one_off": False, "start_time": None, "expires": None, "expire_seconds": None,
                  "args": "[]", "kwargs": json.dumps({"app": app.name, "entry": name}), "headers": "{}",
                  "queue": "jobs", "exchange": None, "routing_key": None, "priority": None,
                  "description": f"app.ini [cron] {name} = {entry['schedule']} {entry['target']} "
                                 f"(release {release.name}; runs are cron_run jobs)"}
        task = PeriodicTask.objects.filter(name=task_name(app.name, name)).first()
        if task is None:
            task = PeriodicTask.objects.create(name=task_name(app.name, name), **fields)
        elif any(getattr(task, k) != v for k, v in fields.items()):
            for k, v in fields.items():
                setattr(task, k, v)
            task.save()  # django-celery-beat's signal tells beat the schedule changed
        record = CronEntry.objects.filter(app=app, name=name).first()
        values = {"schedule": entry["schedule"], "target": entry["target"], "timeout": entry["timeout"],
                  "periodic_task": task}
        if record is None:
            CronEntry.objects.create(app=app, name=name, release=release.name, **values)
            changed["added"].append(name)
        else:
            if any(getattr(record, k) != v for k, v in values.items()):
                changed["changed"].append(name)
            for k, v in {**values, "release": release.name}.items():
                setattr(record, k, v)
            record.save()
    for record in CronEntry.objects.filter(app=app).exclude(name__in=wanted):
        PeriodicTask.objects.filter(name=task_name(app.name, record.name)).delete()
        record.delete()
        changed["removed"].append(record.name)
    return changed


def check_entry(app_name, entry_name):
    """The app and its CronEntry, or CronRefused saying what is wrong (before any job exists)."""
    app = App.objects.filter(name=app_name).first()
    if app is None:
        raise CronRefused(f"there is no app {app_name!r}")
    entry = CronEntry.objects.filter(app=app, name=entry_name).first()
    if entry is None:
        known = ", ".join(CronEntry.objects.filter(app=app).values_list("name", flat=True)) or "none"
        raise CronRefused(f"{app_name} has no cron entry {entry_name!r} in its live release (entries: {known})")
    return app, entry


def scheduled_minute(record, now):
    """The minute boundary this scheduled run of the CronEntry belongs to: now's minute, if its schedule
    names it (else None). Beat sends a run at its minute boundary, so the run's delay is measured from there.
    """
    if record.periodic_task is None or record.periodic_task.crontab is None:
        return None
    c = record.periodic_task.crontab
    schedule = crontab(minute=c.minute, hour=c.hour, day_of_month=c.day_of_month, month_of_year=c.month_of_year,
                       day_of_week=c.day_of_week)
    boundary = now.replace(second=0, microsecond=0)
    if (boundary.minute in schedule.minute and boundary.hour in schedule.hour
            and boundary.day in schedule.day_of_month and boundary.month in schedule.month_of_year
            and boundary.isoweekday() % 7 in schedule.day_of_week):
        return boundary
    return None
