"""Failover of a group's PostgreSQL primary to one of its replicas (the promote flow's steps).

The checks that refuse before any job exists (check_promote), fencing the old
primary, promoting the replica, and the records that follow: roles swapped,
the group's database node, and the apps' postgresql services moved to the
new primary with their passwords (the roles and their verifiers came over
with the data), so a config apply gives every app the new DATABASE_URL.
"""

from django.db import transaction
from django.utils import timezone

from jobs.engine.context import FlowFailed
from jobs.steps import locks, replication
from nodeops import failover as node_failover
from nodeops.transport import TransportError
from toppcloud_site.records.models import App, Node, ServerGroup, Service


class PromoteRefused(ValueError):
    pass


def check_promote(node):
    """Refuse (PromoteRefused) unless `node` is a db-replica of its group's database node."""
    if node.group_id is None:
        raise PromoteRefused(f"{node.name} is in no server group: only a replica of a group's primary is promoted")
    group = node.group
    primary = group.database_node
    if primary is None:
        raise PromoteRefused(f"group {group.name} has no database node: there is no primary to take over from")
    if primary.pk == node.pk:
        raise PromoteRefused(f"{node.name} is the primary of group {group.name} already")
    if node.role != Node.Role.DB_REPLICA or node.facts.get("replica_of") != primary.name:
        said = f"role {node.role}" + (f", a replica of {node.facts['replica_of']}" if node.facts.get("replica_of")
                                      else ", a replica of nothing")
        raise PromoteRefused(f"{node.name} is not a streaming replica of {primary.name} ({said}): "
                             f"add it with `replica add {node.name} --group {group.name}` first")
    elsewhere = sorted(Service.objects.filter(kind=Service.Kind.POSTGRESQL, node=primary)
                       .exclude(app__group=group).values_list("app__name", flat=True))
    if elsewhere:
        raise PromoteRefused(f"{', '.join(elsewhere)} keep their databases on {primary.name} but are not in group "
                             f"{group.name}: fencing {primary.name} would take them down; move them into the "
                             "group (or their databases elsewhere) first")
    return group, primary


def take_database_lock(ctx, group):
    """`db:GROUP` for this job: one promote of a group at a time."""
    holder = locks.take(ctx, f"db:{group.name}")
    if holder is not None and holder.pk != ctx.parent_id:
        raise FlowFailed(f"the database of group {group.name} is being changed by job {holder.pk} ({holder.kind}); "
                         "this job did nothing: run it again when that one has ended")
    ctx.emit("lock.taken", key=f"db:{group.name}")


def check_replica(ctx, node):
    """The replica's cluster runs and is in recovery (a standby): it is one to promote."""
    found = node_failover.state(ctx.transport(node), ctx.emit, node.pg_cluster)
    if not found["running"]:
        raise FlowFailed(f"the cluster {node.pg_cluster} on {node.name} is not running: start it, or add "
                         "another replica; nothing was changed")
    if not found["in_recovery"]:
        raise FlowFailed(f"the cluster {node.pg_cluster} on {node.name} is not in recovery (a primary already?); "
                         "nothing was changed")
    return found


def fence(ctx, old, *, old_primary_is_down):
    """Stop the old primary's cluster and keep it stopped; if it does not answer over ssh, refuse unless
    the person said it is down (then record that it could not be fenced). {fenced: bool, ...}"""
    try:
        done = node_failover.fence(ctx.transport(old), ctx.emit, old.pg_cluster, ctx.job_id)
    except (TransportError, node_failover.NotAnswering) as exc:
        if not old_primary_is_down:
            raise FlowFailed(f"the old primary {old.name} does not answer, so it cannot be fenced ({exc}); "
                             f"nothing was changed. If it is down for good (powered off, its disk gone), run "
                             f"promote again with --old-primary-is-down") from None
        ctx.emit("fence.skipped", node=old.name, reason=str(exc),
                 warning="the old primary was not fenced: make sure it cannot start again before it is "
                         "brought back (replica add makes it a replica)")
        return {"fenced": False, "reason": str(exc)}
    ctx.emit("fence.done", node=old.name, cluster=old.pg_cluster, **done)
    return {"fenced": True, **done}


def promote(ctx, node):
    done = node_failover.promote(ctx.transport(node), ctx.emit, node.pg_cluster, wait=60)
    ctx.emit("promote.done", node=node.name, cluster=node.pg_cluster, **done)
    return done


def swap_records(ctx, group, new, old, version, fenced):
    """In one transaction: the group's database node is `new` (role db, no longer a replica); `old` is a
    db-replica to be (fenced, a replica of nothing until `replica add`); each app's postgresql service
    on `old` now on `new`. The apps whose services moved."""
    now = timezone.now().isoformat()
    with transaction.atomic():
        group = ServerGroup.objects.select_for_update().get(pk=group.pk)
        new = Node.objects.select_for_update().get(pk=new.pk)
        old = Node.objects.select_for_update().get(pk=old.pk)
        group.database_node = new
        group.save(update_fields=["database_node"])
        new.role = Node.Role.DB
        new.facts.pop("replica_of", None)
        new.facts.pop("replication", None)
        new.facts["promoted"] = {"job": ctx.job_id, "at": now, "from": old.name}
        new.save(update_fields=["role", "facts"])
        old.role = Node.Role.DB_REPLICA
        old.facts.pop("replica_of", None)
        old.facts.pop("replication", None)
        old.facts.pop("promoted", None)
        old.facts["fenced"] = {"job": ctx.job_id, "at": now, "fenced": fenced, "primary": new.name}
        old.save(update_fields=["role", "facts"])
        moved = []
        for service in (Service.objects.select_for_update().select_related("app")
                        .filter(kind=Service.Kind.POSTGRESQL, node=old, app__group=group).order_by("app__name")):
            # A record of the app on the new node (left by an old deploy there) is not its database.
            Service.objects.filter(app=service.app, kind=Service.Kind.POSTGRESQL, node=new).delete()
            service.node = new
            service.settings = {**service.settings, "version": version, "port": new.pg_port,
                                "cluster": new.pg_cluster}
            service.save(update_fields=["node", "settings", "updated_at"])
            moved.append(service.app.name)
        # Other replicas of the old primary stream from nothing now; the apps stop reading from them
        # (their replica_of is not the new primary) until `replica add` clones each from the new one.
        others = sorted(Node.objects.filter(group=group, role=Node.Role.DB_REPLICA, facts__replica_of=old.name)
                        .exclude(pk=new.pk).values_list("name", flat=True))
    ctx.emit("records.swapped", group=group.name, database_node=new.name, primary_was=old.name,
             roles={new.name: new.role, old.name: old.role}, services_moved=moved,
             replicas_to_add_again=[old.name, *others])
    return list(App.objects.filter(name__in=moved).order_by("name"))


def synchronous_after_promote(ctx, group, node, version):
    """A group with synchronous replication: the new primary must not wait for a standby that is not
    there (every write would hang), so it lists only the replicas that stream to it: none yet, until
    `replica add` gives it one (replication.synchronous, which replica add calls too)."""
    done = replication.synchronous(ctx, group, node, version)
    return {"wanted": group.synchronous_replication, "standbys": done["names"],
            "synchronous_standby_names": done["synchronous_standby_names"]}
