"""The audit log becomes one keyed hash chain (records/audit.py): prev_hash and hash on each entry.

Entries that exist already are chained here, in id order, under
TOPPCLOUD_LOG_KEY (the append-only guard of migration 0008 is lifted for
that and put back), so the whole log verifies and none is left unguarded.
"""

import importlib

import django.utils.timezone
from django.db import migrations, models

from toppcloud_site.vendor_sql import run_per_vendor

guard = importlib.import_module("toppcloud_site.records.migrations.0008_audit_append_only")
INSTALL = {"postgresql": guard.POSTGRESQL_INSTALL, "sqlite": guard.SQLITE_INSTALL}
REMOVE = {"postgresql": guard.POSTGRESQL_REMOVE, "sqlite": guard.SQLITE_REMOVE}


def chain_existing(apps, schema_editor):
    from toppcloud_site.logchain import GENESIS
    from toppcloud_site.records.audit import entry_hash

    AuditEntry = apps.get_model("records", "AuditEntry")
    prev = GENESIS
    for entry in AuditEntry.objects.using(schema_editor.connection.alias).order_by("id").iterator(chunk_size=2000):
        entry.prev_hash, entry.hash = prev, entry_hash(prev, entry)
        entry.save(update_fields=["prev_hash", "hash"])
        prev = entry.hash


class Migration(migrations.Migration):

    dependencies = [
        ("records", "0013_backup_download"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditentry",
            name="hash",
            field=models.CharField(default="", max_length=64),
        ),
        migrations.AddField(
            model_name="auditentry",
            name="prev_hash",
            field=models.CharField(default="", max_length=64),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="at",
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now),
        ),
        migrations.RunPython(run_per_vendor(REMOVE), run_per_vendor(INSTALL)),
        migrations.RunPython(chain_existing, migrations.RunPython.noop),
        migrations.RunPython(run_per_vendor(INSTALL), run_per_vendor(REMOVE)),
    ]
