"""manage.py secrets new-key | rotate: the keys that encrypt stored secrets (TOPPCLOUD_SECRET_KEYS).

To rotate: put a new key (`secrets new-key`) first in TOPPCLOUD_SECRET_KEYS,
keeping the old one after it; restart; run `secrets rotate`, which
re-encrypts every stored secret with the new key; then drop the old key.
"""

from django.core.management.base import CommandError
from django.db import transaction

from jobs import cli
from toppcloud_site.records import secrets
from toppcloud_site.records.models import Certificate, ConfigValue, ServerGroup, Service

# (model, encrypted field): every secret stored.
STORED = [(ConfigValue, "secret_value"), (Service, "password"), (ServerGroup, "shared_secret"),
          (ServerGroup, "previous_shared_secret"), (Certificate, "private_key")]


class Command(cli.Command):
    help = "Print a new key for TOPPCLOUD_SECRET_KEYS, or re-encrypt every stored secret with the first key."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("new-key", help="print a new Fernet key")
        sub.add_parser("rotate", help="re-encrypt every stored secret with the first key of TOPPCLOUD_SECRET_KEYS")

    def handle(self, action, **opts):
        if action == "new-key":
            self.stdout.write(secrets.generate_key())
            return
        counts = []
        try:
            with transaction.atomic():
                for model, field in STORED:
                    rows = model.objects.exclude(**{field: ""}).select_for_update()
                    for row in rows:
                        row.save(update_fields=[field])  # read with any key, written with the first
                    counts.append(f"{len(rows)} {model._meta.verbose_name_plural} ({field})")
        except secrets.SecretUnreadable as exc:
            raise CommandError(f"nothing was re-encrypted: {exc}") from None
        self.stdout.write("re-encrypted with the first key: " + ", ".join(counts))
