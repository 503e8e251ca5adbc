"""Downloading a backup archive is a permission of its own (records.download_backup)."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("records", "0012_static_publish_s3"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="backup",
            options={"ordering": ["-created_at"],
                     "permissions": [("download_backup", "Can download backup archives (all of an app's data)")]},
        ),
    ]
