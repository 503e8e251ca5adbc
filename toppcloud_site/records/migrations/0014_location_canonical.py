"""Locations in their canonical form (nodeops.validate.validate_location): hosts lower-cased, no trailing dot.

A row saved before the rule (say 'Loc-Upper.Test') is rewritten as the front door renders it. A row the
rule refuses outright, or one whose canonical form another row already has, is left as it is: the front
door leaves it out and says so in each front_door job (front_door.skipped), until someone fixes or
deletes it; the migration never deletes a record.
"""

from django.db import migrations, models

import toppcloud_site.records.models


def canonical_locations(apps, schema_editor):
    from nodeops import validate

    Location = apps.get_model("records", "Location")
    taken = set(Location.objects.values_list("host", "path"))
    for loc in Location.objects.order_by("pk"):
        try:
            host, path = validate.validate_location(loc.host, loc.path)
        except ValueError:
            continue
        if (host, path) != (loc.host, loc.path) and (host, path) not in taken:
            taken.add((host, path))
            Location.objects.filter(pk=loc.pk).update(host=host, path=path)


class Migration(migrations.Migration):

    dependencies = [
        ("records", "0013_backup_download"),
    ]

    operations = [
        migrations.AlterField(
            model_name="location",
            name="path",
            field=models.CharField(default="/", help_text="A prefix starting and ending with '/', e.g. / or /blog/.",
                                   max_length=200, validators=[toppcloud_site.records.models.validate_url_path]),
        ),
        migrations.RunPython(canonical_locations, migrations.RunPython.noop),
    ]
