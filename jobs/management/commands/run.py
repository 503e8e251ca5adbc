"""manage.py run APP [--node N] [--timeout S] -- CMD ARGS: a command in the app's live release, as a job.

The command runs in the release's directory with its environment (the same
as web processes, cron runs and tasks see); its output is printed as it
comes and stored with the job; this command exits with the command's exit
code (124 if it was stopped at its timeout).
"""

import argparse
import getpass

from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.steps import execution
from jobs.cli import add_follow_arguments, follow_job
from jobs.engine.context import FlowFailed
from jobs.models import JobEvent
from jobs.nodes import InvalidNode, check_node, get_node
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import App

MAX_TIMEOUT = 7 * 24 * 3600


def _options(parser):
    parser.add_argument("--node", help="the node to run on (default: the first where the app is live)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="stop the command and its children after this many seconds (default 3600)")
    add_follow_arguments(parser)


class Command(cli.Command):
    help = "Run a command in an app's live release on a node (its environment, its directory), as a job."

    def add_arguments(self, parser):
        parser.add_argument("app")
        _options(parser)
        parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                            help="the command and its arguments, after --")

    def handle(self, app, argv, **opts):
        # argparse hands everything after APP to argv; options given there, before `--`, are ours.
        if "--" in argv:
            ours, argv = argv[:argv.index("--")], argv[argv.index("--") + 1:]
            if ours:
                parser = argparse.ArgumentParser(prog="manage.py run", add_help=False, exit_on_error=False)
                _options(parser)
                try:
                    opts.update({k: v for k, v in vars(parser.parse_args(ours)).items()
                                 if v != parser.get_default(k)})
                except (argparse.ArgumentError, SystemExit):
                    raise CommandError(f"cannot read the options {' '.join(ours)!r} before --") from None
        node, timeout = opts["node"], opts["timeout"]
        try:
            record = App.objects.filter(name=app).first()
            if record is None:
                raise CommandError(f"there is no app {app!r}")
            if not argv:
                raise CommandError("say what to run after --, e.g. manage.py run APP -- python manage.py shell")
            if argv[0].startswith("-"):
                raise CommandError(f"{argv[0]!r} is not a program; put the command after --")
            if not 0 < timeout <= MAX_TIMEOUT:
                raise CommandError(f"--timeout must be more than 0 and at most {MAX_TIMEOUT} seconds")
            if node:
                check_node(get_node(node))
            live = execution.pick_place(record, node)
        except (InvalidNode, FlowFailed) as exc:
            raise CommandError(f"nothing was run: {exc}") from None
        job = actions.run(app, live.node, argv=argv, timeout=timeout, actor_kind=ActorKind.USER,
                          actor=opts.get("actor") or getpass.getuser())
        job = follow_job(self, job, no_wait=opts["no_wait"], as_json=opts["as_json"], exit=False)
        if job is None:  # --no-wait
            return
        raise SystemExit(exit_code(job))


def exit_code(job):
    """The command's own exit code, as its run.finished event recorded it; 1 if it never ran."""
    finished = JobEvent.objects.filter(job_id=job.pk, kind="run.finished").first()
    if finished is None:
        return 0 if job.status == "succeeded" else 1
    if finished.data.get("timed_out"):
        return 124
    return finished.data["rc"] if finished.data["rc"] is not None else 1
