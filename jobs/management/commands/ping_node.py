"""manage.py ping_node NODE: round trip, uptime and load of a host, as a job."""


from jobs import cli
from jobs.cli import add_follow_arguments, node_job


class Command(cli.Command):
    help = "Check that a node answers: round trip, uptime, load."

    def add_arguments(self, parser):
        parser.add_argument("node", help="node name")
        add_follow_arguments(parser)

    def handle(self, node, **opts):
        node_job(self, "ping_node", node, **opts)
