"""manage.py disable APP: Put an app in maintenance: its locations answer 503 with a short page; other apps keep serving."""


from jobs import cli
from jobs.cli import add_follow_arguments, app_job


class Command(cli.Command):
    help = "Put an app in maintenance: its locations answer 503 with a short page; other apps keep serving."

    def add_arguments(self, parser):
        parser.add_argument("app")
        add_follow_arguments(parser)

    def handle(self, app, **opts):
        app_job(self, "disable", app, **opts)
