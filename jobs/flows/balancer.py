"""A server group's load balancer: render it from the records now, and record the health changes it saw.

Update: the group's lb node renders every app location live on the group's app nodes (jobs/steps/balancer.py),
`haproxy -c`, swap, graceful reload. A refused render changes nothing; the job fails with HAProxy's words.

Health (beat, every few seconds: toppcloud-balancer-health): the runtime API of each lb node says which
servers are UP or DOWN. A change since the last look becomes a `balancer_health` job with one event per
change (balancer.server_down / balancer.server_up); a look that finds nothing changed records no job.
"""

from jobs.engine.context import FlowFailed
from jobs.steps import balancer, records
from nodeops.balancer import BalancerError
from nodeops.transport import TransportError


def update_balancer(ctx, group):
    """Make the group's balancer what the records say.

    1. balancer of GROUP: rendered from the records, haproxy -c, swapped in, graceful reload
    """
    group = records.group(group)
    lb = balancer.lb_node(group)
    if lb is None:
        raise FlowFailed(f"server group {group.name} has no node with the role lb")
    if lb.set_up_at is None:
        raise FlowFailed(f"the balancer {lb.name} of {group.name} is not set up yet: manage.py setup_node {lb.name}")
    with ctx.step(f"balancer of {group.name}") as s:
        try:
            s.changed = balancer.update(ctx, group)
        except (BalancerError, TransportError) as exc:
            raise FlowFailed(str(exc)) from None
    said = "changed and reloaded" if s.changed else "already as the records say"
    return f"balancer {lb.name} of {group.name}: {said}", {"node": lb.name, "changed": bool(s.changed)}


def record_health(ctx, node, changes):
    """The health changes one look at a balancer found (the beat task looked; this job records them).

    1. one balancer.server_down / balancer.server_up event per change
    """
    for c in changes:
        kind = "balancer.server_up" if c["state"] == "UP" else "balancer.server_down"
        ctx.emit(kind, node=node, backend=c["backend"], server=c["server"], state=c["state"], was=c["was"],
                 at=c["at"], seconds_since_change=c["seconds_since_change"])
    down = sorted({c["server"] for c in changes if c["state"] != "UP"})
    up = sorted({c["server"] for c in changes if c["state"] == "UP"})
    said = "; ".join(part for part in (f"down: {', '.join(down)}" if down else "",
                                       f"up: {', '.join(up)}" if up else "") if part)
    return f"balancer {node}: {said}", {"changes": len(changes)}
