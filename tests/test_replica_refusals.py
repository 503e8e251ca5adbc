"""replica add refuses, before any job exists, a node whose cluster holds app databases (cloning would wipe
them) and a node with a host-name address (the primary's pg_hba admits a replica by IP). Database only."""

import pytest
from django.utils import timezone

from jobs.steps import replication
from toppcloud_site.records import roles
from toppcloud_site.records.models import App, Node, ServerGroup, Service

pytestmark = pytest.mark.django_db
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def make(name, address, group, role=Node.Role.APP, port=5433):
    node = Node(name=name, address=address, host_key=HOST_KEY, pg_cluster=f"c-{name}", pg_port=port,
                set_up_at=timezone.now())
    roles.assign(node, role=role, group=group)
    return node


@pytest.fixture
def group():
    group = ServerGroup.objects.create(name="rg")
    make("rdb", "10.2.0.2", group, role=Node.Role.DB)
    group.refresh_from_db()
    return group


def test_a_node_holding_an_apps_database_is_refused(group):
    node = make("rapp", "10.2.0.3", group)
    assert replication.check_replica_add(node.name, group.name)[0].pk == node.pk  # nothing on it yet
    outsider = App.objects.create(name="outsider")  # an app outside the group deployed with --node
    Service.objects.create(app=outsider, kind=Service.Kind.POSTGRESQL, node=node, settings={})
    with pytest.raises(replication.ReplicaRefused,
                       match="node rapp holds the databases of outsider: cloning the primary would wipe them"):
        replication.check_replica_add(node.name, group.name)


def test_a_node_with_a_host_name_address_is_refused(group):
    make("rname", "replica.example.org", group)
    with pytest.raises(replication.ReplicaRefused,
                       match="node rname's address 'replica.example.org' is not an IP address"):
        replication.check_replica_add("rname", group.name)
