"""SQL that makes jobs_jobevent append-only, for PostgreSQL and SQLite.

UPDATE, DELETE (and on PostgreSQL TRUNCATE) of jobs_jobevent fail with an
error naming the table, and so do DELETE and TRUNCATE of jobs_job: a job row
is kept as long as its events. (Events refer to their job without a foreign
key: its deferred check was 8% of a job's cost in bench/jobs_throughput.py;
rows that are never deleted cannot leave events orphaned, and `jobs verify`
checks that none are.) Used by migration 0002; tests use it to drop and
restore the guard when they play someone tampering with the database.
"""

POSTGRESQL_INSTALL = [
    """
    CREATE OR REPLACE FUNCTION jobs_jobevent_refuse_change() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'jobs_jobevent is append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER jobs_jobevent_append_only
    BEFORE UPDATE OR DELETE ON jobs_jobevent
    FOR EACH ROW EXECUTE FUNCTION jobs_jobevent_refuse_change()
    """,
    """
    CREATE TRIGGER jobs_jobevent_no_truncate
    BEFORE TRUNCATE ON jobs_jobevent
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_jobevent_refuse_change()
    """,
    """
    CREATE OR REPLACE FUNCTION jobs_job_refuse_delete() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'jobs_job rows are kept with their events: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER jobs_job_kept
    BEFORE DELETE ON jobs_job
    FOR EACH ROW EXECUTE FUNCTION jobs_job_refuse_delete()
    """,
    """
    CREATE TRIGGER jobs_job_no_truncate
    BEFORE TRUNCATE ON jobs_job
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_job_refuse_delete()
    """,
]
POSTGRESQL_REMOVE = [
    "DROP TRIGGER IF EXISTS jobs_jobevent_append_only ON jobs_jobevent",
    "DROP TRIGGER IF EXISTS jobs_jobevent_no_truncate ON jobs_jobevent",
    "DROP FUNCTION IF EXISTS jobs_jobevent_refuse_change()",
    "DROP TRIGGER IF EXISTS jobs_job_kept ON jobs_job",
    "DROP TRIGGER IF EXISTS jobs_job_no_truncate ON jobs_job",
    "DROP FUNCTION IF EXISTS jobs_job_refuse_delete()",
]
SQLITE_INSTALL = [
    """
    CREATE TRIGGER jobs_jobevent_no_update BEFORE UPDATE ON jobs_jobevent
    BEGIN SELECT RAISE(ABORT, 'jobs_jobevent is append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER jobs_jobevent_no_delete BEFORE DELETE ON jobs_jobevent
    BEGIN SELECT RAISE(ABORT, 'jobs_jobevent is append-only: DELETE refused'); END
    """,
    """
    CREATE TRIGGER jobs_job_kept BEFORE DELETE ON jobs_job
    BEGIN SELECT RAISE(ABORT, 'jobs_job rows are kept with their events: DELETE refused'); END
    """,
]
SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS jobs_jobevent_no_update",
    "DROP TRIGGER IF EXISTS jobs_jobevent_no_delete",
    "DROP TRIGGER IF EXISTS jobs_job_kept",
]

INSTALL = {"postgresql": POSTGRESQL_INSTALL, "sqlite": SQLITE_INSTALL}
REMOVE = {"postgresql": POSTGRESQL_REMOVE, "sqlite": SQLITE_REMOVE}

# jobs_logseal (migration 0007) is append-only the same way; its rows are also in the seal file.
SEAL_POSTGRESQL_INSTALL = [
    """
    CREATE OR REPLACE FUNCTION jobs_logseal_refuse_change() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'jobs_logseal is append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER jobs_logseal_append_only
    BEFORE UPDATE OR DELETE ON jobs_logseal
    FOR EACH ROW EXECUTE FUNCTION jobs_logseal_refuse_change()
    """,
    """
    CREATE TRIGGER jobs_logseal_no_truncate
    BEFORE TRUNCATE ON jobs_logseal
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_logseal_refuse_change()
    """,
]
SEAL_POSTGRESQL_REMOVE = [
    "DROP TRIGGER IF EXISTS jobs_logseal_append_only ON jobs_logseal",
    "DROP TRIGGER IF EXISTS jobs_logseal_no_truncate ON jobs_logseal",
    "DROP FUNCTION IF EXISTS jobs_logseal_refuse_change()",
]
SEAL_SQLITE_INSTALL = [
    """
    CREATE TRIGGER jobs_logseal_no_update BEFORE UPDATE ON jobs_logseal
    BEGIN SELECT RAISE(ABORT, 'jobs_logseal is append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER jobs_logseal_no_delete BEFORE DELETE ON jobs_logseal
    BEGIN SELECT RAISE(ABORT, 'jobs_logseal is append-only: DELETE refused'); END
    """,
]
SEAL_SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS jobs_logseal_no_update",
    "DROP TRIGGER IF EXISTS jobs_logseal_no_delete",
]
SEAL_INSTALL = {"postgresql": SEAL_POSTGRESQL_INSTALL, "sqlite": SEAL_SQLITE_INSTALL}
SEAL_REMOVE = {"postgresql": SEAL_POSTGRESQL_REMOVE, "sqlite": SEAL_SQLITE_REMOVE}
