"""Failover: a replica of a server group's PostgreSQL primary becomes its primary (docs/failover.md)."""

from jobs.engine.context import FlowFailed
from jobs.steps import config_apply, failover, locks, records


def promote(ctx, node, old_primary_is_down=False):
    """Promote a streaming replica to be its group's primary; repoint every app of the group.

    1. check: the records (a db-replica of the group's primary), the replica's cluster runs in recovery;
       lock.taken: the group's database (no other promote) and each app of the group (no deploy or
       config apply meanwhile)
    2. fence OLD: its cluster stopped (-m fast) and start.conf `manual`, so nothing starts it again;
       a primary that does not answer fails the job (nothing changed) unless old_primary_is_down
    3. promote NODE: pg_promote(true, 60), until it is out of recovery
    4. records: NODE role db and the group's database node, OLD a db-replica of nothing (fenced), the
       apps' postgresql services on NODE
    5. synchronous replication: the new primary waits for no standby, since none streams to it yet
    6. apply APP on NODE, health APP on NODE: config apply of each app whose database moved; a node
       that cannot be reached fails the job after the others, naming `config apply` to finish
    Bring OLD back with `replica add OLD --group G` (a fresh clone of the new primary), and any other
    replica of OLD the same way (records.swapped lists them).
    """
    node = records.node(node)
    with ctx.step("check") as s:
        try:
            group, old = failover.check_promote(node)
        except failover.PromoteRefused as exc:
            raise FlowFailed(f"{exc}; nothing was changed") from None
        failover.take_database_lock(ctx, group)
        s.data.update(group=group.name, primary=old.name, replica=node.name,
                      last_replication=node.facts.get("replication"), **failover.check_replica(ctx, node))
        for app in group.apps.order_by("name"):
            locks.take_app(ctx, app)
    with ctx.step(f"fence {old.name}") as s:
        fenced = failover.fence(ctx, old, old_primary_is_down=old_primary_is_down)
        s.data.update(fenced)
    try:
        with ctx.step(f"promote {node.name}") as s:
            promoted = failover.promote(ctx, node)
            s.data.update(promoted)
    except Exception as exc:
        state = (f"{old.name} is fenced (stopped, start.conf manual)" if fenced["fenced"]
                 else f"{old.name} was not fenced (it did not answer)")
        again = f"manage.py promote {node.name}{'' if fenced['fenced'] else ' --old-primary-is-down'}"
        back = (f"; or keep {old.name} the primary: set its start.conf to auto and run `pg_ctlcluster "
                f"{fenced.get('version')} {old.pg_cluster} start` on it" if fenced["fenced"] else "")
        raise FlowFailed(f"{state}, {node.name} not promoted ({exc}); the records are unchanged: "
                         f"re-run `{again}`{back}") from exc
    with ctx.step("records") as s:
        moved = failover.swap_records(ctx, group, node, old, promoted["version"], fenced["fenced"])
        s.data["apps"] = [a.name for a in moved]
    with ctx.step("synchronous replication") as s:
        s.data.update(failover.synchronous_after_promote(ctx, group, node, promoted["version"]))
    try:
        summary, result = config_apply.apply_to_apps(ctx, moved)
    except FlowFailed as exc:
        raise FlowFailed(f"{node.name} is the primary of {group.name} now (was {old.name}; the records say so), "
                         f"but {exc}: run `manage.py config apply --group {group.name}` once they answer") from None
    fence_said = "fenced" if fenced["fenced"] else "NOT fenced (it did not answer)"
    return (f"{node.name} is the primary of {group.name} (was {old.name}, {fence_said}); {summary}",
            {"primary": node.name, "old_primary": old.name, "fenced": fenced["fenced"],
             "promote_seconds": promoted["promote_seconds"], **result})
