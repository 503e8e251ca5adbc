"""manage.py cron list [APP] | cron run APP ENTRY: an app's cron entries, and a run of one now."""

import getpass

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.steps import cron
from jobs.cli import add_follow_arguments, follow_job
from jobs.models import Job
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import CronEntry


class Command(cli.Command):
    help = "List apps' cron entries (from their live releases' app.ini), or run one now as a cron_run job."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="entries, their schedules and their last runs")
        listing.add_argument("app", nargs="?")
        run = sub.add_parser("run", help="run an entry now (skipped if it is running already)")
        run.add_argument("app")
        run.add_argument("entry")
        add_follow_arguments(run)

    def handle(self, action, **opts):
        if action == "list":
            return self.list(opts.get("app"))
        try:
            job = actions.cron_run(opts["app"], opts["entry"], actor_kind=ActorKind.USER,
                                   actor=opts.get("actor") or getpass.getuser())
        except cron.CronRefused as exc:
            raise CommandError(f"nothing was run: {exc}") from None
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])

    def list(self, app):
        entries = CronEntry.objects.select_related("app")
        if app:
            entries = entries.filter(app__name=app)
        for entry in entries:
            last = Job.objects.filter(kind="cron_run", target=f"cron:{entry.app.name}:{entry.name}").first()
            ran = f"last run job {last.pk} {last.status} at {last.queued_at:%Y-%m-%d %H:%M:%S}" if last else "never run"
            self.stdout.write(f"{entry.app.name} {entry.name}: {entry.schedule} UTC {entry.target} "
                              f"(timeout {entry.timeout} s; {ran})")
