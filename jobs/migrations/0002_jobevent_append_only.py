"""JobEvent is append-only, enforced by the database on PostgreSQL and SQLite.

UPDATE, DELETE (and on PostgreSQL TRUNCATE) of jobs_jobevent fail with an
error naming the table. The official way to drop old history is a future,
audited prune command; nothing in toppcloud edits events.
"""

from django.db import migrations

from jobs.engine.triggers import INSTALL, REMOVE
from toppcloud_site.vendor_sql import run_per_vendor


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]
    operations = [migrations.RunPython(run_per_vendor(INSTALL), run_per_vendor(REMOVE))]
