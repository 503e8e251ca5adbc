"""JobEvent is append-only, enforced by the database on PostgreSQL and SQLite.

UPDATE, DELETE (and on PostgreSQL TRUNCATE) of jobs_jobevent fail with an
error naming the table. The official way to drop old history is a future,
audited prune command; nothing in toppcloud edits events.
"""

from django.db import migrations

from jobs.triggers import INSTALL, REMOVE


def run_all(statements):
    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor not in statements:
            raise RuntimeError(f"toppcloud supports PostgreSQL and SQLite, not {vendor}")
        for sql in statements[vendor]:
            schema_editor.execute(sql, params=None)  # no params: "%" in plpgsql stays literal

    return run


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]
    operations = [migrations.RunPython(run_all(INSTALL), run_all(REMOVE))]
