"""manage.py node add|list|pin-key: node records from the command line."""

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from jobs import cli
from jobs.nodes import InvalidNode, get_node, validation_message
from nodeops import transport
from toppcloud_site.records.models import Node, ServerGroup


class Command(cli.Command):
    help = "Add, list and pin the host keys of nodes."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="record a node (validated; nothing is done on the host)")
        add.add_argument("name")
        add.add_argument("--address", required=True)
        add.add_argument("--ssh-port", default="22")
        add.add_argument("--user", default="root")
        add.add_argument("--root", default="/srv/toppcloud")
        add.add_argument("--http-port", default="80")
        add.add_argument("--group")
        add.add_argument("--local", action="store_true", help="this machine, without SSH")
        key = add.add_mutually_exclusive_group()
        key.add_argument("--host-key", help="the host's public key, `type base64`")
        key.add_argument("--scan", action="store_true",
                         help="pin the key the host presents now (check its fingerprint out of band)")
        sub.add_parser("list", help="all nodes")
        pin = sub.add_parser("pin-key", help="pin the key the host presents now (after a rebuild)")
        pin.add_argument("name")

    def handle(self, *args, action, **opts):
        return getattr(self, "do_" + action.replace("-", "_"))(**opts)

    def do_add(self, name, address, ssh_port, user, root, http_port, group, local, host_key, scan, **_):
        node = Node(name=name, address=address, ssh_user=user, root=root,
                    transport=Node.Transport.LOCAL if local else Node.Transport.SSH,
                    ssh_port=_port(ssh_port, "--ssh-port"), http_port=_port(http_port, "--http-port"))
        if group:
            node.group, _ = ServerGroup.objects.get_or_create(name=group)
        if scan:
            node.host_key = _scan(address, node.ssh_port)
        elif host_key:
            node.host_key = host_key
        try:
            node.full_clean()
        except ValidationError as exc:
            raise CommandError(f"node {name!r} not added: {validation_message(exc)}") from None
        node.save()
        self.stdout.write(f"node {node.name} added ({node.address}, root {node.root})")
        if node.host_key:
            self.stdout.write(f"pinned host key {transport.fingerprint(node.host_key)}")

    def do_list(self, **_):
        for node in Node.objects.select_related("group"):
            state = f"set up {node.set_up_at:%Y-%m-%d %H:%M}" if node.set_up_at else "not set up"
            self.stdout.write(f"{node.name:<20} {node.transport:<5} {node.ssh_user}@{node.address}:{node.ssh_port} "
                              f"root={node.root} http={node.http_port} {state}")

    def do_pin_key(self, name, **_):
        try:
            node = get_node(name)
        except InvalidNode as exc:
            raise CommandError(str(exc)) from None
        old = node.host_key
        node.host_key = _scan(node.address, node.ssh_port)
        node.save(update_fields=["host_key"])
        before = transport.fingerprint(old) if old else "none"
        self.stdout.write(f"node {name}: pinned {transport.fingerprint(node.host_key)} (was {before})")


def _port(value, flag):
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"{flag} {value!r} is not a port number (1-65535)") from None


def _scan(address, port):
    try:
        return transport.scan_host_key(address, port)
    except (transport.TransportError, ValueError) as exc:
        raise CommandError(f"could not read the host key of {address}:{port}: {exc}") from None
