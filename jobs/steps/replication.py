"""PostgreSQL streaming replication of a server group: its primary (group.database_node) and its
replicas (nodes of role db-replica), as the control plane sees them. docs/groups.md.

The flows (replica_add; promote) are built from these steps; nodeops.services
does the work on the nodes. A replica's state and lag are kept in its
node.facts (REPLICATION_FACTS), so `status`, the admin and the apps'
environment read them without asking a host: replica_of (the primary's
name) and replication ({state, lag_bytes, lag_seconds, sync_state,
checked_at}).
"""

import ipaddress
import secrets
import time

from django.db import transaction
from django.utils import timezone

from jobs.engine.context import FlowFailed
from jobs.engine.redact import register_secret
from jobs.steps import data
from nodeops import services as node_services
from toppcloud_site.records.models import Node, ServerGroup, Service

# The facts a replica add records; a node's setup keeps them (its own facts are the host's).
REPLICATION_FACTS = ("replica_of", "replication", "fenced", "promoted")  # the last two: a promote's


def slot_name(node):
    return node_services.slot_name(node.name)


def replicas(group):
    """The group's replica nodes (role db-replica), by name."""
    return list(Node.objects.filter(group=group, role=Node.Role.DB_REPLICA).order_by("name"))


def replication_password(group):
    """The password of the group's replication role, made once; masked in every event from now on."""
    if not group.replication_password:
        with transaction.atomic():
            locked = ServerGroup.objects.select_for_update().get(pk=group.pk)
            if not locked.replication_password:
                locked.replication_password = secrets.token_urlsafe(24)
                locked.save(update_fields=["replication_password"])
        group.refresh_from_db(fields=["replication_password"])
    register_secret(group.replication_password)
    return group.replication_password


def cluster_spec(node, version):
    return {"version": version, "port": node.pg_port, "cluster": node.pg_cluster}


def ensure_clusters(ctx, primary, replica):
    """Both clusters exist and run with toppcloud's config (the replica's pg_hba lets the apps' roles in,
    as the primary's does); the PostgreSQL version they share."""
    versions = {}
    for node in (primary, replica):
        versions[node.name] = data.ensure_cluster(ctx, node)["version"]
    if versions[primary.name] != versions[replica.name]:
        raise FlowFailed(f"{replica.name} has PostgreSQL {versions[replica.name]} and the primary {primary.name} "
                         f"{versions[primary.name]}: a streaming replica needs the same major version")
    return versions[primary.name]


def primary_version(ctx, primary):
    """The PostgreSQL version of the primary's cluster (pg-ensure: it also keeps its config as wanted)."""
    return data.ensure_cluster(ctx, primary)["version"]


def prepare_primary(ctx, group, primary, replica, version):
    """Settings, replication role, the replica's slot and a pg_hba line for every replica of the group."""
    addresses = sorted({n.address for n in replicas(group) if n.pk != primary.pk} | {replica.address})
    return node_services.ensure_primary(ctx.transport(primary), ctx.emit, cluster_spec(primary, version),
                                        replication_password(group), slot=slot_name(replica), addresses=addresses)


def clone(ctx, group, primary, replica, version):
    """The replica streams from the primary: checked, or cloned (pg_basebackup -R) and started."""
    return node_services.ensure_standby(ctx.transport(replica), ctx.emit, cluster_spec(replica, version),
                                        replication_password(group), slot=slot_name(replica),
                                        primary_host=primary.address, primary_port=primary.pg_port)


def status(ctx, primary, version):
    return node_services.replication_status(ctx.transport(primary), ctx.emit, cluster_spec(primary, version))


def wait_streaming(ctx, primary, replica, version, timeout=60):
    """Until pg_stat_replication on the primary shows the replica streaming; its row (with the lag)."""
    slot, deadline, last = slot_name(replica), time.monotonic() + timeout, None
    while True:
        found = status(ctx, primary, version)
        row = next((r for r in found.get("replicas", []) if r["application_name"] == slot), None)
        if row and row["state"] == "streaming":
            return row
        last = row["state"] if row else "not connected"
        if time.monotonic() > deadline:
            raise FlowFailed(f"{replica.name} does not stream from {primary.name} after {timeout}s "
                             f"(pg_stat_replication: {last}); see its PostgreSQL log")
        time.sleep(0.2)


def record(ctx, group, primary, version):
    """The lag of each replica of the group as the primary sees it, in its facts and in a
    replication.lag event; {replica name: its figures}."""
    found = status(ctx, primary, version)
    rows = {r["application_name"]: r for r in found.get("replicas", [])}
    slots = {s["slot_name"]: s for s in found.get("slots", [])}
    now, seen = timezone.now().isoformat(), {}
    for node in replicas(group):
        row, slot = rows.get(slot_name(node)), slots.get(slot_name(node)) or {}
        figures = {"state": row["state"] if row else "not connected", "checked_at": now,
                   "lag_bytes": row["lag_bytes"] if row else None,
                   "lag_seconds": row["lag_seconds"] if row else None,
                   "sync_state": row["sync_state"] if row else None,
                   # WAL the primary keeps for it (grows while it is away; max_slot_wal_keep_size bounds it)
                   "slot_retained_bytes": slot.get("retained_bytes"), "slot_wal_status": slot.get("wal_status")}
        with transaction.atomic():
            locked = Node.objects.select_for_update().get(pk=node.pk)
            facts = dict(locked.facts or {})
            if facts.get("replica_of") != primary.name:
                continue  # not (yet) this primary's replica: replica add records it once it streams
            facts["replication"] = figures
            locked.facts = facts
            locked.save(update_fields=["facts"])
        ctx.emit("replication.lag", node=node.name, primary=primary.name, slot=slot_name(node), **figures)
        seen[node.name] = figures
    return seen


def mark_replica(ctx, replica, primary, row):
    """Record the node as the primary's replica: role db-replica, facts replica_of and replication."""
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=replica.pk)
        facts = dict(locked.facts or {})
        facts["replica_of"] = primary.name
        facts.pop("fenced", None)  # an old primary a promote fenced: cloned afresh, it is a replica now
        facts.pop("promoted", None)
        facts["replication"] = {"state": row["state"], "lag_bytes": row["lag_bytes"],
                                "lag_seconds": row["lag_seconds"], "sync_state": row["sync_state"],
                                "checked_at": timezone.now().isoformat()}
        locked.facts, locked.role = facts, Node.Role.DB_REPLICA
        locked.save(update_fields=["facts", "role"])
    replica.refresh_from_db()
    ctx.emit("replica.recorded", node=replica.name, role=replica.role, replica_of=primary.name)


def synchronous(ctx, group, primary, version):
    """synchronous_standby_names on the primary as the group wants it: FIRST 1 of the replicas that stream
    when synchronous_replication is on; none when it is off, or when no replica streams (every commit
    would wait for ever: that is an event of its own). {names, synchronous_standby_names}."""
    found = status(ctx, primary, version)
    streaming = {r["application_name"] for r in found.get("replicas", []) if r["state"] == "streaming"}
    names = [slot_name(n) for n in replicas(group) if slot_name(n) in streaming]
    if group.synchronous_replication and not names:
        ctx.emit("replication.sync_skipped", group=group.name, primary=primary.name,
                 reason="no replica streams: synchronous_standby_names stays empty, or every commit would wait")
    wanted = names if group.synchronous_replication else []
    result = node_services.set_sync_standbys(ctx.transport(primary), ctx.emit, cluster_spec(primary, version), wanted)
    ctx.emit("replication.synchronous", group=group.name, primary=primary.name, names=wanted,
             synchronous_standby_names=result["synchronous_standby_names"], changed=result["changed"])
    return {"names": wanted, **result}


def replica_row(node):
    """A replica's figures as last recorded: {node, replica_of, state, lag_bytes, lag_seconds, sync_state, checked_at}."""
    facts = node.facts or {}
    row = {"node": node.name, "replica_of": facts.get("replica_of"), **(facts.get("replication") or {})}
    if facts.get("fenced"):  # an old primary a promote left: a replica of nothing until replica add
        row["fenced"] = facts["fenced"]
    return row


def describe(row):
    """One line: the replica, its primary, its state and lag (bytes, seconds) and when that was checked."""
    fenced = row.get("fenced")
    if fenced and not row.get("replica_of"):
        how = "fenced" if fenced.get("fenced") else "NOT fenced (it did not answer)"
        return (f"replica {row['node']} to be: the old primary, {how} by promote job {fenced.get('job')} "
                f"({str(fenced.get('at'))[:19]}); `replica add {row['node']}` makes it a replica of "
                f"{fenced.get('primary')}")
    seconds = row.get("lag_seconds")
    lag = ("lag ? bytes" if row.get("lag_bytes") is None else
           f"lag {row['lag_bytes']} bytes, {'?' if seconds is None else seconds} s")
    sync = f", {row['sync_state']}" if row.get("sync_state") else ""
    return (f"replica {row['node']} of {row.get('replica_of') or '?'}: {row.get('state') or 'unknown'}{sync}, {lag}"
            f" (checked {str(row.get('checked_at') or 'never')[:19]})")


# --- for the command and the admin: refused before any job exists ------------------------

class ReplicaRefused(ValueError):
    pass


def check_group_with_primary(group_name):
    """The group, if it has a database node (its primary); ReplicaRefused otherwise."""
    group = ServerGroup.objects.select_related("database_node").filter(name=group_name).first()
    if group is None:
        known = ", ".join(ServerGroup.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise ReplicaRefused(f"there is no server group {group_name!r} (known: {known})")
    if group.database_node is None:
        raise ReplicaRefused(f"group {group.name} has no database node (its PostgreSQL primary) to replicate: "
                             "set its database node first (admin, or a group document)")
    return group


def check_replica_add(node_name, group_name):
    """(node, group) if NODE can become a streaming replica of the group's primary; ReplicaRefused naming
    the problem otherwise (nothing is queued then)."""
    node = Node.objects.filter(name=node_name).first()
    if node is None:
        raise ReplicaRefused(f"there is no node {node_name!r}")
    if not group_name:
        raise ReplicaRefused(f"node {node.name} is in no group: a replica is of a group's primary")
    group = check_group_with_primary(group_name)
    primary = group.database_node
    if node.group_id != group.pk:
        where = f"in group {node.group.name}" if node.group_id else "in no group"
        raise ReplicaRefused(f"node {node.name} is not in group {group.name} (it is {where}): "
                             f"put it in {group.name} first")
    if node.pk == primary.pk:
        raise ReplicaRefused(f"node {node.name} is the primary of group {group.name}; a replica is another node")
    if node.set_up_at is None:
        raise ReplicaRefused(f"node {node.name} is not set up yet: run `manage.py setup_node {node.name}` first")
    if not node.pg_cluster or not node.pg_port:
        raise ReplicaRefused(f"node {node.name} has no PostgreSQL cluster and port (pg_cluster, pg_port)")
    if node.address == primary.address and (node.pg_cluster == primary.pg_cluster or node.pg_port == primary.pg_port):
        raise ReplicaRefused(f"node {node.name} and the primary {primary.name} are at {node.address} with the same "
                             "PostgreSQL cluster or port: cloning would replace the primary's own data")
    if node.database_for.exclude(pk=group.pk).exists():
        raise ReplicaRefused(f"node {node.name} is the database node of group "
                             f"{node.database_for.first().name}: it cannot be a replica too")
    if node.role == Node.Role.LB:
        raise ReplicaRefused(f"node {node.name} is the group's load balancer (role lb)")
    try:  # the primary's pg_hba admits a replica by its IP address (node_data._hba_address)
        ipaddress.ip_address(node.address)
    except ValueError:
        raise ReplicaRefused(f"node {node.name}'s address {node.address!r} is not an IP address: the primary's "
                             "pg_hba admits a replica by its IP address; give the node its IP address") from None
    # Cloning empties the node's cluster: refuse while an app keeps its database there. An old primary this
    # group's promote fenced had its apps' services moved by it, so any left there is such an app too.
    kept = sorted(Service.objects.filter(kind=Service.Kind.POSTGRESQL, node=node)
                  .values_list("app__name", flat=True))
    if kept:
        raise ReplicaRefused(f"node {node.name} holds the databases of {', '.join(kept[:5])}"
                             f"{' and more' if len(kept) > 5 else ''}: cloning the primary would wipe them; "
                             "move them elsewhere first")
    return node, group
