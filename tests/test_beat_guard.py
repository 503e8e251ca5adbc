"""django-celery-beat's permissions never reach toppcloud's tasks (jobs/beat.py): its admin refuses them to a
user without the toppcloud permission, and the tasks start a job only for a message toppcloud's own schedule
sent, through the real worker."""

import json
import os

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from jobs.steps import cron
from jobs.models import Job
from tests.helpers import wait_until
from toppcloud_site.records.models import App, AuditEntry, CronEntry, Release

BEAT_PERMS = ["add_periodictask", "change_periodictask", "delete_periodictask", "view_periodictask",
              "add_crontabschedule", "change_crontabschedule", "delete_crontabschedule", "view_crontabschedule"]


def staff(name, *codenames):
    user = User.objects.create_user(name, password="pw-0123456789", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def app_with_cron(name):
    """An app whose live release has the cron entry `tick`: its CronEntry and beat's `cron NAME tick`."""
    app = App.objects.create(name=name)
    release = Release.objects.create(app=app, name="r1", artifact_sha256="b" * 64, app_ini={"cron": [
        {"name": "tick", "schedule": "* * * * *", "fields": ["*", "*", "*", "*", "*"], "target": "/cron/tick",
         "timeout": 60, "argv": None}]})
    cron.sync_entries(app, release)
    return app, PeriodicTask.objects.get(name=cron.task_name(name, "tick"))


def add_form(**fields):
    every_minute = CrontabSchedule.objects.create(minute="*", hour="*", day_of_month="*", month_of_year="*",
                                                  day_of_week="*", timezone="UTC")
    return {"name": "by hand", "regtask": "", "task": "", "enabled": "on", "description": "", "crontab": every_minute.pk,
            "args": "[]", "kwargs": "{}", "headers": "{}", "priority": "", "queue": "", "exchange": "", "routing_key": "",
            "expire_seconds": "", "start_time_0": "", "start_time_1": "", **fields}


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["regtask", "task"])
def test_it_refuses_a_beat_only_user_a_jobs_submit_cron_task(field):
    client = staff("beat-only", *BEAT_PERMS)
    response = client.post(reverse("admin:django_celery_beat_periodictask_add"), add_form(**{
        field: "jobs.submit_cron", "kwargs": json.dumps({"app": "anyapp", "entry": "tick"})}))
    assert response.status_code == 200  # the form again, with the error
    assert "jobs.submit_cron starts toppcloud jobs: scheduling it needs the permission records.change_app" in (
        response.content.decode())
    assert not PeriodicTask.objects.filter(name="by hand").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("task", ["jobs.run", "jobs.sweep", "celery.group", "celery.chord"])
def test_it_refuses_toppcloud_s_internal_tasks_and_celery_s_canvas_to_everyone(admin_client, task):
    response = admin_client.post(reverse("admin:django_celery_beat_periodictask_add"), add_form(task=task))
    assert response.status_code == 200 and "cannot be scheduled here" in response.content.decode()
    assert not PeriodicTask.objects.filter(name="by hand").exists()


@pytest.mark.django_db
def test_it_lets_a_user_who_may_change_apps_schedule_a_cron_run_and_others_schedule_other_tasks():
    client = staff("beat-and-apps", *BEAT_PERMS, "change_app")
    response = client.post(reverse("admin:django_celery_beat_periodictask_add"), add_form(regtask="jobs.submit_cron"))
    assert response.status_code == 302, response.content.decode()
    assert PeriodicTask.objects.get(name="by hand").task == "jobs.submit_cron"
    response = staff("beat-only", *BEAT_PERMS).post(reverse("admin:django_celery_beat_periodictask_add"),
                                                     add_form(name="cleanup", task="celery.backend_cleanup"))
    assert response.status_code == 302 and PeriodicTask.objects.filter(name="cleanup").exists()


@pytest.mark.django_db
def test_it_keeps_a_beat_only_user_off_toppcloud_s_cron_tasks_and_their_schedules():
    _, task = app_with_cron("beatguard")
    before = PeriodicTask.objects.values().get(pk=task.pk)
    client = staff("beat-only", *BEAT_PERMS)
    url = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    page = client.get(url)
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()  # read-only
    edited = add_form(name=task.name, task="jobs.submit_cron", kwargs=json.dumps({"app": "other", "entry": "x"}))
    assert client.post(url, edited).status_code == 403
    assert client.post(reverse("admin:django_celery_beat_periodictask_delete", args=[task.pk]),
                       {"post": "yes"}).status_code == 403
    for action in ["run_tasks", "disable_tasks", "toggle_tasks", "delete_selected"]:
        page = client.post(reverse("admin:django_celery_beat_periodictask_changelist"),
                           {"action": action, "_selected_action": [task.pk], "post": "yes"}, follow=True)
        assert "Nothing was done: cron beatguard tick: jobs.submit_cron starts toppcloud jobs" in page.content.decode()
    # The shared crontab: deleting it would delete the task (CASCADE), changing it would move its runs.
    crontab_url = reverse("admin:django_celery_beat_crontabschedule_delete", args=[task.crontab_id])
    assert client.post(crontab_url, {"post": "yes"}).status_code == 403
    assert PeriodicTask.objects.values().get(pk=task.pk) == before
    assert not Job.objects.filter(target="cron:beatguard:tick").exists()


# --- the task: only toppcloud's own schedule starts a job ------------------------------------------------------

def send_as_beat(periodic_task):
    """What beat sends when `periodic_task` is due (its DatabaseScheduler's entry and options)."""
    from toppcloud_site.celery import app as celery_app

    entry = ModelEntry(periodic_task, app=celery_app)
    celery_app.send_task(entry.task, entry.args, entry.kwargs, **entry.options)


def test_it_runs_no_job_for_a_hand_made_task_and_records_the_refusal(live_db, worker):
    name = f"beatorigin{os.getpid() % 10000}"
    _, ours = app_with_cron(name)
    every_minute = ours.crontab
    made = {f"{name} missing": ("jobs.submit_cron", {"app": name, "entry": "no-such-entry"}),  # no release has it
            f"{name} copy": ("jobs.submit_cron", {"app": name, "entry": "tick"}),  # a real entry, another sender
            f"{name} backups": ("jobs.submit_backup", {"app": name})}  # backups toppcloud never scheduled
    for task_name, (task, kwargs) in made.items():
        PeriodicTask.objects.create(name=task_name, task=task, crontab=every_minute, kwargs=json.dumps(kwargs))
        send_as_beat(PeriodicTask.objects.get(name=task_name))
    refusals = wait_until(lambda: list(AuditEntry.objects.filter(action="refuse", object_repr__startswith=name))
                          if AuditEntry.objects.filter(action="refuse", object_repr__startswith=name).count() == 3
                          else None, timeout=60, what="three refusals")
    by_sender = {r.object_repr.split(":")[0]: r for r in refusals}
    assert by_sender[f"{name} missing"].changes["reason"] == (
        f"{name} has no cron entry 'no-such-entry' in its live release (entries: tick)")
    assert by_sender[f"{name} copy"].changes["reason"] == (
        f"sent by periodic task '{name} copy', not by toppcloud's schedule 'cron {name} tick'")
    assert by_sender[f"{name} copy"].actor == f"schedule:{name} copy"
    assert by_sender[f"{name} backups"].changes == {"task": "jobs.submit_backup", "kwargs": {"app": name},
                                                    "reason": "toppcloud has no schedule for these arguments"}
    assert not Job.objects.filter(target__startswith=f"cron:{name}:").exists()
    assert not Job.objects.filter(target=f"app:{name}").exists()

    send_as_beat(ours)  # the control: toppcloud's own schedule starts its run
    job = wait_until(lambda: Job.objects.filter(target=f"cron:{name}:tick").first(), timeout=60, what="the run")
    assert (job.kind, job.actor_kind, job.actor) == ("cron_run", "schedule", f"cron {name} tick")
    assert AuditEntry.objects.filter(action="refuse", object_repr__startswith=name).count() == 3
    # Real beat runs in other tests of the session: leave it nothing of this app to send.
    CronEntry.objects.filter(app__name=name).delete()
    PeriodicTask.objects.filter(name__in=[*made, ours.name]).delete()


@pytest.mark.django_db
def test_it_makes_a_task_planted_under_toppcloud_s_name_toppcloud_s_own_at_the_next_deploy():
    from datetime import timedelta

    from django.utils import timezone
    from django_celery_beat.models import SolarSchedule

    name = "planted"
    sunrise = SolarSchedule.objects.create(event="sunrise", latitude=0, longitude=0)
    response = staff("beat-only", *BEAT_PERMS).post(reverse("admin:django_celery_beat_periodictask_add"), {
        **add_form(name=cron.task_name(name, "tick"), task="celery.backend_cleanup", args='["x"]',
                   headers='{"h": 1}', priority="3", routing_key="elsewhere"), "crontab": "", "solar": sunrise.pk})
    assert response.status_code == 302, response.content.decode()  # not a toppcloud task (yet): beat's rules
    PeriodicTask.objects.filter(name=cron.task_name(name, "tick")).update(
        one_off=True, start_time=timezone.now() + timedelta(days=365))
    _, task = app_with_cron(name)  # the deploy makes the entry's schedule: no ValidationError, no leftovers
    assert (task.task, task.solar, task.crontab.minute, task.args, task.headers, task.priority, task.routing_key,
            task.one_off, task.start_time) == ("jobs.submit_cron", None, "*", "[]", "{}", None, None, False, None)
    assert ModelEntry(task).options == {"queue": "jobs", "headers": {"periodic_task_name": "cron planted tick"}}
