"""PostgreSQL streaming replicas of a server group's primary, as a person would add one by hand
(jobs/steps/replication.py; docs/groups.md)."""

from jobs.engine.context import FlowFailed
from jobs.steps import config_apply, failover, records, replication
from toppcloud_site.records.models import App


def replica_add(ctx, node, group):
    """Make NODE a streaming replica of the group's primary (its database node).

    1. clusters: both PostgreSQL clusters exist and run as toppcloud wants them (the replica's
       pg_hba lets the apps' roles in); the same major version
    2. primary: replication settings (conf.d), the replication role (its password a secret of the
       group), the slot toppcloud_<node>, a pg_hba replication line for the replica's address
    3. clone: on the replica, unless it streams from the primary already: stop its cluster, empty its
       data directory, pg_basebackup -R -S <slot> -X stream -c fast, start it
    4. streaming: wait until pg_stat_replication on the primary shows it streaming; record the node
       as db-replica, replica_of the primary; its lag (replication.lag)
    5. synchronous: synchronous_standby_names as the group says (never with no replica streaming)
    6. apps: every app of the group with service.postgresql gets DATABASE_REPLICA_URL and
       CONFIG_PG_REPLICA_* by config apply (no redeploy)
    """
    node, group = records.node(node), records.group(group)
    primary = group.database_node
    if primary is None or node.group_id != group.pk or node.pk == primary.pk:
        raise FlowFailed(f"{node.name} cannot be a replica in {group.name} (its primary or group changed "
                         "since the job was queued); nothing was done")
    failover.take_database_lock(ctx, group)  # db:GROUP: one replica add, check or promote of a group at a time
    with ctx.step("clusters") as s:
        version = replication.ensure_clusters(ctx, primary, node)
        s.data.update(version=version, primary=primary.name, replica=node.name)
    with ctx.step("primary") as s:
        s.data["changed"] = replication.prepare_primary(ctx, group, primary, node, version)
        s.data["slot"] = replication.slot_name(node)
    with ctx.step("clone") as s:
        cloned = replication.clone(ctx, group, primary, node, version)
        s.data.update(cloned=cloned["cloned"], changed=cloned["changed"])
        if cloned.get("basebackup_seconds") is not None:
            s.data["basebackup_seconds"] = cloned["basebackup_seconds"]
    with ctx.step("streaming") as s:
        row = replication.wait_streaming(ctx, primary, node, version)
        ctx.emit("replication.streaming", node=node.name, primary=primary.name, slot=row["application_name"],
                 lag_bytes=row["lag_bytes"], lag_seconds=row["lag_seconds"], sync_state=row["sync_state"])
        replication.mark_replica(ctx, node, primary, row)
        s.data.update(lag_bytes=row["lag_bytes"], lag_seconds=row["lag_seconds"])
    with ctx.step("synchronous") as s:
        group.refresh_from_db()
        sync = replication.synchronous(ctx, group, primary, version)
        s.data.update(names=sync["names"], synchronous_standby_names=sync["synchronous_standby_names"])
    lag = replication.record(ctx, group, primary, version)[node.name]
    apps = [app for app in App.objects.filter(group=group).order_by("name") if _uses_postgresql(app)]
    summary, result = config_apply.apply_to_apps(ctx, apps)
    how = "cloned" if cloned["cloned"] else "already streaming"
    return (f"{node.name} streams from {primary.name} ({how}; lag {lag['lag_bytes']} bytes, {lag['lag_seconds']} s"
            f"{'; synchronous' if sync['names'] else ''}); {summary}",
            {"replica": node.name, "primary": primary.name, "slot": replication.slot_name(node),
             "cloned": cloned["cloned"], "lag_bytes": lag["lag_bytes"], "lag_seconds": lag["lag_seconds"],
             "synchronous_standby_names": sync["synchronous_standby_names"], **result})


def replica_check(ctx, group):
    """The state and lag of every replica of the group, as its primary sees them now.

    1. lag: pg_stat_replication on the primary; each replica's state and lag recorded in its facts
       (what `status`, `replica list` and the admin show) and as a replication.lag event
    2. synchronous: synchronous_standby_names names the replicas that stream now; with none
       streaming it is emptied (replication.sync_skipped), so commits stop waiting for a replica
       that is gone, until one streams again and a check names it again
    """
    group = records.group(group)
    primary = group.database_node
    if primary is None:
        raise FlowFailed(f"group {group.name} has no database node (its primary) any more")
    failover.take_database_lock(ctx, group)
    with ctx.step("lag") as s:
        version = replication.primary_version(ctx, primary)
        s.data["replicas"] = figures = replication.record(ctx, group, primary, version)
    with ctx.step("synchronous") as s:
        sync = replication.synchronous(ctx, group, primary, version)
        s.data.update(names=sync["names"], synchronous_standby_names=sync["synchronous_standby_names"])
    if not figures:
        return f"{group.name}: no replica of {primary.name}", {"replicas": {}, "synchronous": sync["names"]}
    parts = [f"{name} {f['state']}, lag {f['lag_bytes']} bytes, {f['lag_seconds']} s" for name, f in figures.items()]
    return f"{group.name}: " + "; ".join(parts), {"replicas": figures, "synchronous": sync["names"]}


def _uses_postgresql(app):
    return any("postgresql" in (live.release.app_ini.get("services") or [])
               for live in app.live.select_related("release"))
