"""manage.py enable APP: End an app's maintenance: its locations serve the app again."""


from jobs import cli
from jobs.cli import add_follow_arguments, app_job


class Command(cli.Command):
    help = "End an app's maintenance: its locations serve the app again."

    def add_arguments(self, parser):
        parser.add_argument("app")
        add_follow_arguments(parser)

    def handle(self, app, **opts):
        app_job(self, "enable", app, **opts)
