"""Seals of the whole log (jobs/engine/seal.py), and the cut-over from plain sha256 to the keyed hash.

Seal 1, written here with legacy=True, names every job that exists now and
its head: those events were hashed with plain sha256 before TOPPCLOUD_LOG_KEY
existed, and `jobs verify` accepts that for them alone (their heads are now
pinned under the key, so they cannot be rewritten either). Every later
event must carry the keyed hash. The seal is written to the seal file too.
"""

from django.db import migrations, models

from jobs.engine.triggers import SEAL_INSTALL, SEAL_REMOVE
from toppcloud_site.vendor_sql import run_per_vendor


def cut_over(apps, schema_editor):
    from jobs.engine.seal import seal

    seal(legacy=True, models=(apps.get_model("jobs", "LogSeal"), apps.get_model("jobs", "SealedHead"),
                              apps.get_model("records", "AuditEntry")))


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0006_cron_tasks_config"),
        ("records", "0015_audit_seal"),
    ]

    operations = [
        migrations.CreateModel(
            name="LogSeal",
            fields=[
                ("number", models.PositiveBigIntegerField(primary_key=True, serialize=False)),
                ("at", models.DateTimeField()),
                ("prev_mac", models.CharField(max_length=64)),
                ("jobs", models.JSONField(default=list)),
                ("audit", models.JSONField(null=True)),
                ("legacy", models.BooleanField(default=False)),
                ("mac", models.CharField(max_length=64)),
            ],
            options={
                "ordering": ["number"],
            },
        ),
        migrations.CreateModel(
            name="SealedHead",
            fields=[
                ("job_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("seq", models.PositiveIntegerField()),
                ("hash", models.CharField(max_length=64)),
            ],
        ),
        migrations.RunPython(run_per_vendor(SEAL_INSTALL), run_per_vendor(SEAL_REMOVE)),
        migrations.RunPython(cut_over, migrations.RunPython.noop),
    ]
