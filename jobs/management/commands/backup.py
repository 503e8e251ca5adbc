"""manage.py backup APP [--node N] [--from-replica] [--output FILE] [--copy-to NODE] | --schedule CRON | --unschedule"""

import getpass
import shutil

from django.core.management.base import CommandError

from jobs import actions, cli, nodes
from jobs.steps import data
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.states import ActorKind


class Command(cli.Command):
    help = ("Back up an app's data (database and files) into one portable archive stored here; "
            "or schedule that with --schedule.")

    def add_arguments(self, parser):
        parser.add_argument("app")
        parser.add_argument("--node", help="the node whose files (or database) to back up, when the app has several")
        parser.add_argument("--from-replica", action="store_true",
                            help="read the database from a streaming replica of it (hot standby), not the primary")
        parser.add_argument("--output", help="also copy the archive to this file once the backup is done")
        parser.add_argument("--copy-to", help="also copy the archive to this node's backups directory (rsync over ssh)")
        parser.add_argument("--schedule", metavar="CRON",
                            help="don't back up now: back up on this crontab, e.g. '0 3 * * *' (django-celery-beat)")
        parser.add_argument("--unschedule", action="store_true", help="remove the app's backup schedule")
        add_follow_arguments(parser)

    def handle(self, app, node, output, copy_to, schedule, unschedule, from_replica, **opts):
        try:
            record = data.check_data_app(app)
            for name in filter(None, (node, copy_to)):
                nodes.check_node(nodes.get_node(name))
            if schedule or unschedule:
                task = data.schedule_backups(record, "" if unschedule else schedule)
                self.stdout.write(f"backups of {app}: " + (f"on '{schedule}' (periodic task {task.name!r})"
                                                           if schedule else ("unscheduled" if task else "no schedule")))
                return
            if from_replica and (schedule or unschedule):
                raise data.DataRefused("--from-replica is for a backup now, not with --schedule")
            if from_replica:
                data.check_replica_source(record)
            if output and opts["no_wait"]:
                raise data.DataRefused("--output needs the backup to finish: leave out --no-wait")
        except (data.DataRefused, nodes.InvalidNode) as exc:
            raise CommandError(f"no backup was started: {exc}") from None
        job = actions.backup(app, node=node, copy_to=copy_to, from_replica=from_replica, actor_kind=ActorKind.USER,
                             actor=opts.get("actor") or getpass.getuser())
        job = follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"], exit=not output)
        if job.status != "succeeded":
            raise SystemExit(1)
        backup = data.find_backup(job.result["backup"])
        shutil.copyfile(data.archive_path(backup), output)
        self.stdout.write(f"wrote {output} ({backup.size} bytes; sha256 of its manifest.json {backup.manifest_sha256})")
        raise SystemExit(0)  # as follow_job ends the other commands: with the job's exit code
