"""manage.py bootstrap: an admin user, the SSH key, a local node, and its setup job.

Used by `make run` for the embedded default; safe to run again.
"""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from jobs.management.commands.ssh_key import ensure_key
from jobs import actions, cli
from jobs.engine.states import ActorKind
from toppcloud_site.records.models import Node


def admin_password(var_dir):
    """The embedded admin's password, made once and kept in var/ (0600)."""
    path = Path(var_dir) / "admin-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(12))
    return path.read_text().strip()


class Command(cli.Command):
    help = "Prepare the embedded default: admin user, SSH key, local node, setup job."

    def add_arguments(self, parser):
        parser.add_argument("--node-port", type=int, default=8081, help="HTTP port of the local node's nginx")
        parser.add_argument("--no-setup", action="store_true", help="do not queue the local node's setup job")

    def handle(self, node_port, no_setup, **opts):
        password = admin_password(settings.VAR_DIR)
        User = get_user_model()
        user, created = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        if created or not user.check_password(password):
            user.set_password(password)
            user.save()
        ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE)
        node, _ = Node.objects.get_or_create(name="local", defaults={
            "transport": Node.Transport.LOCAL, "address": "127.0.0.1", "http_port": node_port,
            "root": str(Path(settings.VAR_DIR).resolve() / "node"),
        })
        self.stdout.write(f"admin user: admin  password: {password}")
        if not no_setup:
            job = actions.setup_node(node, actor_kind=ActorKind.SYSTEM, actor="bootstrap")
            self.stdout.write(f"setup of node local queued as job {job.pk}")
