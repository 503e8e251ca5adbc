"""Running SQL written per database vendor from a migration (the append-only triggers)."""


def run_per_vendor(statements):
    """A RunPython function that runs statements[vendor] in order: {"postgresql": [...], "sqlite": [...]}."""
    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor not in statements:
            raise RuntimeError(f"toppcloud supports PostgreSQL and SQLite, not {vendor}")
        for sql in statements[vendor]:
            schema_editor.execute(sql, params=None)  # no params: "%" in plpgsql stays literal

    return run
