"""A group's database node that is one of the group's own nodes gets the db role (records/roles.py: the
database node and the db role agree). Nodes outside every group that are a group's database node (how
groups had one before roles) keep role app."""

from django.db import migrations
from django.db.models import F


def database_nodes_are_db(apps, schema_editor):
    ServerGroup = apps.get_model("records", "ServerGroup")
    Node = apps.get_model("records", "Node")
    own = ServerGroup.objects.filter(database_node__group_id=F("pk")).values_list("database_node_id", flat=True)
    Node.objects.filter(pk__in=list(own), role="app").update(role="db")


class Migration(migrations.Migration):

    dependencies = [
        ("records", "0018_replica_replication_password"),
    ]

    operations = [
        migrations.RunPython(database_nodes_are_db, migrations.RunPython.noop),
    ]
