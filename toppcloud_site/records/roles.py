"""A node's role in its server group, set in one place: `manage.py node add/set`, the Node admin page and
group documents all come here (or to sync_database_node after their own save).

The rules are Node.clean_role's and ServerGroup.clean_database_node's: a group has at most one lb node and
one db node, a db-replica needs a group with a database node, and a group's `database_node` and its db
role agree. How the two stay together: `database_node` remains what the code that places databases reads
(jobs/steps/data.py), and the db role follows it both ways:

- giving a node the db role makes it its group's database node (refused if the group has another one:
  `promote` changes the primary);
- taking the db role from a node clears the group's database node (refused while an app of the group keeps
  its database there: that is a failover, not an edit);
- the group's admin page cannot point `database_node` at a node of the group whose role is not db.
"""

from django.db import transaction

from toppcloud_site.records.models import Node, ServerGroup

UNSET = object()


def assign(node, *, role=UNSET, group=UNSET):
    """Give the node this role and/or group, validated (ValidationError) and saved with its group's database
    node in step; the groups whose nodes' front doors may trust another balancer now (their pks)."""
    with transaction.atomic():
        before = placement(node) if node.pk else NOWHERE
        if group is not UNSET:
            node.group = group
        if role is not UNSET:
            node.role = role
        # Two role changes in one group at once would each see the other's old role: one at a time per group.
        groups = {pk for pk in (before[0], node.group_id) if pk is not None}  # before[0]: its group then
        list(ServerGroup.objects.select_for_update().filter(pk__in=groups).values_list("pk", flat=True))
        node.full_clean()
        node.save()
        sync_database_node(node)
    return affected_groups(before, placement(node))


def sync_database_node(node):
    """After the node was saved: its group's database node is it exactly when its role is db."""
    if node.group_id is None:
        return
    group = ServerGroup.objects.select_for_update().get(pk=node.group_id)
    if node.role == Node.Role.DB and group.database_node_id is None:
        group.database_node = node
    elif node.role != Node.Role.DB and group.database_node_id == node.pk:
        group.database_node = None
    else:
        return
    group.save(update_fields=["database_node"])


NOWHERE = (None, Node.Role.APP, None)


def placement(node):
    """What of a node decides whom its group's front doors trust: (group pk, role, address)."""
    return node.group_id, node.role, node.address


def affected_groups(before, after):
    """The groups (pks) whose nodes' forwarded-header trust may have changed, from a node's placement before
    and after: an lb came, went or changed address, or a node joined or left a group that has an lb."""
    (old_group, old_role, _), (new_group, new_role, _) = before, after
    lb = Node.Role.LB
    if lb in (old_role, new_role) and before != after:
        return {pk for pk in (old_group, new_group) if pk is not None}
    if old_group == new_group:
        return set()  # another role in the same group: whom its nodes trust is the same
    return {pk for pk in (old_group, new_group)
            if pk is not None and Node.objects.filter(group_id=pk, role=lb).exists()}
