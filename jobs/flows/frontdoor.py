"""Maintenance mode and front door updates: what nginx serves on nodes, changed without a deploy.

Disable an app: take its lock (no deploy or rollback of it meanwhile);
mark it in maintenance (an audit entry, as the job's actor); on each node
where it is live, render the front door from the records (its locations
now answer 503 with a short page), `nginx -t`, reload. Other apps, on the
same hosts too, keep serving. Enable: the same, back to the app.

Update the front door of nodes: render it from the records as they are
now (locations, certificates) and push it to each node.

A node that cannot be reached or refuses the render keeps the config it
had; the job fails naming it, after trying the others.
"""

from jobs.engine.context import FlowFailed
from jobs.steps import execution, frontdoor, locks, records
from nodeops.frontdoor import FrontDoorError
from nodeops.transport import TransportError
from toppcloud_site.records import audit


def disable(ctx, app):
    """Put an app in maintenance: its locations answer 503.

    1. lock.taken: the app's lock
    2. maintenance on: the app's record (an audit entry, as the job's actor)
    3. front door of NODE: on each node where it is live, rendered from the records, nginx -t, reload
    """
    return set_maintenance(ctx, records.app(app), True)


def enable(ctx, app):
    """Take an app out of maintenance.

    1. lock.taken: the app's lock
    2. maintenance off: the app's record (an audit entry, as the job's actor)
    3. front door of NODE: on each node where it is live, rendered from the records, nginx -t, reload
    """
    return set_maintenance(ctx, records.app(app), False)


def set_maintenance(ctx, app, on):
    locks.take_app(ctx, app)
    with ctx.step("maintenance on" if on else "maintenance off"), audit.acting_as(f"{ctx.job.actor_kind}:{ctx.job.actor}"):
        if app.maintenance != on:
            app.maintenance = on
            app.save(update_fields=["maintenance"])
    nodes = [live.node for live in execution.live_places(app)]
    update_nodes(ctx, nodes)
    said = "in maintenance (503)" if on else "serving again"
    where = f" on {', '.join(n.name for n in nodes)}" if nodes else "; it is live nowhere yet"
    return f"{app.name} is {said}{where}", {"app": app.name, "maintenance": on, "nodes": [n.name for n in nodes]}


def update_front_door(ctx, nodes):
    """Render the front door of nodes from the records as they are now (locations, certificates).

    1. front door of NODE: for each node, rendered, pushed (nginx -t, reload)
    """
    nodes = [records.node(name) for name in nodes]
    changed = update_nodes(ctx, nodes)
    return (f"front door of {', '.join(n.name for n in nodes)} is as the records say "
            f"({len(changed)} changed)", {"changed": changed})


def update_nodes(ctx, nodes):
    changed, failed = [], []
    for node in nodes:
        try:
            with ctx.step(f"front door of {node.name}") as s:
                s.changed = frontdoor.update(ctx, node)
        except (FrontDoorError, TransportError) as exc:  # recorded in step.finished; the next node is tried
            failed.append(f"{node.name}: {exc}")
            continue
        if s.changed:
            changed.append(node.name)
    if failed:
        raise FlowFailed("front door not updated on " + "; ".join(failed) + "; those nodes keep the config they had")
    return changed
