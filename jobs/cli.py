"""Shared by the management commands that start a job and follow it."""

import getpass
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from jobs import actions, nodes
from jobs.engine.follow import exit_code, follow
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import App


class Command(BaseCommand):
    """What toppcloud's management commands derive from: before they run, only toppcloud's own
    configuration checks (toppcloud_site/checks.py); Django's full set, which imports every URL and
    admin module, is for `manage.py check`, `migrate` and `runserver`."""

    requires_system_checks = ["toppcloud"]


def add_follow_arguments(parser):
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    parser.add_argument("--json", dest="as_json", action="store_true", help="events as JSON lines")
    parser.add_argument("--as", dest="actor", default=None, help="who asks (default: the OS user)")


def node_job(command, kind, node_name, **opts):
    """Start a job on a node, refusing a bad node record before anything is queued."""
    actor = opts.pop("actor", None) or getpass.getuser()
    try:
        node = nodes.get_node(node_name)
        job = actions.node_job(kind, node, actor_kind=ActorKind.USER, actor=actor)
    except nodes.InvalidNode as exc:
        raise CommandError(str(exc)) from None
    follow_job(command, job, no_wait=opts["no_wait"], as_json=opts["as_json"])


def follow_job(command, job, *, no_wait, as_json, exit=True):
    """Print the job's events until it ends; exit with its status (or return it, exit=False)."""
    kind, target = job.kind, job.target
    if no_wait:
        command.stdout.write(json.dumps({"job": job.pk}) if as_json else f"job {job.pk} queued")
        return
    if not as_json:
        command.stdout.write(f"job {job.pk}: {kind} {target}")
    job = follow(job.pk, command.stdout, as_json=as_json)
    if as_json:
        command.stdout.write(json.dumps({"job": job.pk, "status": job.status, "summary": job.summary,
                                         "error": job.error}))
    else:
        command.stdout.write(f"job {job.pk} {job.status}" + (f": {job.error}" if job.error else ""))
    if not exit:
        return job
    sys.exit(exit_code(job))


def app_job(command, kind, app_name, **opts):
    """Start a job about an app (params {"app": name}), refusing an unknown app before anything is queued."""
    if not App.objects.filter(name=app_name).exists():
        raise CommandError(f"there is no app {app_name!r}")
    job = actions.app_job(kind, app_name, actor_kind=ActorKind.USER, actor=opts.pop("actor", None) or getpass.getuser())
    follow_job(command, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
