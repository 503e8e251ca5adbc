"""manage.py setup_node NODE: set a host up (layout, nginx, supervisord) as a job."""


from jobs import cli
from jobs.cli import add_follow_arguments, node_job


class Command(cli.Command):
    help = "Set up a node: its layout under the node root, toppcloud's nginx and supervisord."

    def add_arguments(self, parser):
        parser.add_argument("node", help="node name")
        add_follow_arguments(parser)

    def handle(self, node, **opts):
        node_job(self, "setup_node", node, **opts)
