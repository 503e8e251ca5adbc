"""The audit log is append-only, enforced by the database (as jobs_jobevent is): UPDATE, DELETE and
(on PostgreSQL) TRUNCATE of records_auditentry fail with an error naming the table."""

from django.db import migrations

from toppcloud_site.vendor_sql import run_per_vendor

POSTGRESQL_INSTALL = [
    """
    CREATE OR REPLACE FUNCTION records_auditentry_refuse_change() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'records_auditentry is append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER records_auditentry_append_only BEFORE UPDATE OR DELETE ON records_auditentry
    FOR EACH ROW EXECUTE FUNCTION records_auditentry_refuse_change()
    """,
    """
    CREATE TRIGGER records_auditentry_no_truncate BEFORE TRUNCATE ON records_auditentry
    FOR EACH STATEMENT EXECUTE FUNCTION records_auditentry_refuse_change()
    """,
]
POSTGRESQL_REMOVE = [
    "DROP TRIGGER IF EXISTS records_auditentry_append_only ON records_auditentry",
    "DROP TRIGGER IF EXISTS records_auditentry_no_truncate ON records_auditentry",
    "DROP FUNCTION IF EXISTS records_auditentry_refuse_change()",
]
SQLITE_INSTALL = [
    """
    CREATE TRIGGER records_auditentry_no_update BEFORE UPDATE ON records_auditentry
    BEGIN SELECT RAISE(ABORT, 'records_auditentry is append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER records_auditentry_no_delete BEFORE DELETE ON records_auditentry
    BEGIN SELECT RAISE(ABORT, 'records_auditentry is append-only: DELETE refused'); END
    """,
]
SQLITE_REMOVE = ["DROP TRIGGER IF EXISTS records_auditentry_no_update",
                 "DROP TRIGGER IF EXISTS records_auditentry_no_delete"]


class Migration(migrations.Migration):
    dependencies = [("records", "0007_group_shared_secret")]
    operations = [migrations.RunPython(run_per_vendor({"postgresql": POSTGRESQL_INSTALL, "sqlite": SQLITE_INSTALL}),
                                       run_per_vendor({"postgresql": POSTGRESQL_REMOVE, "sqlite": SQLITE_REMOVE}))]
