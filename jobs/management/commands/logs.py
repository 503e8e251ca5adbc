"""manage.py logs APP [--node N] [--lines N] [--log error|access|app|cron ...]: an app's recent log lines.

Fetched from every node where the app is live (or the one asked for), as a
job; printed as they come. The app's secrets show as ********.
"""

import getpass

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.steps import execution
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.context import FlowFailed
from jobs.flows.logs import LOG_FILES
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import App

MAX_LINES = 10000


class Command(cli.Command):
    help = "Print the last lines of an app's logs from the nodes where it is live (secrets masked)."

    def add_arguments(self, parser):
        parser.add_argument("app")
        parser.add_argument("--node", help="only this node (default: every node where the app is live)")
        parser.add_argument("--lines", type=int, default=100, help=f"lines of each log (default 100, at most "
                                                                   f"{MAX_LINES})")
        parser.add_argument("--log", dest="files", action="append", choices=LOG_FILES,
                            help="which log (repeatable; default: error and app)")
        add_follow_arguments(parser)

    def handle(self, app, node, lines, files, **opts):
        record = App.objects.filter(name=app).first()
        if record is None:
            raise CommandError(f"there is no app {app!r}")
        if not 1 <= lines <= MAX_LINES:
            raise CommandError(f"--lines must be from 1 to {MAX_LINES}")
        try:
            execution.pick_place(record, node)
        except FlowFailed as exc:
            raise CommandError(str(exc)) from None
        files = sorted(set(files or ["error", "app"]), key=LOG_FILES.index)
        job = actions.logs(app, node=node, lines=lines, files=files, actor_kind=ActorKind.USER,
                           actor=opts.get("actor") or getpass.getuser())
        follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"])
