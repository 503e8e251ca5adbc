"""manage.py node add|set|list|pin-key: node records from the command line.

A node's role in its group (app, lb, db, db-replica) is set with `node add --role` or `node set --role`,
checked by the group's rules (toppcloud_site/records/roles.py). When an lb node comes, goes or a node moves
between groups with one, the front doors of the group's nodes are rendered again (a front_door job), so
app nodes trust forwarded headers from their group's lb node only.
"""

import getpass

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction

from jobs import actions, cli
from jobs.engine.states import ActorKind
from jobs.nodes import InvalidNode, get_node, validation_message
from nodeops import transport
from toppcloud_site.records import roles
from toppcloud_site.records.models import Node, ServerGroup

ROLES = ", ".join(Node.Role.values)


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
        add.add_argument("--role", default=Node.Role.APP, help=f"its role in the group: {ROLES} (default app)")
        add.add_argument("--local", action="store_true", help="this machine, without SSH")
        key = add.add_mutually_exclusive_group()
        key.add_argument("--host-key", help="the host's public key, `type base64`")
        key.add_argument("--scan", action="store_true",
                         help="pin the key the host presents now (check its fingerprint out of band)")
        change = sub.add_parser("set", help="change a node's role or group (checked by the group's rules)")
        change.add_argument("name")
        change.add_argument("--role", help=f"{ROLES}")
        where = change.add_mutually_exclusive_group()
        where.add_argument("--group", help="move it to this server group (made if new)")
        where.add_argument("--no-group", action="store_true", help="take it out of its group")
        change.add_argument("--as", dest="actor", default=None, help="who asks (default: the OS user)")
        sub.add_parser("list", help="all nodes")
        pin = sub.add_parser("pin-key", help="pin the key the host presents now (after a rebuild)")
        pin.add_argument("name")

    def handle(self, *args, action, **opts):
        return getattr(self, "do_" + action.replace("-", "_"))(**opts)

    def do_add(self, name, address, ssh_port, user, root, http_port, group, role, local, host_key, scan, **_):
        node = Node(name=name, address=address, ssh_user=user, root=root,
                    transport=Node.Transport.LOCAL if local else Node.Transport.SSH,
                    ssh_port=_port(ssh_port, "--ssh-port"), http_port=_port(http_port, "--http-port"))
        _role(role)
        if scan:
            node.host_key = _scan(address, node.ssh_port)
        elif host_key:
            node.host_key = host_key
        try:
            with transaction.atomic():  # a group made for it goes if the node is refused
                roles.assign(node, role=role, group=_group(group) if group else None)
        except ValidationError as exc:
            raise CommandError(f"node {name!r} not added: {validation_message(exc)}") from None
        self.stdout.write(f"node {node.name} added ({node.address}, root {node.root}, role {node.role}"
                          + (f" in group {node.group.name})" if node.group_id else ")"))
        if node.host_key:
            self.stdout.write(f"pinned host key {transport.fingerprint(node.host_key)}")

    def do_set(self, name, role, group, no_group, actor, **_):
        if role is None and group is None and not no_group:
            raise CommandError("say what to change: --role ROLE, --group GROUP or --no-group")
        try:
            node = get_node(name)
        except InvalidNode as exc:
            raise CommandError(str(exc)) from None
        changes = {}
        if role is not None:
            changes["role"] = _role(role)
        try:
            with transaction.atomic():  # a group made for it goes if the change is refused
                if group is not None or no_group:
                    changes["group"] = _group(group) if group else None
                affected = roles.assign(node, **changes)
        except ValidationError as exc:
            raise CommandError(f"node {name} not changed: {validation_message(exc)}") from None
        self.stdout.write(f"node {node.name}: role {node.role} "
                          + (f"in group {node.group.name}" if node.group_id else "in no group"))
        if affected:
            job = actions.front_door_after_roles(affected, actor_kind=ActorKind.USER, actor=actor or getpass.getuser())
            if job is not None:
                self.stdout.write(f"forwarded-header trust changed: front_door job {job.pk} renders "
                                  f"{', '.join(job.params['nodes'])}")

    def do_list(self, **_):
        for node in Node.objects.select_related("group"):
            state = f"set up {node.set_up_at:%Y-%m-%d %H:%M}" if node.set_up_at else "not set up"
            where = f"{node.role}@{node.group.name}" if node.group_id else node.role
            self.stdout.write(f"{node.name:<20} {node.transport:<5} {node.ssh_user}@{node.address}:{node.ssh_port} "
                              f"root={node.root} http={node.http_port} {where} {state}")

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


def _role(value):
    if value not in Node.Role.values:
        raise CommandError(f"--role {value!r} is not a role: use one of {ROLES}")
    return value


def _group(name):
    """The server group of that name, made if new (its name checked first)."""
    group = ServerGroup.objects.filter(name=name).first()
    if group is None:
        group = ServerGroup(name=name)
        try:
            group.full_clean()
        except ValidationError as exc:
            raise CommandError(f"--group {name!r}: {validation_message(exc)}") from None
        group.save()
    return group


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
